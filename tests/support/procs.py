"""Real processes for end-to-end tests: ``waypost serve`` and Envoy, started and always stopped.

Each process gets its own directory under the test's ``tmp_path`` holding its command line, its
output and (for Envoy) its bootstrap, so a failure message can quote the log tail and the files
stay behind for a post-mortem. Processes are stopped by ``stop()`` / the context manager / the
conftest fixtures; as a second line of defence they get SIGTERM if the test process dies (Linux
parent-death signal) and are stopped at interpreter exit, so no Envoy outlives the test run.

Every method here blocks. From an ``async`` test whose backends run in the test's loop, call
them through ``await asyncio.to_thread(envoy.wait_for_listener, port)``.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import inspect
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Self, TypeVar
from urllib.parse import urlencode

import httpx
from prometheus_client.parser import text_string_to_metric_families

from support.client import get
from support.ports import free_ports
from waypost.demo import find_envoy, parent_death_signal
from waypost.xds.bootstrap import build_bootstrap, dump_bootstrap

__all__ = [
    "EXAMPLE_POLICIES",
    "REPO_ROOT",
    "EnvoyProcess",
    "ManagedProcess",
    "ProcessExited",
    "StopWaiting",
    "WaitTimeout",
    "WaypostProcess",
    "async_wait_until",
    "wait_until",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
SRC_DIR = REPO_ROOT / "src"
EXAMPLE_POLICIES = REPO_ROOT / "policies"

T = TypeVar("T")


# --- waiting ------------------------------------------------------------------------------------


class WaitTimeout(AssertionError):
    """The condition never held within the timeout (a test failure, not an error)."""


class StopWaiting(Exception):
    """Raised by a predicate to end a wait at once: waiting longer cannot help."""


class ProcessExited(StopWaiting):
    """A process we were waiting on is gone; the message carries its log tail."""


def _describe(message: str | Callable[[], str] | None, timeout: float, last: BaseException | None) -> str:
    text = message() if callable(message) else (message or "the condition")
    detail = f"\nlast error: {type(last).__name__}: {last}" if last is not None else ""
    return f"timed out after {timeout:g}s waiting for {text}{detail}"


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.05,
    *,
    message: str | Callable[[], str] | None = None,
) -> T:
    """Call ``predicate`` until it returns something truthy, and return that.

    An exception from the predicate counts as "not yet" (so a predicate may simply ``assert`` or
    hit a port that is not open yet); the last one is reported if time runs out. Raise
    :class:`StopWaiting` to give up at once. ``message`` (or a callable producing it, evaluated
    only on failure) says what was awaited.
    """
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = predicate()
        except StopWaiting:
            raise
        except Exception as exc:
            last = exc
        else:
            if value:
                return value
            last = None
        if time.monotonic() >= deadline:
            raise WaitTimeout(_describe(message, timeout, last)) from last
        time.sleep(interval)


async def async_wait_until(
    predicate: Callable[[], T | Awaitable[T]],
    timeout: float = 10.0,
    interval: float = 0.05,
    *,
    message: str | Callable[[], str] | None = None,
) -> T:
    """:func:`wait_until` for async tests: sleeps without blocking the loop; ``predicate`` may be
    a plain function or return an awaitable (e.g. ``lambda: aget(url)``)."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = predicate()
            if inspect.isawaitable(value):
                value = await value
        except StopWaiting:
            raise
        except Exception as exc:
            last = exc
        else:
            if value:
                return value
            last = None
        if time.monotonic() >= deadline:
            raise WaitTimeout(_describe(message, timeout, last)) from last
        await asyncio.sleep(interval)


# --- process lifecycle --------------------------------------------------------------------------

_RUNNING: set[ManagedProcess] = set()


@atexit.register
def _stop_leftovers() -> None:
    # A test that forgot to stop its processes must not leave them running after pytest.
    for process in list(_RUNNING):
        process.stop(timeout=5)


_SET_PARENT_DEATH_SIGNAL = parent_death_signal()


