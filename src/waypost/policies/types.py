"""Scalar field types of the policy format: names, durations, rates, ports, endpoints.

Each type is an ``Annotated`` pydantic type, so validation, error messages and the generated JSON
Schema all come from one definition.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    PlainSerializer,
    StrictInt,
    StrictStr,
    WithJsonSchema,
)

__all__ = [
    "HOSTNAME_RE",
    "RATE_UNIT_SECONDS",
    "SCOPED_NAME_PATTERN",
    "Duration",
    "Endpoint",
    "EndpointField",
    "HeaderName",
    "HostPattern",
    "Name",
    "Port",
    "PrivateBytes",
    "RateUnit",
    "RequestHeaderName",
    "ScopedName",
    "format_duration",
    "parse_duration",
    "parse_endpoint",
]

NAME_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$"
Name = Annotated[
    StrictStr,
    Field(pattern=NAME_PATTERN, description="Letters, digits, '-', '_', '.'; at most 63 characters."),
]

_NAME_BODY = r"[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?"
SCOPED_NAME_PATTERN = rf"^({_NAME_BODY}~)?{_NAME_BODY}$"
ScopedName = Annotated[
    StrictStr,
    Field(
        pattern=SCOPED_NAME_PATTERN,
        description="A name, or `<team>~<name>` for a document of a Team (see Team).",
    ),
]

Port = Annotated[StrictInt, Field(ge=1, le=65535)]

HEADER_NAME_PATTERN = r"^:?[a-zA-Z0-9!#$%&'*+.^_`|~-]+$"
HeaderName = Annotated[StrictStr, Field(pattern=HEADER_NAME_PATTERN)]


def _no_underscore(name: str) -> str:
    if "_" in name:
        raise ValueError(
            f"'{name}': gateways refuse requests whose header names contain '_' (400), so a"
            " request header of this name never arrives; use '-'"
        )
    return name


RequestHeaderName = Annotated[
    StrictStr,
    Field(pattern=HEADER_NAME_PATTERN, description="A header clients send: no '_' (such requests get 400)."),
    AfterValidator(_no_underscore),
]
"""A header name read from client requests (matches, credentials): never with ``_``, which the
gateways refuse (``headers_with_underscores_action: REJECT_REQUEST``)."""

HOSTNAME_RE = re.compile(
    r"^(\*|(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*)$"
)


def _check_host_pattern(value: Any) -> Any:
    if isinstance(value, str) and not HOSTNAME_RE.match(value.lower()):
        raise ValueError(f"'{value}' is not a host name, '*.domain' or '*'")
    return value.lower() if isinstance(value, str) else value


HostPattern = Annotated[StrictStr, BeforeValidator(_check_host_pattern)]

_DURATION_RE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}
# The largest protobuf Duration (10,000 years); beyond it Envoy rejects the config, and a float of
# that many digits could overflow to infinity.
_MAX_DURATION_MS = 315_576_000_000_000


def parse_duration(value: Any) -> int:
    """Parse ``250ms``, ``1s``, ``5m``, ``1h`` (``1.5s`` too) into whole milliseconds."""
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError("expected a duration such as 250ms, 1s, 5m or 1h")
    match = _DURATION_RE.match(value.strip())
    if not match:
        raise ValueError(f"'{value}' is not a duration such as 250ms, 1s, 5m or 1h")
    millis = float(match.group(1)) * _UNIT_MS[match.group(2)]
    if not millis <= _MAX_DURATION_MS:
        raise ValueError(f"'{value}' is longer than 10,000 years")
    if millis != int(millis):
        raise ValueError(f"'{value}' is finer than a millisecond")
    return int(millis)


def format_duration(millis: int) -> str:
    for unit in ("h", "m", "s"):
        if millis and millis % _UNIT_MS[unit] == 0:
            return f"{millis // _UNIT_MS[unit]}{unit}"
    return f"{millis}ms"


Duration = Annotated[
    int,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema({"type": "string", "pattern": _DURATION_RE.pattern, "examples": ["250ms", "1s", "5m"]}),
]
"""A duration, held as whole milliseconds."""

RateUnit = Literal["second", "minute", "hour", "day"]
RATE_UNIT_SECONDS: dict[str, int] = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One upstream address. ``is_ip`` false means the host is resolved through DNS."""

    host: str
    port: int

    @property
    def is_ip(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_endpoint(value: Any) -> Endpoint:
    if isinstance(value, Endpoint):
        return value
    if not isinstance(value, str):
        raise ValueError("expected 'host:port'")
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isascii() or not port_text.isdigit():
        raise ValueError(f"'{value}' is not 'host:port'")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"'{value}': port must be between 1 and 65535")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not HOSTNAME_RE.match(host.lower()) or host.startswith("*"):
            raise ValueError(f"'{value}': '{host}' is neither an IP address nor a host name") from None
    return Endpoint(host=host, port=port)


EndpointField = Annotated[
    Endpoint,
    BeforeValidator(parse_endpoint),
    PlainSerializer(str, return_type=str),
    WithJsonSchema({"type": "string", "description": "host:port; a host name means DNS discovery"}),
]


class PrivateBytes(bytes):
    """Secret material (private keys): never printed, logged or rendered."""

    def __repr__(self) -> str:
        return "PrivateBytes(<redacted>)"

    __str__ = __repr__
