"""`waypost keys new`: fresh API keys; only their sha256 ever goes into git."""

from __future__ import annotations

import secrets

from waypost.filters.authz.identity_sources import hash_api_key

__all__ = ["new_key"]

KEY_PREFIX = "wp_"


def new_key(consumer: str) -> tuple[str, str]:
    """A random key (256 bits, URL-safe) and the ``sha256:`` line for Consumer ``consumer``."""
    # The consumer name is deliberately not in the key: a leaked key should not say whose it is.
    del consumer
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    return key, hash_api_key(key)