class ManagedProcess:
    """A child process with its own directory and log file. Subclasses build the command line."""

    kind = "process"

    def __init__(self, workdir: Path | str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"{self.kind}-", dir=workdir))
        self.output_path = self.dir / "output.log"
        self.argv: list[str] = []
        self._proc: subprocess.Popen[bytes] | None = None

    def _spawn(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None) -> None:
        if self.running:
            raise RuntimeError(f"{self.kind} is already running")
        self.argv = [str(arg) for arg in argv]
        (self.dir / "command.txt").write_text(shlex.join(self.argv) + "\n")
        # The parent-death signal fires when the *thread* that forked exits, so only ask for it
        # from the main thread; a worker thread may end long before the test does.
        preexec = _SET_PARENT_DEATH_SIGNAL if threading.current_thread() is threading.main_thread() else None
        with open(self.output_path, "ab") as output:
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                env=dict(env) if env is not None else None,
                # Own session: a Ctrl-C in the terminal reaches pytest, whose teardown stops us,
                # rather than killing children half-way through a test.
                start_new_session=True,
                preexec_fn=preexec,  # only calls prctl(2): safe between fork and exec
            )
        _RUNNING.add(self)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def ensure_running(self) -> None:
        """Raise :class:`ProcessExited` (with the log tail) if the process is gone."""
        if self._proc is None:
            raise ProcessExited(f"{self.kind} was never started")
        code = self._proc.poll()
        if code is not None:
            raise ProcessExited(f"{self.kind} exited with code {code}; log tail:\n{self.log_tail()}")

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL. Idempotent; returns the exit code."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
        _RUNNING.discard(self)
        return proc.returncode

    def log_files(self) -> list[Path]:
        return [self.output_path]

    def log_text(self) -> str:
        parts = []
        for path in self.log_files():
            if path.exists():
                parts.append(path.read_text(errors="replace"))
        return "".join(parts)

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def describe(self) -> str:
        state = "running" if self.running else f"exit code {self.returncode}"
        return f"{self.kind} pid {self.pid} ({state}), files in {self.dir}"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"


# --- waypost ------------------------------------------------------------------------------------


DECISION_PORTS_ANY = ("--authz-port", "0", "--authz-http-port", "0", "--ratelimit-port", "0")
"""Decision services (started when a policy needs them) on ports the kernel picks: Envoys learn
the real ones over EDS, so tests never race for a fixed port. ``args`` may override them."""


