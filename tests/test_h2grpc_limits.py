"""Issue 12 item 7: the decision ports' own HTTP/2 (and HTTP/1.1) servers hold up to hostile
clients. One real ``waypost serve`` with ext_authz (gRPC and HTTP) and the RLS; raw sockets speak
the attacks; after each, its memory and file descriptors are bounded and real grpcio clients are
still answered. Also: health, reflection and UNIMPLEMENTED on every decision port."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import hpack
import pytest
from envoy.service.auth.v3 import external_auth_pb2
from envoy.service.ratelimit.v3 import rls_pb2
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from authz_support import PLUGIN_DIR, consumers_yaml, policy_yaml
from support import WaypostProcess, free_ports, wait_until
from support.procs import SRC_DIR

pytestmark = pytest.mark.e2e

MAX_CONNECTIONS = 200
IDLE_TIMEOUT = 3.0
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
CHECK = "/envoy.service.auth.v3.Authorization/Check"
RLS = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
GOAWAY, ENHANCE_YOUR_CALM, PROTOCOL_ERROR, FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR = 7, 0xB, 0x1, 0x3, 0x6


LIMITED = """
---
kind: RateLimitPolicy
name: generous
limits: [{by: client_ip, requests: 1000000000, per: second}]
---
kind: Route
name: limited
gateway: public
match: {prefix: /limited}
backend: echo
rate_limit: generous
"""


class Ports:
    def __init__(self, waypost: WaypostProcess, authz: int, http: int, rls: int) -> None:
        self.waypost, self.authz, self.http, self.rls = waypost, authz, http, rls

    @property
    def pid(self) -> int:
        assert self.waypost.pid is not None
        return self.waypost.pid


@pytest.fixture(scope="module")
def ports(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ports]:
    root = tmp_path_factory.mktemp("limits")
    policies = root / "policies"
    (policies / "keys").mkdir(parents=True)
    (policies / "keys" / "jwks.json").write_text('{"keys": []}')
    # Routes that need all three decision services, so serve runs each of them.
    (policies / "policy.yaml").write_text(
        policy_yaml(free_ports(1)[0], "127.0.0.1:9", auth_service="http") + LIMITED
    )
    (policies / "consumers.yaml").write_text(consumers_yaml())
    authz, http, rls = free_ports(3)
    args = ["--authz-port", authz, "--authz-http-port", http, "--ratelimit-port", rls]
    args += ["--max-connections", MAX_CONNECTIONS, "--idle-timeout", IDLE_TIMEOUT]
    env = {"PYTHONPATH": os.pathsep.join([str(SRC_DIR), str(PLUGIN_DIR)])}  # the policy's custom plugins
    with WaypostProcess(policies, workdir=root, args=[str(a) for a in args], env=env).start() as waypost:
        yield Ports(waypost, authz, http, rls)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def served(ports: Ports) -> None:
    """Real clients still get answers on both gRPC decision ports and the HTTP endpoint."""
    ports.waypost.ensure_running()
    with grpc.insecure_channel(f"127.0.0.1:{ports.authz}") as channel:
        answer = external_auth_pb2.CheckResponse.FromString(channel.unary_unary(CHECK)(b"", timeout=10))
        assert answer.denied_response.status.code in (401, 403, 404, 503)
    with grpc.insecure_channel(f"127.0.0.1:{ports.rls}") as channel:
        rls = rls_pb2.RateLimitResponse.FromString(channel.unary_unary(RLS)(b"", timeout=10))
        assert rls.overall_code == rls_pb2.RateLimitResponse.OK
    with socket.create_connection(("127.0.0.1", ports.http), timeout=10) as sock:
        sock.sendall(b"GET /_waypost/nope/x HTTP/1.1\r\nhost: a\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 ")


def frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes((kind, flags)) + struct.pack(">I", stream) + payload


def request_headers(encoder: hpack.Encoder, path: str = CHECK) -> bytes:
    pseudo = [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "x")]
    return encoder.encode([*pseudo, ("content-type", "application/grpc"), ("te", "trailers")])


def h2_socket(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(PREFACE + frame(4, 0, 0, b""))
    return sock


def read_frames(sock: socket.socket, timeout: float = 10.0) -> list[tuple[int, int, int, bytes]]:
    """Every frame until the server closes the connection (or ``timeout``)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(1 << 16):
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    frames, offset = [], 0
    while len(data) - offset >= 9:
        length = int.from_bytes(data[offset : offset + 3], "big")
        kind, flags = data[offset + 3], data[offset + 4]
        stream = int.from_bytes(data[offset + 5 : offset + 9], "big") & 0x7FFFFFFF
        frames.append((kind, flags, stream, data[offset + 9 : offset + 9 + length]))
        offset += 9 + length
    return frames


