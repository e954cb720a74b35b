"""Free loopback ports for tests. Tests never use fixed ports: two xdist workers (or a developer's
own Envoy on 9901) would collide.

Ports are taken below the kernel's ephemeral range (``net.ipv4.ip_local_port_range``), where no
outgoing connection is ever given a local port: a port the kernel picked for us could be taken by
any test's client socket (Envoy's upstream connections, wrk, httpx) before our server binds it.
Each xdist worker takes ports from its own slice, in turn from a random start, so two workers never
hand out the same port and one worker does not reuse a port soon after a test released it.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import socket
from collections.abc import Iterator
from pathlib import Path

__all__ = ["free_port", "free_ports"]

_LOW = 10_000
_SLICES = 16


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def _candidates() -> Iterator[int]:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    index = int(worker) % _SLICES if worker.isdigit() else 0
    high = max(_LOW + _SLICES * 64, _ephemeral_start())
    size = (high - _LOW) // _SLICES
    first = _LOW + index * size
    start = random.randrange(size)
    return (first + (start + step) % size for step in itertools.count())


_ports = _candidates()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now, outside the ephemeral range.

    A server started with it may still lose a race to another process on the machine binding
    the same port, but not to this test run's other workers or to any client socket.
    """
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports, each free when probed."""
    ports: list[int] = []
    for port in _ports:
        with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, port))
            ports.append(port)
        if len(ports) == count:
            return ports
    raise AssertionError("unreachable: the port cycle is endless")
