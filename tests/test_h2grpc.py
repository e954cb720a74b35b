"""The lean gRPC server (waypost.h2grpc) against real grpcio clients: routing by :path, status
codes (UNIMPLEMENTED, INVALID_ARGUMENT, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, compressed
messages refused), health (Check, List, Watch) and reflection (v1 and v1alpha), large responses
under flow control, and concurrency on one connection."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from waypost.h2grpc import (
    GrpcError,
    GrpcioServer,
    GrpcServer,
    Limits,
    Service,
    Status,
    UnaryMethod,
    start_grpc_server,
    start_grpcio_server,
)
from waypost.h2grpc.api import Send, StreamMethod

READY = {"value": False}
REFLECTION_FILES = {
    "v1": "grpc/reflection/v1/reflection.proto",
    "v1alpha": "grpc_reflection/v1alpha/reflection.proto",
}


def echo(body: bytes) -> bytes:
    if body == b"bad":
        raise GrpcError(Status.INVALID_ARGUMENT, "malformed request")
    if body == b"boom":
        raise RuntimeError("handler bug")
    return b"echo:" + body


async def slow(body: bytes) -> bytes:
    await asyncio.sleep(float(body.decode()))
    return b"late"


async def chat(requests: AsyncIterator[bytes], send: Send) -> None:
    async for body in requests:
        await send(body.upper())


async def many(requests: AsyncIterator[bytes], send: Send) -> None:
    async for body in requests:
        for i in range(int(body)):
            await send(b"%08d" % i + b"." * (1024 * 1024 - 8))
        return


SERVICES = [
    Service("test.Echo", {"Echo": UnaryMethod(echo), "Big": UnaryMethod(lambda n: b"x" * int(n))}),
    Service(
        "test.Slow",
        {"Slow": UnaryMethod(slow), "Chat": StreamMethod(chat), "Many": StreamMethod(many)},
        ready=lambda: READY["value"],
    ),
]


@pytest.fixture(params=["lean", "grpcio"])
async def server(request: pytest.FixtureRequest) -> AsyncIterator[GrpcServer | GrpcioServer]:
    """Both backends serve the same registrations with the same statuses."""
    running: GrpcServer | GrpcioServer
    if request.param == "lean":
        running = await start_grpc_server(
            SERVICES, "127.0.0.1", 0, limits=Limits(max_message=4 * 1024 * 1024)
        )
    else:
        running = await start_grpcio_server(SERVICES, "127.0.0.1", 0)
    yield running
    await running.stop()


@pytest.fixture
async def channel(server: GrpcServer | GrpcioServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield channel


async def status_of(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as excinfo:
        await call  # type: ignore[misc]
    return excinfo.value.code(), excinfo.value.details() or ""


async def test_unary_routing_and_statuses(channel: grpc.aio.Channel) -> None:
    call = channel.unary_unary("/test.Echo/Echo")
    assert await call(b"hi") == b"echo:hi"
    assert await call(b"") == b"echo:"
    assert await status_of(call(b"bad")) == (grpc.StatusCode.INVALID_ARGUMENT, "malformed request")
    assert await status_of(call(b"boom")) == (grpc.StatusCode.INTERNAL, "internal error")
    code, _ = await status_of(channel.unary_unary("/test.Echo/Nope")(b""))
    assert code == grpc.StatusCode.UNIMPLEMENTED
    code, _ = await status_of(channel.unary_unary("/no.such.Service/Method")(b""))
    assert code == grpc.StatusCode.UNIMPLEMENTED
    # Too large a request (the lean server's test limit; grpcio's is 4 MiB): RESOURCE_EXHAUSTED,
    # and the connection keeps serving.
    code, _ = await status_of(call(b"x" * 5_000_000))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await call(b"again") == b"echo:again"


async def test_compressed_request_is_refused(server: GrpcServer | GrpcioServer) -> None:
    if isinstance(server, GrpcioServer):
        pytest.skip("grpcio decompresses gzip itself")
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{server.port}", compression=grpc.Compression.Gzip
    ) as channel:
        code, details = await status_of(channel.unary_unary("/test.Echo/Echo")(b"x" * 1000))
    assert code == grpc.StatusCode.UNIMPLEMENTED and "compress" in details


async def test_deadline(channel: grpc.aio.Channel) -> None:
    call = channel.unary_unary("/test.Slow/Slow")
    assert await call(b"0.01", timeout=5) == b"late"
    code, _ = await status_of(call(b"5", timeout=0.2))
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_large_responses_and_many_concurrent_calls(channel: grpc.aio.Channel) -> None:
    big = channel.unary_unary("/test.Echo/Big")
    answers = await asyncio.gather(*(big(str(n).encode()) for n in (1, 70_000, 300_000, 2_000_000)))
    assert [len(a) for a in answers] == [1, 70_000, 300_000, 2_000_000]
    echo_call = channel.unary_unary("/test.Echo/Echo")
    burst = await asyncio.gather(*(echo_call(str(i).encode()) for i in range(1000)))
    assert burst == [f"echo:{i}".encode() for i in range(1000)]


async def test_bidi_stream(channel: grpc.aio.Channel) -> None:
    call = channel.stream_stream("/test.Slow/Chat")(iter([b"a", b"b" * 200_000, b"c"]))
    assert [m async for m in call] == [b"A", b"B" * 200_000, b"C"]


async def test_stream_of_small_messages_then_one_filling_the_window(channel: grpc.aio.Channel) -> None:
    # The lean server credits a stream's window back in batches; a message that needs the whole
    # window after many small ones must still get through (credit is released mid-message).
    largest = 4 * 1024 * 1024 - 64
    small = [b"ack %d" % i for i in range(300)]
    call = channel.stream_stream("/test.Slow/Chat")(iter([*small, b"z" * largest, b"end"]))
    got = await asyncio.wait_for(_collect(call), 20)
    assert got[:300] == [m.upper() for m in small]
    assert got[300] == b"Z" * largest and got[301] == b"END"


async def test_stream_to_a_client_that_reads_late(channel: grpc.aio.Channel) -> None:
    # 40 MiB of responses to a client that does not read for a while: the handler waits for the
    # transport to drain between messages, and everything arrives, in order.
    call = channel.stream_stream("/test.Slow/Many")(iter([b"40"]))
    await asyncio.sleep(1.0)
    got = await asyncio.wait_for(_collect(call), 30)
    assert [m[:8] for m in got] == [b"%08d" % i for i in range(40)]
    assert all(len(m) == 1024 * 1024 for m in got)


async def test_lean_server_turns_on_tcp_keepalive() -> None:
    # A client whose host vanishes without closing (an xDS stream, a registered endpoint) is
    # noticed by the kernel's keepalive probes, as grpcio's server notices it by its pings.
    running = await start_grpc_server(SERVICES, "127.0.0.1", 0)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            assert await channel.unary_unary("/test.Echo/Echo")(b"k") == b"echo:k"
            (connection,) = running.slots.live
            sock = connection._transport.get_extra_info("socket")  # type: ignore[attr-defined]
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 30
    finally:
        await running.stop()


async def _collect(call: AsyncIterator[bytes]) -> list[bytes]:
    return [m async for m in call]


async def test_health_reflects_readiness(
    channel: grpc.aio.Channel, server: GrpcServer | GrpcioServer
) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    READY["value"] = False
    check = health_pb2.HealthCheckRequest
    assert (await stub.Check(check(service="test.Echo"))).status == serving
    assert (await stub.Check(check(service="test.Slow"))).status == not_serving
    assert (await stub.Check(check(service=""))).status == not_serving
    code, _ = await status_of(stub.Check(check(service="no.such.Service")))
    assert code == grpc.StatusCode.NOT_FOUND
    listed = await stub.List(health_pb2.HealthListRequest())
    assert listed.statuses["test.Echo"].status == serving
    watch = stub.Watch(check(service="test.Slow"))
    assert (await watch.read()).status == not_serving
    READY["value"] = True
    server.health.notify()
    assert (await asyncio.wait_for(watch.read(), 5)).status == serving
    watch.cancel()
    assert (await stub.Check(check(service=""))).status == serving
    unknown = stub.Watch(check(service="no.such.Service"))
    assert (await unknown.read()).status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
    unknown.cancel()


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
async def test_reflection(channel: grpc.aio.Channel, version: str) -> None:
    path = f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo"
    info = channel.stream_stream(
        path,
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    request = reflection_pb2.ServerReflectionRequest
    call = info(
        iter(
            [
                request(list_services=""),
                request(file_containing_symbol="grpc.health.v1.Health"),
                request(file_containing_symbol="no.such.Symbol"),
                request(file_by_filename=REFLECTION_FILES[version]),
            ]
        )
    )
    listed, health, missing, own = [r async for r in call]
    names = {s.name for s in listed.list_services_response.service}
    assert {
        "test.Echo",
        "test.Slow",
        "grpc.health.v1.Health",
        f"grpc.reflection.{version}.ServerReflection",
    } <= names
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(b)
        for b in health.file_descriptor_response.file_descriptor_proto
    ]
    assert files[0].package == "grpc.health.v1" and files[0].service[0].name == "Health"
    assert missing.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
    own_file = descriptor_pb2.FileDescriptorProto.FromString(
        own.file_descriptor_response.file_descriptor_proto[0]
    )
    assert own_file.package == f"grpc.reflection.{version}"


async def test_reflection_with_grpcio_client_stub(channel: grpc.aio.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = [
        r
        async for r in stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
    ]
    assert "grpc.health.v1.Health" in {s.name for s in responses[0].list_services_response.service}
