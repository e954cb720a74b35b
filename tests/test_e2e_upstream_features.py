"""End to end: TLS to upstreams, gRPC services and OpenTelemetry tracing through a real Envoy.

The HTTPS upstream is the echo backend with a TLS context (certificates from a throwaway CA);
the gRPC upstream and the OTLP collector are grpcio servers with generic handlers, so no
generated stubs are needed: the collector only records the bytes Envoy exports.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import httpx
import pytest

from support import EchoServer, EnvoyProcess, WaypostProcess, async_wait_until, free_port, start_echo
from support.greeter_proto import descriptor_set, message_class
from support.pki import TestCA

pytestmark = pytest.mark.e2e


async def _start_stack(
    policies: Path,
    start_waypost: Callable[..., WaypostProcess],
    start_envoy: Callable[..., EnvoyProcess],
    port: int,
) -> EnvoyProcess:
    waypost = await asyncio.to_thread(start_waypost, policies, args=["--allow-plaintext-secrets"])
    envoy = await asyncio.to_thread(start_envoy, xds_port=waypost.xds_port, node_cluster="edge")
    await asyncio.to_thread(envoy.wait_for_listener, port)
    return envoy


@pytest.fixture
async def https_backend(tmp_path: Path) -> AsyncIterator[tuple[EchoServer, TestCA]]:
    ca = TestCA.create(tmp_path / "policies" / "certs", name="ca")
    server_pair = ca.issue("payments.internal", dns=["payments.internal"])
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca.cert_path))
    context.load_cert_chain(server_pair.cert_path, server_pair.key_path)
    context.verify_mode = ssl.CERT_REQUIRED  # the gateway must present its client certificate
    server = await start_echo("payments", ssl_context=context)
    yield server, ca
    await server.close()


async def test_tls_to_upstream_with_sni_ca_and_client_cert(
    tmp_path: Path,
    https_backend: tuple[EchoServer, TestCA],
    start_waypost: Callable[..., WaypostProcess],
    start_envoy: Callable[..., EnvoyProcess],
) -> None:
    backend, ca = https_backend
    client_pair = ca.issue("gateway.internal", dns=["gateway.internal"], client=True)
    policies = tmp_path / "policies"
    port = free_port()
    client_tls = f"cert: certs/{client_pair.cert_path.name}, key: certs/{client_pair.key_path.name}"
    base = f"""
