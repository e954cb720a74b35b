"""`waypost authz` on its own: several workers on one port, gRPC and HTTP answering from the same
core, hot reload of Consumers, and garbage answered without harm. No Envoy needed: the test
speaks both protocols the way Envoy does."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2

from authz_support import KEYS, PLUGIN_DIR, consumers_yaml, key_hash, policy_yaml
from support import free_ports, wait_until
from support.procs import SRC_DIR

pytestmark = pytest.mark.e2e


def check_grpc(port: int, route: str, headers: dict[str, str]) -> external_auth_pb2.CheckResponse:
    request = external_auth_pb2.CheckRequest()
    http = request.attributes.request.http
    http.method, http.path = "GET", "/v1/orders/1"
    http.headers.update(headers)
    request.attributes.context_extensions.update({"route": route, "policies": "orders-auth"})
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(
            "/envoy.service.auth.v3.Authorization/Check",
            request_serializer=external_auth_pb2.CheckRequest.SerializeToString,
            response_deserializer=external_auth_pb2.CheckResponse.FromString,
        )
        return call(request, timeout=5)  # type: ignore[no-any-return]


def http_exchange(port: int, raw: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(raw)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(
            next(
                (
                    line.split(b":")[1]
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                ),
                b"0",
            )
        )
        while len(body) < length:
            body += sock.recv(65536)
        return head + b"\r\n\r\n" + body


def test_standalone_workers_both_protocols_and_reload(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    (policies / "keys").mkdir(parents=True)
    (policies / "keys" / "jwks.json").write_text('{"keys": []}')
    (policies / "policy.yaml").write_text(policy_yaml(18080, "127.0.0.1:9"))
    (policies / "consumers.yaml").write_text(consumers_yaml())
    grpc_port, http_port = free_ports(2)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC_DIR), str(PLUGIN_DIR)])}
    argv = [sys.executable, "-m", "waypost", "authz", "--policies", str(policies), "--host", "127.0.0.1"]
    argv += ["--port", str(grpc_port), "--http-port", str(http_port), "--workers", "2"]
    log = (tmp_path / "authz.log").open("wb")
    process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:

        def serving() -> bool:
            assert process.poll() is None, (tmp_path / "authz.log").read_text()
            return (tmp_path / "authz.log").read_text().count("waypost authz serving") == 2

        wait_until(serving, 20, 0.1)

        allowed = check_grpc(grpc_port, "orders", {"x-api-key": KEYS["acme"]})
        assert allowed.status.code == 0
        assert dict(allowed.dynamic_metadata) == {"consumer": "acme", "plan": "gold"}
        assert check_grpc(grpc_port, "orders", {}).denied_response.status.code == 401

        request = f"GET /_waypost/orders/v1/orders/1 HTTP/1.1\r\nhost: x\r\nx-api-key: {KEYS['acme']}\r\n\r\n"
        answer = http_exchange(http_port, request.encode())
        assert answer.startswith(b"HTTP/1.1 200 ") and b"x-waypost-consumer: acme" in answer
        assert b"consumer: acme" in answer and b"plan: gold" in answer
        denied = http_exchange(
            http_port,
            b"GET /_waypost/payments/v1/payments HTTP/1.1\r\nhost: x\r\nx-api-key: "
            + KEYS["acme"].encode()
            + b"\r\n\r\n",
        )
        assert denied.startswith(b"HTTP/1.1 403 ")
        assert denied.endswith(b'{"error": "forbidden", "reason": "subscription pending approval"}')
        # Garbage gets a 400 and a closed connection, never a dead worker.
        assert http_exchange(http_port, b"\x00\x01 nonsense\r\n\r\n").startswith(b"HTTP/1.1 400")
        assert http_exchange(http_port, b"GET /elsewhere HTTP/1.1\r\nhost: x\r\n\r\n").startswith(
            b"HTTP/1.1 400"
        )
        with (
            pytest.raises(grpc.RpcError) as caught,
            grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel,
        ):
            channel.unary_unary("/envoy.service.auth.v3.Authorization/Check")(b"\xff\xff", timeout=5)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        # A new key committed: every worker picks it up (new connections land on either worker).
        extra = f'---\nkind: Consumer\nname: dave\nplan: gold\napi_keys: ["{key_hash("dave-key")}"]\n'
        (policies / "consumers.yaml").write_text(consumers_yaml(extra=extra))

        dave = b"GET /_waypost/orders/v1/orders/1 HTTP/1.1\r\nhost: x\r\nx-api-key: dave-key\r\n\r\n"

        def everywhere() -> bool:
            # Fresh connections each time, so both workers are asked.
            return all(
                b"x-waypost-consumer: dave" in http_exchange(http_port, dave) for _ in range(6)
            ) and all(
                check_grpc(grpc_port, "orders", {"x-api-key": "dave-key"}).status.code == 0 for _ in range(3)
            )

        wait_until(everywhere, 15, 0.05)
        assert process.poll() is None
    finally:
        process.terminate()
        try:
            process.wait(30)  # a loaded CI machine can take a while to stop two workers
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
