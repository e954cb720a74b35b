"""A real Prometheus server (Debian's ``prometheus`` package) on a free loopback port, scraping
the given targets every second; its TSDB lives in the process directory and goes with it.

``prometheus`` comes from the system (``scripts/system-deps.sh``, run by ``make test``).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

import yaml

from support.client import get
from support.ports import free_port
from support.procs import ManagedProcess, wait_until

__all__ = ["PrometheusProcess", "find_prometheus"]


def find_prometheus() -> str | None:
    fallback = "/usr/bin/prometheus"
    return shutil.which("prometheus") or (fallback if Path(fallback).exists() else None)


class PrometheusProcess(ManagedProcess):
    kind = "prometheus"

    def __init__(
        self, *, workdir: Path | str, binary: str, targets: Sequence[str], port: int | None = None
    ) -> None:
        super().__init__(workdir)
        self.binary = binary
        self.targets = list(targets)
        self.port = port if port is not None else free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> Self:
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "waypost", "static_configs": [{"targets": self.targets}]}],
        }
        config_path = self.dir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        self._spawn(
            [
                self.binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ]
        )

        def ready() -> bool:
            self.ensure_running()
            return get(f"{self.url}/-/ready", timeout=2).status_code == 200

        try:
            wait_until(ready, timeout, 0.1, message=lambda: f"prometheus ready; log:\n{self.log_tail()}")
        except BaseException:
            self.stop()
            raise
        return self

    def targets_up(self) -> int:
        """How many targets the last scrapes found up."""
        data: dict[str, Any] = get(f"{self.url}/api/v1/targets", timeout=5).json()
        return sum(1 for t in data["data"]["activeTargets"] if t["health"] == "up")