class WaypostProcess(ManagedProcess):
    """``python -m waypost serve`` on loopback ports of its own (decision services included).

    >>> with WaypostProcess(policies, workdir=tmp_path).start() as waypost:
    ...     envoy = EnvoyProcess(xds_port=waypost.xds_port, workdir=tmp_path).start()
    """

    kind = "waypost"

    def __init__(
        self,
        policies: Path | str,
        *,
        workdir: Path | str,
        xds_port: int | None = None,
        admin_port: int | None = None,
        host: str = "127.0.0.1",
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(workdir)
        self.policies = Path(policies).resolve()
        picked = iter(free_ports(2, host))
        self.xds_port = xds_port if xds_port is not None else next(picked)
        self.admin_port = admin_port if admin_port is not None else next(picked)
        self.host = host
        self.extra_args = list(args)
        self.extra_env = dict(env or {})

    @property
    def admin_url(self) -> str:
        return f"http://{self.host}:{self.admin_port}"

    @property
    def xds_address(self) -> str:
        return f"{self.host}:{self.xds_port}"

    def start(self, *, wait: bool = True, timeout: float = 30.0) -> Self:
        """Start the server; with ``wait`` (the default) return once ``/readyz`` answers 200."""
        env = dict(os.environ)
        # Import waypost from this checkout even when it is not pip-installed in the venv.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC_DIR), env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.extra_env)
        argv = [
            sys.executable,
            "-m",
            "waypost",
            "serve",
            "--policies",
            str(self.policies),
            "--xds-port",
            str(self.xds_port),
            "--admin-port",
            str(self.admin_port),
            "--host",
            self.host,
            *DECISION_PORTS_ANY,
            *self.extra_args,
        ]
        self._spawn(argv, env=env)
        if wait:
            try:
                self.wait_ready(timeout)
            except BaseException:
                self.stop()
                raise
        return self

    def restart(self, *, wait: bool = True, timeout: float = 30.0) -> Self:
        """Stop, then start again on the same ports (the log is appended to)."""
        self.stop()
        return self.start(wait=wait, timeout=timeout)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait for ``/readyz`` 200 (a valid policy set is loaded); fail fast if the server dies."""

        def ready() -> bool:
            self.ensure_running()
            return self.readyz() == 200

        wait_until(ready, timeout, 0.1, message=lambda: f"waypost /readyz 200; log tail:\n{self.log_tail()}")

    def readyz(self) -> int:
        return get(f"{self.admin_url}/readyz", timeout=2).status_code

    def decision_port(self, cluster: str) -> int:
        """The port of an in-process decision service (``waypost_authz``, ...) from /status."""
        port = self.status()["decision_services"]["clusters"][cluster]["local_port"]
        assert isinstance(port, int), f"{cluster} is not running in this waypost"
        return port

    def admin_json(self, path: str) -> Any:
        """The JSON body of an admin page, whatever its status (``/readyz`` answers 503 + reasons)."""
        return get(f"{self.admin_url}{path}", timeout=5).json()

    def healthz(self) -> int:
        return get(f"{self.admin_url}/healthz", timeout=2).status_code

    def status(self) -> dict[str, Any]:
        """The JSON of ``/status``: policy version, last load error, connected nodes."""
        response = get(f"{self.admin_url}/status", timeout=5)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def metrics(self) -> str:
        """The Prometheus text of ``/metrics``."""
        response = get(f"{self.admin_url}/metrics", timeout=5)
        response.raise_for_status()
        return response.text

    def metric(self, name: str, **labels: str) -> float | None:
        """One sample of ``/metrics`` by full sample name (``waypost_reloads_total``) and labels."""
        for family in text_string_to_metric_families(self.metrics()):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return float(sample.value)
        return None


# --- Envoy --------------------------------------------------------------------------------------


class EnvoyProcess(ManagedProcess):
    """A real Envoy bootstrapped (by :func:`build_bootstrap`) to take its config from waypost.

    The admin port is chosen by Envoy itself (port 0, read back from ``--admin-address-path``), so
    it can never collide.
    """

    kind = "envoy"

    def __init__(
        self,
        *,
        xds_port: int,
        workdir: Path | str,
        envoy_bin: Path | str | None = None,
        node_id: str = "test-node",
        node_cluster: str = "edge",
        labels: Mapping[str, str] | None = None,
        delta: bool = False,
        xds_host: str = "127.0.0.1",
        log_level: str = "warning",
        concurrency: int = 1,
        args: Sequence[str] = (),
        bootstrap_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(workdir)
        self.envoy_bin = Path(envoy_bin) if envoy_bin is not None else find_envoy()
        self.bootstrap: dict[str, Any] = build_bootstrap(
            node_id=node_id,
            node_cluster=node_cluster,
            xds_host=xds_host,
            xds_port=xds_port,
            admin_port=0,
            labels=labels,
            delta=delta,
            **dict(bootstrap_options or {}),
        )
        self.node_id = node_id
        self.bootstrap_path = self.dir / "bootstrap.yaml"
        self.log_path = self.dir / "envoy.log"
        self._admin_address_path = self.dir / "admin-address.txt"
        self._admin_address: str | None = None
        self.log_level = log_level
        self.concurrency = concurrency
        self.extra_args = list(args)

    def start(self, timeout: float = 20.0) -> Self:
        """Start Envoy and wait until its admin endpoint answers (not until it is LIVE: without
        a control plane it stays PRE_INITIALIZING for a while; see :meth:`wait_ready`)."""
        self.bootstrap_path.write_text(dump_bootstrap(self.bootstrap))
        # A stale address from an earlier run would point the readiness probe at a dead port.
        self._admin_address = None
        self._admin_address_path.unlink(missing_ok=True)
        argv = [
            str(self.envoy_bin),
            "-c",
            str(self.bootstrap_path),
            # Several Envoys on one machine (xdist workers) need distinct shared-memory ids.
            "--use-dynamic-base-id",
            "--concurrency",
            str(self.concurrency),
            "-l",
            self.log_level,
            "--log-path",
            str(self.log_path),
            "--admin-address-path",
            str(self._admin_address_path),
            *self.extra_args,
        ]
        self._spawn(argv)
        try:
            wait_until(
                self._admin_answers,
                timeout,
                0.05,
                message=lambda: f"envoy admin to answer; log tail:\n{self.log_tail()}",
            )
        except BaseException:
            self.stop()
            raise
        return self

    def restart(self, timeout: float = 20.0) -> Self:
        """Stop, then start again from the same bootstrap (a new admin port; logs appended)."""
        self.stop()
        return self.start(timeout=timeout)

    def _admin_answers(self) -> bool:
        self.ensure_running()
        text = self._admin_address_path.read_text().strip() if self._admin_address_path.exists() else ""
        if not text:
            return False
        self._admin_address = text
        get(f"{self.admin_url}/ready", timeout=2)  # any status: admin is up
        return True

    def log_files(self) -> list[Path]:
        return [self.output_path, self.log_path]

    @property
    def admin_url(self) -> str:
        if self._admin_address is None:
            raise RuntimeError("envoy is not started")
        return f"http://{self._admin_address}"

    def admin_get(self, path: str, **params: str) -> httpx.Response:
        """GET an admin path (raises on a non-2xx answer)."""
        response = get(f"{self.admin_url}{path}" + _query(params), timeout=5)
        response.raise_for_status()
        return response

    def server_state(self) -> str:
        """Envoy's server state: PRE_INITIALIZING, INITIALIZING, LIVE or DRAINING."""
        return get(f"{self.admin_url}/ready", timeout=2).text.strip()

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait for admin ``/ready`` 200 (LIVE: initial xDS fetches done)."""

        def live() -> bool:
            self.ensure_running()
            return get(f"{self.admin_url}/ready", timeout=2).status_code == 200

        wait_until(
            live,
            timeout,
            0.1,
            message=lambda: f"envoy LIVE (now {self._state_or_error()})\n{self.log_tail()}",
        )

    def config_dump(
        self, *, resource: str | None = None, include_eds: bool = False, mask: str | None = None
    ) -> dict[str, Any]:
        """``/config_dump`` as JSON. ``resource`` (e.g. ``dynamic_active_clusters``) narrows it."""
        params: dict[str, str] = {}
        if resource:
            params["resource"] = resource
        if include_eds:
            params["include_eds"] = ""
        if mask:
            params["mask"] = mask
        result: dict[str, Any] = self.admin_get("/config_dump", **params).json()
        return result

    def stats(self, filter: str | None = None) -> dict[str, int]:
        """Counters and gauges by name (histograms and text readouts left out); ``filter`` is
        Envoy's regex filter."""
        params = {"format": "json"}
        if filter:
            params["filter"] = filter
        entries = self.admin_get("/stats", **params).json().get("stats", [])
        return {
            entry["name"]: int(entry["value"])
            for entry in entries
            if isinstance(entry.get("value"), int | float) and not isinstance(entry["value"], bool)
        }

    def stat(self, name: str) -> int | None:
        return self.stats(filter=f"^{re.escape(name)}$").get(name)

    def listeners(self) -> list[dict[str, Any]]:
        """Active listeners from admin ``/listeners`` (name and local address)."""
        result: list[dict[str, Any]] = (
            self.admin_get("/listeners", format="json").json().get("listener_statuses", [])
        )
        return result

    def listener_ports(self) -> set[int]:
        ports = set()
        for listener in self.listeners():
            address = listener.get("local_address", {}).get("socket_address", {})
            if "port_value" in address:
                ports.add(int(address["port_value"]))
        return ports

    def wait_for_listener(self, port: int, timeout: float = 30.0, *, host: str = "127.0.0.1") -> None:
        """Wait until Envoy has an active listener on ``port`` that accepts TCP connections."""

        def accepting() -> bool:
            self.ensure_running()
            if port not in self.listener_ports():
                return False
            with socket.create_connection((host, port), timeout=1):
                return True

        wait_until(
            accepting,
            timeout,
            0.1,
            message=lambda: (
                f"envoy listener on port {port} (has {sorted(self.listener_ports())})\n{self.log_tail()}"
            ),
        )

    def wait_for_listener_gone(self, port: int, timeout: float = 30.0) -> None:
        def gone() -> bool:
            self.ensure_running()
            return port not in self.listener_ports()

        wait_until(gone, timeout, 0.1, message=f"envoy listener on port {port} to be removed")

    def _state_or_error(self) -> str:
        try:
            return self.server_state()
        except Exception as exc:
            return f"admin unreachable: {exc}"


def _query(params: Mapping[str, str]) -> str:
    if not params:
        return ""
    # Envoy's admin takes bare flags (`include_eds`) as keys without a value.
    return "?" + "&".join(urlencode({k: v}) if v else k for k, v in params.items())
