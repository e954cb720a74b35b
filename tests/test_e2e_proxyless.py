"""Proxyless gRPC: grpcio's own xDS client dials ``xds:///<target>`` and waypost is its control plane.

No Envoy on the path: the client (tests/support/grpc_xds_client.py, a process of its own with
its own GRPC_XDS_BOOTSTRAP written by `waypost grpc-bootstrap`) balances calls across real gRPC
servers from the routes, clusters and endpoints waypost sends it. Beside it, an Envoy selected by
the same policy keeps its own listeners: neither kind of node gets the other's resources.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from support.greeter_proto import message_class
from support.procs import SRC_DIR, EnvoyProcess, WaypostProcess, wait_until

pytestmark = pytest.mark.e2e

HelloReply = message_class("HelloReply")
TESTS_DIR = Path(__file__).parent


def _greeter(reply: str) -> tuple[grpc.Server, int]:
    """A real gRPC server whose SayHello answers ``reply``: which server took a call."""

    def say_hello(request: bytes, context: grpc.ServicerContext) -> bytes:
        return HelloReply(message=reply).SerializeToString()  # type: ignore[no-any-return]

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.method_handlers_generic_handler(
        "helloworld.Greeter", {"SayHello": grpc.unary_unary_rpc_method_handler(say_hello)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


@pytest.fixture
def greeters() -> Iterator[Callable[[str], int]]:
    started: list[grpc.Server] = []

    def start(reply: str) -> int:
        server, port = _greeter(reply)
        started.append(server)
        return port

    yield start
    for server in started:
        server.stop(grace=None)


class GrpcClient:
    """The client process; ``send`` writes one command and returns its JSON answer."""

    def __init__(self, target: str, bootstrap: Path, workdir: Path) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), str(SRC_DIR)])
        env["GRPC_XDS_BOOTSTRAP"] = str(bootstrap)
        env["GRPC_VERBOSITY"] = "ERROR"
        self.stderr = (workdir / "grpc-client.log").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "support.grpc_xds_client", target],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            env=env,
        )

    def send(self, command: str) -> dict[str, dict[str, int]]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"gRPC client exited; see {self.stderr.name}"
        answer: dict[str, dict[str, int]] = json.loads(line)
        return answer

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.stderr.close()


@pytest.fixture
def grpc_client(tmp_path: Path) -> Iterator[Callable[..., GrpcClient]]:
    started: list[GrpcClient] = []

    def start(target: str, *, xds_port: int, node_cluster: str = "grpc-clients") -> GrpcClient:
        bootstrap = tmp_path / f"grpc-bootstrap-{len(started)}.json"
        out = subprocess.run(
            [sys.executable, "-m", "waypost", "grpc-bootstrap", "--node-id", f"client-{len(started)}",
             "--node-cluster", node_cluster, "--xds", f"127.0.0.1:{xds_port}"],
            capture_output=True, text=True, check=True,
            env={**os.environ, "PYTHONPATH": str(SRC_DIR)},
        )  # fmt: skip
        bootstrap.write_text(out.stdout)
        client = GrpcClient(target, bootstrap, tmp_path)
        started.append(client)
        ready = client.send("ready")
        assert ready["errors"] == {}, ready
        return client

    yield start
    for client in started:
        client.close()


def _policy(ports: dict[str, list[int]], routes: str) -> str:
    services = "".join(
        textwrap.dedent(f"""\
        ---
        kind: Service
        name: {name}
        protocol: grpc
        endpoints: [{", ".join(f'"127.0.0.1:{p}"' for p in service_ports)}]
        """)
        for name, service_ports in ports.items()
    )
    return (
        services
        + textwrap.dedent("""\
        ---
        kind: GrpcTarget
        name: greeter
        target: greeter.example:50051
        nodes: {cluster: grpc-clients}
        routes:
        """)
        + textwrap.indent(textwrap.dedent(routes), "  ")
    )


def _write(policies: Path, text: str) -> None:
    # Write then rename: waypost never sees a half-written file.
    tmp = policies / ".grpc.yaml.tmp"
    tmp.write_text(text)
    tmp.rename(policies / "grpc.yaml")


def test_calls_follow_routes_weights_and_header_matches(
    tmp_path: Path,
    greeters: Callable[[str], int],
    start_waypost: Callable[..., WaypostProcess],
    grpc_client: Callable[..., GrpcClient],
) -> None:
    ports = {"v1": [greeters("v1")], "v2": [greeters("v2")]}
    policies = tmp_path / "policies"
    policies.mkdir()
    routes = """\
        - match: {service: helloworld.Greeter, method: SayHello, headers: {x-canary: "true"}}
          backend: v2
        - backends: [{service: v1, weight: 75}, {service: v2, weight: 25}]
          timeout: 3s
          retries: {attempts: 2, on: [unavailable]}
        """
    _write(policies, _policy(ports, routes))
    waypost = start_waypost(policies)
    client = grpc_client("greeter.example:50051", xds_port=waypost.xds_port)

    split = client.send("call 400")
    assert split["errors"] == {}
    assert sum(split["replies"].values()) == 400
    # 25% of 400 is 100 (sd ~8.7): well inside 60..140 unless the weights are not applied.
    assert 60 <= split["replies"].get("v2", 0) <= 140, split
    assert client.send("call 20 x-canary=true") == {"replies": {"v2": 20}, "errors": {}}

    status = waypost.status()
    (node,) = [n for n in status["nodes"] if n["id"] == "client-0"]
    assert node["gateways"] == ["grpc:greeter"]
    assert node["client"] == "grpc"
    assert all(t["last_nack"] is None for t in node["types"].values()), node
    wait_until(
        lambda: all(t["in_sync"] for n in waypost.status()["nodes"] for t in n["types"].values()),
        10,
        0.1,
        message="the client acks every type",
    )


def test_endpoint_removed_and_policy_changed_while_calls_flow(
    tmp_path: Path,
    greeters: Callable[[str], int],
    start_waypost: Callable[..., WaypostProcess],
    grpc_client: Callable[..., GrpcClient],
) -> None:
    ports = {"v1": [greeters("v1-a"), greeters("v1-b")], "v2": [greeters("v2")]}
    policies = tmp_path / "policies"
    policies.mkdir()
    _write(policies, _policy(ports, "- backend: v1\n"))
    waypost = start_waypost(policies)
    client = grpc_client("greeter.example:50051", xds_port=waypost.xds_port)
    assert set(client.send("call 40")["replies"]) == {"v1-a", "v1-b"}

    # An endpoint leaves while calls flow: none fails, and it gets no call afterwards.
    client.send("flow")
    _write(policies, _policy({"v1": ports["v1"][:1], "v2": ports["v2"]}, "- backend: v1\n"))

    def only_a() -> bool:
        return client.send("call 20")["replies"] == {"v1-a": 20}

    wait_until(only_a, 15, 0.2, message="calls stop reaching the removed endpoint")
    flowed = client.send("stop")
    assert flowed["errors"] == {}, flowed
    assert sum(flowed["replies"].values()) > 0

    # The route now sends everything to v2: picked up on the same channel and ADS stream.
    opened_before = waypost.log_text().count('"xds stream opened"')
    _write(policies, _policy({"v1": ports["v1"][:1], "v2": ports["v2"]}, "- backend: v2\n"))
    wait_until(lambda: client.send("call 10")["replies"] == {"v2": 10}, 15, 0.2, message="route change")
    assert waypost.log_text().count('"xds stream opened"') == opened_before  # no reconnect


def test_envoys_and_grpc_clients_get_only_their_own_resources(
    tmp_path: Path,
    greeters: Callable[[str], int],
    start_waypost: Callable[..., WaypostProcess],
    start_envoy: Callable[..., EnvoyProcess],
    grpc_client: Callable[..., GrpcClient],
) -> None:
    port = greeters("v1")
    policies = tmp_path / "policies"
    policies.mkdir()
    # Selectors left open on both: the Gateway would select every node, the GrpcTarget too.
    gateway = textwrap.dedent("""\
        kind: Gateway
        name: public
        port: {port}
        ---
        kind: Route
        name: greeter-http
        gateway: public
        match: {{prefix: /helloworld.Greeter/}}
        backend: v1
        """)
    text = _policy({"v1": [port]}, "- backend: v1\n").replace("nodes: {cluster: grpc-clients}\n", "")
    from support.ports import free_port

    envoy_port = free_port()
    (policies / "gateway.yaml").write_text(gateway.format(port=envoy_port))
    _write(policies, text)
    waypost = start_waypost(policies)
    envoy = start_envoy(xds_port=waypost.xds_port, node_cluster="edge")
    envoy.wait_for_listener(envoy_port)
    client = grpc_client("greeter.example:50051", xds_port=waypost.xds_port)
    assert client.send("call 5") == {"replies": {"v1": 5}, "errors": {}}

    dump = envoy.config_dump()
    assert "greeter.example:50051" not in json.dumps(dump)  # no api_listener reached the Envoy
    nodes = {n["id"]: n for n in waypost.status()["nodes"]}
    assert nodes["client-0"]["gateways"] == ["grpc:greeter"]
    assert all(t["last_nack"] is None for n in nodes.values() for t in n["types"].values())
