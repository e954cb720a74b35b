"""A real ``redis-server`` on a free loopback port for tests: no persistence, always stopped.

``redis-server`` comes from the system (``scripts/system-deps.sh``, run by ``make test``).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Self

import redis

from support.ports import free_port
from support.procs import ManagedProcess, wait_until

__all__ = ["RedisProcess", "find_redis_server"]


def find_redis_server() -> str | None:
    return shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )


class RedisProcess(ManagedProcess):
    kind = "redis"

    def __init__(self, *, workdir: Path | str, binary: str, port: int | None = None) -> None:
        super().__init__(workdir)
        self.binary = binary
        self.port = port if port is not None else free_port()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)

    def start(self, timeout: float = 10.0) -> Self:
        argv = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.dir),
        ]
        self._spawn(argv)

        def pong() -> bool:
            self.ensure_running()
            with self.client() as client:
                return bool(client.ping())

        try:
            wait_until(pong, timeout, 0.05, message=lambda: f"redis PONG; log:\n{self.log_tail()}")
        except BaseException:
            self.stop()
            raise
        return self

    def restart(self, timeout: float = 10.0) -> Self:
        """Stop, then start again on the same port (empty: nothing is persisted)."""
        self.stop()
        return self.start(timeout)