def goaway_code(frames: list[tuple[int, int, int, bytes]]) -> int | None:
    codes = [struct.unpack(">I", payload[4:8])[0] for kind, _, _, payload in frames if kind == GOAWAY]
    return codes[-1] if codes else None


def test_every_decision_port_serves_health_reflection_and_unimplemented(ports: Ports) -> None:
    for port, service in (
        (ports.authz, "envoy.service.auth.v3.Authorization"),
        (ports.rls, "envoy.service.ratelimit.v3.RateLimitService"),
    ):
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for name in (service, ""):
                status = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status
                assert status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.RpcError) as unknown:
                health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
            assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
            with pytest.raises(grpc.RpcError) as missing:
                channel.unary_unary("/no.such.Service/Method")(b"", timeout=5)
            assert missing.value.code() == grpc.StatusCode.UNIMPLEMENTED
            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            request = reflection_pb2.ServerReflectionRequest
            answers = list(
                reflection.ServerReflectionInfo(
                    iter([request(list_services=""), request(file_containing_symbol=service)]), timeout=5
                )
            )
            names = {s.name for s in answers[0].list_services_response.service}
            assert {service, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names
            assert answers[1].file_descriptor_response.file_descriptor_proto
            # What `grpcurl describe` does: rebuild the service's descriptors from reflection alone.
            pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
            methods = {m.name for m in pool.FindServiceByName(service).methods}
            assert methods == ({"Check"} if "auth" in service else {"ShouldRateLimit"})


def test_unfinished_streams_are_bounded(ports: Ports) -> None:
    served(ports)
    before = rss_mb(ports.pid)
    # 200 streams each sending 1 MB that never ends, ignoring flow control: the connection window
    # (10 MiB) is the most the server buffers; beyond it, GOAWAY FLOW_CONTROL_ERROR.
    encoder = hpack.Encoder()
    sock = h2_socket(ports.authz)
    try:
        for stream in range(1, 400, 2):
            sock.sendall(frame(1, 0x4, stream, request_headers(encoder)))
            for _ in range(64):  # 64 x 16 KiB = 1 MiB
                sock.sendall(frame(0, 0, stream, b"\x00" * 16_384))
    except OSError:
        pass  # the server closed the connection: what we expect
    assert goaway_code(read_frames(sock)) == FLOW_CONTROL_ERROR
    sock.close()
    # Within flow control: every stream open, each holding what the windows allow, kept open.
    encoder = hpack.Encoder()
    sock = h2_socket(ports.authz)
    sent = 0
    for stream in range(1, 400, 2):
        sock.sendall(frame(1, 0x4, stream, request_headers(encoder)))
        for _ in range(4):  # up to 64 KiB each, until the 10 MiB connection window is full
            if sent < 10 * 1024 * 1024 - 16_384:
                sock.sendall(frame(0, 0, stream, b"\x00" * 16_384))
                sent += 16_384
    served(ports)
    grown = rss_mb(ports.pid) - before
    assert grown < 40, f"{grown:.0f} MB for 200 unfinished streams"
    sock.close()
    # Streams beyond SETTINGS_MAX_CONCURRENT_STREAMS (1024) are refused, not held.
    sock = h2_socket(ports.authz)
    encoder = hpack.Encoder()
    sock.sendall(b"".join(frame(1, 0x4, s, request_headers(encoder)) for s in range(1, 2 * 1100, 2)))
    sock.settimeout(2)
    frames = read_frames(sock, timeout=2)
    refused = [f for f in frames if f[0] == 3 and struct.unpack(">I", f[3])[0] == 7]
    assert len(refused) == 1100 - 1024
    sock.close()
    served(ports)


@pytest.mark.parametrize(
    "flood", [frame(6, 0, 0, b"12345678"), frame(4, 0, 0, b"")], ids=["PING", "SETTINGS"]
)
def test_a_million_unread_control_frames_are_cut_off(ports: Ports, flood: bytes) -> None:
    served(ports)
    before = rss_mb(ports.pid)
    sock = h2_socket(ports.authz)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    batch = flood * 10_000
    dropped = False
    try:
        for _ in range(100):  # 1,000,000 frames, their ACKs never read
            sock.sendall(batch)
    except OSError:
        dropped = True
    grown = rss_mb(ports.pid) - before
    sock.close()
    assert dropped, "the flooding connection was never cut off"
    assert grown < 40, f"{grown:.0f} MB after a control-frame flood"
    served(ports)


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        pytest.param([frame(0, 0x8, 1, b"")], PROTOCOL_ERROR, id="empty padded DATA"),
        pytest.param([frame(0, 0x8, 1, b"\x05abc")], PROTOCOL_ERROR, id="padding beyond DATA"),
        pytest.param([frame(0, 0, 0, b"x")], PROTOCOL_ERROR, id="DATA on stream 0"),
        pytest.param([frame(0, 0, 9, b"x")], PROTOCOL_ERROR, id="DATA on an idle stream"),
        pytest.param([frame(1, 0x4 | 0x8, 1, b"")], PROTOCOL_ERROR, id="empty padded HEADERS"),
        pytest.param([frame(1, 0x4, 2, b"\x82")], PROTOCOL_ERROR, id="HEADERS on an even stream"),
        pytest.param([frame(1, 0x4, 1, b"\xff\xff\xff\xff")], 0x9, id="bad HPACK"),
        pytest.param([frame(9, 0x4, 1, b"")], PROTOCOL_ERROR, id="CONTINUATION alone"),
        pytest.param([frame(6, 0, 0, b"1234")], FRAME_SIZE_ERROR, id="short PING"),
        pytest.param([frame(4, 0, 0, b"12345")], FRAME_SIZE_ERROR, id="ragged SETTINGS"),
        pytest.param([frame(8, 0, 0, b"\x00\x00\x00\x00")], PROTOCOL_ERROR, id="WINDOW_UPDATE of 0"),
        pytest.param([frame(0, 0, 1, b"x" * 20_000)], FRAME_SIZE_ERROR, id="oversized frame"),
        pytest.param([frame(8, 0, 0, b"\x7f\xff\xff\xff")], FLOW_CONTROL_ERROR, id="window overflow"),
        pytest.param([frame(5, 0x4, 1, b"\x00\x00\x00\x03")], PROTOCOL_ERROR, id="PUSH_PROMISE"),
    ],
)
def test_malformed_frames_are_connection_errors(ports: Ports, frames: list[bytes], code: int) -> None:
    sock = h2_socket(ports.authz)
    sock.sendall(b"".join(frames))
    assert goaway_code(read_frames(sock)) == code
    sock.close()
    ports.waypost.ensure_running()


