"""Echo backends in tests: the ``echo_backend`` fixture's type, and the server API it returns."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Protocol

from waypost.demo.echo import EchoRequest, EchoServer, start_echo

__all__ = ["EchoFactory", "EchoRequest", "EchoServer", "start_echo"]


class EchoFactory(Protocol):
    """``await echo_backend("orders")``: an echo backend on a free loopback port."""

    def __call__(
        self, name: str = "echo", *, host: str = "127.0.0.1", port: int = 0
    ) -> Awaitable[EchoServer]: ...
