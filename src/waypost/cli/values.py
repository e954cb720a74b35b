"""Argument types of the command line: each parses one flag value or raises ArgumentTypeError."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from waypost.policies.types import Endpoint

__all__ = ["address_arg", "byte_size_arg", "host_port_arg", "interval_arg", "labels_arg", "registration_arg"]


def labels_arg(values: Sequence[str]) -> dict[str, str]:
    labels = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"--label expects key=value, got '{item}'")
        labels[key] = value
    return labels


def host_port_arg(value: str) -> tuple[str, int]:
    from waypost.xds.bootstrap import parse_host_port

    try:
        return parse_host_port(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def address_arg(value: str) -> Endpoint:
    from waypost.policies.types import Endpoint

    host, port = host_port_arg(value)
    return Endpoint(host, port)


def registration_arg(value: str) -> tuple[str, str]:
    """SERVICE=IP:PORT of ``--register``: checked here, so a typo never reaches a bootstrap."""
    from waypost.policies.types import parse_endpoint

    service, sep, address = value.partition("=")
    if not sep or not service:
        raise argparse.ArgumentTypeError(f"'{value}' is not SERVICE=IP:PORT")
    try:
        endpoint = parse_endpoint(address)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not endpoint.is_ip:
        raise argparse.ArgumentTypeError(f"'{address}': a registered endpoint is an IP address and port")
    return service, str(endpoint)


def interval_arg(value: str) -> float:
    from waypost.policies.types import parse_duration

    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parse_duration(value) / 1000
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"'{value}' must be above 0")
    return seconds


_SIZE_UNITS = {"": 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "K": 1000, "M": 10**6, "G": 10**9}


def byte_size_arg(text: str) -> int:
    number = text.rstrip("KMGi")
    unit = text[len(number) :]
    if not number.isdigit() or unit not in _SIZE_UNITS:
        raise argparse.ArgumentTypeError(f"'{text}' is not a size like 512Mi, 2Gi or 1000000")
    return int(number) * _SIZE_UNITS[unit]