def test_huge_header_list_is_refused(ports: Ports) -> None:
    sock = h2_socket(ports.rls)
    block = hpack.Encoder().encode([(":method", "POST"), (":path", RLS), ("x-big", "v" * 15_000)])
    block += hpack.Encoder().encode([("x-more", "w" * 15_000)])
    sock.sendall(frame(1, 0, 1, block[:16_000]) + frame(9, 0x4, 1, block[16_000:]))
    assert goaway_code(read_frames(sock)) == ENHANCE_YOUR_CALM
    sock.close()
    served(ports)


def test_idle_sockets_are_capped_and_closed(ports: Ports) -> None:
    served(ports)
    baseline = fds(ports.pid)
    opened: list[socket.socket] = []
    try:
        for port in (ports.authz, ports.http, ports.rls):
            for _ in range(1100):
                opened.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        time.sleep(0.5)
        held = fds(ports.pid) - baseline
        # Each port holds at most its cap; a new client takes the longest-idle slot.
        assert held <= 3 * MAX_CONNECTIONS + 10, f"{held} descriptors for 3,300 idle sockets"
        served(ports)
        assert ports.waypost.readyz() == 200
        # Connections that never speak are closed after the handshake timeout.
        wait_until(lambda: fds(ports.pid) <= baseline + 10, IDLE_TIMEOUT * 4, 0.2)
    finally:
        for sock in opened:
            sock.close()
    # An established HTTP/2 connection with no call is closed after the idle timeout (GOAWAY).
    sock = h2_socket(ports.authz)
    started = time.monotonic()
    frames = read_frames(sock, timeout=IDLE_TIMEOUT * 4)
    assert goaway_code(frames) == 0 and time.monotonic() - started >= IDLE_TIMEOUT - 0.5
    sock.close()


def test_http_endpoint_refuses_a_flood_of_duplicate_headers(ports: Ports) -> None:
    with socket.create_connection(("127.0.0.1", ports.http), timeout=10) as sock:
        started = time.monotonic()
        with contextlib.suppress(OSError):  # answered and closed before everything was sent
            sock.sendall(b"GET /_waypost/r/x HTTP/1.1\r\nhost: a\r\n" + b"x-dup: v\r\n" * 160_000 + b"\r\n")
        answer = sock.recv(100)
        assert answer.startswith(b"HTTP/1.1 431"), answer
        assert time.monotonic() - started < 5
    with socket.create_connection(("127.0.0.1", ports.http), timeout=10) as sock:
        sock.sendall(b"GET /_waypost/r/x HTTP/1.1\r\nhost: a\r\nx-big: " + b"v" * 200_000 + b"\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 431")
    served(ports)
