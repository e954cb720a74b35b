"""Free loopback ports for tests. Tests never use fixed ports: two xdist workers (or a developer's
own Envoy on 9901) would collide."""

from __future__ import annotations

import contextlib
import socket

__all__ = ["free_port", "free_ports"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now (the kernel picks it).

    There is a small window between closing our probe socket and the server binding the port;
    the kernel hands out ephemeral ports round-robin, so a reuse within that window is rare.
    Prefer letting the server bind port 0 itself where it can report the port back.
    """
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct free ports (all probe sockets are held open until every one is picked)."""
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(sock.getsockname()[1])
        return ports