kind: Gateway
name: public
port: {port}
address: 127.0.0.1
---
kind: Service
name: payments
endpoints: ["{backend.address}"]
tls: {{ca: certs/ca.pem, sni: payments.internal, {client_tls}}}
---
kind: Service
name: wrong-name
endpoints: ["{backend.address}"]
tls: {{ca: certs/ca.pem, sni: other.internal, {client_tls}}}
---
kind: Service
name: no-client-cert
endpoints: ["{backend.address}"]
tls: {{ca: certs/ca.pem, sni: payments.internal}}
---
kind: Service
name: plaintext
endpoints: ["{backend.address}"]
"""
    routes = "".join(
        f"---\nkind: Route\nname: {name}\ngateway: public\nmatch: {{prefix: /{name}}}\nbackend: {name}\n"
        for name in ("payments", "wrong-name", "no-client-cert", "plaintext")
    )
    (policies / "policy.yaml").write_text(base + routes)
    envoy = await _start_stack(policies, start_waypost, start_envoy, port)

    async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
        ok = await client.get(f"http://127.0.0.1:{port}/payments/charge")
        assert ok.status_code == 200 and ok.json()["backend"] == "payments"
        served = len(backend.requests)
        # A certificate for another name, a missing client certificate, or plaintext: all refused.
        for name in ("wrong-name", "no-client-cert", "plaintext"):
            response = await client.get(f"http://127.0.0.1:{port}/{name}/charge")
            assert response.status_code == 503, (name, response.text)
        assert len(backend.requests) == served
    assert (envoy.stat("cluster.wrong-name.ssl.fail_verify_san") or 0) >= 1
    assert (envoy.stat("cluster.payments.ssl.handshake") or 0) >= 1


# --- gRPC ----------------------------------------------------------------------------------------


HelloRequest, HelloReply = message_class("HelloRequest"), message_class("HelloReply")


class _Greeter(grpc.GenericRpcHandler):
    """/helloworld.Greeter/SayHello answers "hello <name>"; Fail answers NOT_FOUND."""

    def __init__(self) -> None:
        self.metadata: list[dict[str, str | bytes]] = []

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        async def say_hello(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            self.metadata.append(dict(context.invocation_metadata() or ()))
            name = HelloRequest.FromString(request).name  # type: ignore[attr-defined]
            if name == "nobody":
                await context.abort(grpc.StatusCode.NOT_FOUND, "no such greeting")
            return HelloReply(message=f"hello {name}").SerializeToString()

        async def fail(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such greeting")
            return b""

        handlers = {"/helloworld.Greeter/SayHello": say_hello, "/helloworld.Greeter/Fail": fail}
        handler = handlers.get(details.method)
        return grpc.unary_unary_rpc_method_handler(handler) if handler else None


class _Collector(grpc.GenericRpcHandler):
    """An OTLP/gRPC trace collector that keeps every export request's raw bytes."""

    def __init__(self) -> None:
        self.exports: list[bytes] = []

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        if details.method != "/opentelemetry.proto.collector.trace.v1.TraceService/Export":
            return None

        async def export(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            self.exports.append(request)
            return b""  # an empty ExportTraceServiceResponse

        return grpc.unary_unary_rpc_method_handler(export)


async def _grpc_server(handler: grpc.GenericRpcHandler) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


async def test_grpc_routing_status_mapping_and_tracing(
    tmp_path: Path,
    start_waypost: Callable[..., WaypostProcess],
    start_envoy: Callable[..., EnvoyProcess],
) -> None:
    greeter_handler = _Greeter()
    greeter, greeter_port = await _grpc_server(greeter_handler)
    collector = _Collector()
    otel, otel_port = await _grpc_server(collector)
    port, dead_port = free_port(), free_port()
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "helloworld.pb").write_bytes(descriptor_set())
    (policies / "policy.yaml").write_text(f"""
kind: Gateway
name: public
port: {port}
address: 127.0.0.1
tracing: {{collector: "127.0.0.1:{otel_port}", service_name: edge-under-test}}
deny: [{{paths: ["/helloworld.Greeter/Admin.*"]}}]
---
kind: Service
name: greeter
endpoints: ["127.0.0.1:{greeter_port}"]
protocol: grpc
---
kind: Service
name: gone
endpoints: ["127.0.0.1:{dead_port}"]
protocol: grpc
connect_timeout: 250ms
---
kind: Route
name: greeter
gateway: public
match: {{prefix: /helloworld.Greeter/}}
backend: greeter
grpc_json: {{descriptor: helloworld.pb, services: [helloworld.Greeter]}}
---
kind: Route
name: gone
gateway: public
match: {{prefix: /gone.Service/}}
backend: gone
""")
    try:
        envoy = await _start_stack(policies, start_waypost, start_envoy, port)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            say_hello = channel.unary_unary("/helloworld.Greeter/SayHello")
            request = HelloRequest(name="waypost").SerializeToString()
            for _ in range(6):
                reply = HelloReply.FromString(await say_hello(request, timeout=5))
                assert reply.message == "hello waypost"  # type: ignore[attr-defined]

            # The upstream's own status passes through untouched.
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await channel.unary_unary("/helloworld.Greeter/Fail")(b"", timeout=5)
            assert failed.value.code() == grpc.StatusCode.NOT_FOUND

            # Envoy's own errors reach a gRPC client as gRPC statuses, not bare HTTP codes.
            with pytest.raises(grpc.aio.AioRpcError) as down:
                await channel.unary_unary("/gone.Service/Call")(b"", timeout=5)
            assert down.value.code() == grpc.StatusCode.UNAVAILABLE
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await channel.unary_unary("/helloworld.Greeter/AdminReset")(b"", timeout=5)
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED  # Envoy's RBAC 403
            with pytest.raises(grpc.aio.AioRpcError) as unrouted:
                await channel.unary_unary("/unknown.Service/Call")(b"", timeout=5)
            assert unrouted.value.code() == grpc.StatusCode.UNIMPLEMENTED  # Envoy's 404

        # The same route serves JSON clients: Envoy transcodes to gRPC and back.
        async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
            url = f"http://127.0.0.1:{port}/helloworld.Greeter/SayHello"
            answer = await client.post(url, json={"name": "json"})
            assert answer.status_code == 200 and answer.json() == {"message": "hello json"}
            missing = await client.post(url, json={"name": "nobody"})
            assert missing.status_code == 404  # gRPC NOT_FOUND, as HTTP
            assert missing.headers["grpc-status"] == "5"

        # Spans reach the collector over the cluster compiled for it, named as configured.
        async def exported() -> bool:
            return any(b"edge-under-test" in body for body in collector.exports)

        await async_wait_until(exported, timeout=15)
        assert any(b"helloworld.Greeter" in body for body in collector.exports)
        assert (envoy.stat("cluster.public/otel.upstream_rq_total") or 0) >= 1
        # The trace context travels upstream (W3C traceparent), so the backend's spans join it.
        assert len(greeter_handler.metadata) == 8
        assert all("traceparent" in metadata for metadata in greeter_handler.metadata)
    finally:
        await greeter.stop(None)
        await otel.stop(None)
