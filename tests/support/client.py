"""HTTP helpers for tests: one call per request, sync and async, never through a proxy.

``trust_env=False`` everywhere: an ``HTTP_PROXY`` in a developer's environment must not send
loopback test traffic elsewhere.

In an ``async`` test whose backends run in the test's own event loop (the ``echo_backend``
fixture), use the ``a*`` variants: a blocking call would stall the loop, so the backend could
never answer the request the test is waiting for.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

__all__ = ["aget", "arequest", "async_http_client", "get", "http_client", "request"]

DEFAULT_TIMEOUT = 5.0


def _headers(host: str | None, headers: Mapping[str, str] | None) -> dict[str, str]:
    merged = dict(headers or {})
    if host is not None:
        merged["host"] = host  # httpx sends an explicit Host header as given
    return merged


def http_client(timeout: float = DEFAULT_TIMEOUT) -> httpx.Client:
    """A keep-alive client (use as a context manager) for tests that care about connection reuse."""
    return httpx.Client(trust_env=False, timeout=timeout)


def async_http_client(timeout: float = DEFAULT_TIMEOUT) -> httpx.AsyncClient:
    return httpx.AsyncClient(trust_env=False, timeout=timeout)


def request(
    method: str,
    url: str,
    *,
    host: str | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    **kwargs: Any,
) -> httpx.Response:
    """Send one request on a fresh connection; ``host`` overrides the Host header (virtual hosts).

    Extra keyword arguments go to :meth:`httpx.Client.request` (``content=``, ``json=``, ...).
    The response is fully read; non-2xx statuses are returned, not raised.
    """
    with http_client(timeout) as client:
        return client.request(method, url, headers=_headers(host, headers), **kwargs)


def get(
    url: str,
    *,
    host: str | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> httpx.Response:
    return request("GET", url, host=host, headers=headers, timeout=timeout)


async def arequest(
    method: str,
    url: str,
    *,
    host: str | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    **kwargs: Any,
) -> httpx.Response:
    """Async :func:`request`."""
    async with async_http_client(timeout) as client:
        return await client.request(method, url, headers=_headers(host, headers), **kwargs)


async def aget(
    url: str,
    *,
    host: str | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> httpx.Response:
    return await arequest("GET", url, host=host, headers=headers, timeout=timeout)
