"""Nothing open by default, against the real processes and a real Envoy.

Every port binds to loopback unless told otherwise; waypost refuses to start with an admin port
off loopback without authentication, or decision ports off loopback without an allow-list; the
admin token is enforced; the allow-list is enforced on all three decision servers; TLS private
keys are withheld over plaintext xDS (and the listener waits rather than serving without them);
bad API keys from one address get 429 before the key check; node labels and NACK details are
capped before they are kept; SIGHUP reloads.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
import httpx
import pytest
from google.protobuf import struct_pb2

from support import EchoFactory, EnvoyProcess, WaypostProcess, async_wait_until, free_ports, wait_until
from support.pki import TestCA
from support.procs import SRC_DIR
from test_ads_protocol import CDS, AdsClient
from test_authz_standalone import check_grpc
from test_policy_sources import AUTH, start_stack
from waypost.contract import AUTHZ_CLUSTER, AUTHZ_HTTP_CLUSTER, RATELIMIT_CLUSTER
from waypost.filters.authz.guard import BURST, FailedKeyGuard
from waypost.peers import PeerFilter, is_loopback
from waypost.server.exposure import AdminAuth, exposure_problems

TOKEN = "admin-token-for-tests-0123456789"
DECISION_CLUSTERS = (AUTHZ_CLUSTER, AUTHZ_HTTP_CLUSTER, RATELIMIT_CLUSTER)
GATEWAY = "kind: Gateway\nname: public\nport: {port}\naddress: 127.0.0.1\n"
SERVICE = 'kind: Service\nname: echo\nendpoints: ["{endpoint}"]\n'
SECURE = (
    """\
kind: Route
name: secure
gateway: public
match: {prefix: /secure}
backend: echo
auth: keys
---
"""
    + AUTH
)


def _policies(tmp_path: Path, port: int = 18080, endpoint: str = "127.0.0.1:1", extra: str = "") -> Path:
    policies = tmp_path / "policies"
    policies.mkdir(exist_ok=True)
    text = GATEWAY.format(port=port) + "---\n" + SERVICE.format(endpoint=endpoint)
    (policies / "policy.yaml").write_text(text + ("---\n" + extra if extra else ""))
    return policies


def _decision_policies(tmp_path: Path) -> Path:
    """Routes that need all three decision services, so serve runs them."""
    web = (
        "kind: Gateway\nname: web\nport: 18081\naddress: 127.0.0.1\nauth_service: http\n---\n"
        "kind: Route\nname: web\ngateway: web\nmatch: {prefix: /}\nbackend: echo\nauth: keys\n"
        "rate_limit: per-ip\n---\n"
        "kind: RateLimitPolicy\nname: per-ip\nlimits: [{by: client_ip, requests: 100, per: minute}]\n---\n"
    )
    return _policies(tmp_path, extra=web + SECURE)


def _run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "WAYPOST_ADMIN_TOKEN"}
    environ.update({"PYTHONPATH": str(SRC_DIR), **(env or {})})
    return subprocess.run(
        [sys.executable, "-m", "waypost", *args], capture_output=True, text=True, env=environ, timeout=60
    )


def _listening(port: int) -> set[str]:
    """The local addresses with a listening TCP socket on ``port`` (from /proc/net/tcp*)."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, _, hex_port = fields[1].partition(":")
            if int(hex_port, 16) == port and fields[3] == "0A":  # LISTEN
                raw = bytes.fromhex(address)
                # /proc prints each 32-bit word in host (little-endian) order.
                words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                family = socket.AF_INET if width == 8 else socket.AF_INET6
                found.add(socket.inet_ntop(family, words).removeprefix("::ffff:"))  # v4-mapped
    return found


# --- binding and refusals --------------------------------------------------------------------------


def test_loopback_and_exposure_rules() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("10.0.0.5")
    assert not is_loopback("cp.example")  # a name may resolve anywhere
    open_admin = exposure_problems(
        admin_host="10.0.0.5", admin_auth=AdminAuth(), decision_host=None, decision_allow=None
    )
    assert open_admin and "WAYPOST_ADMIN_TOKEN" in open_admin[0]
    assert not exposure_problems(
        admin_host="10.0.0.5", admin_auth=AdminAuth(token=TOKEN), decision_host=None, decision_allow=None
    )
    peers = PeerFilter.parse(["10.1.0.0/16", "2001:db8::1"])
    assert peers.allows("10.1.2.3") and peers.allows("::ffff:10.1.2.3") and peers.allows("2001:db8::1")
    assert not peers.allows("127.0.0.1") and not peers.allows("10.2.0.1") and not peers.allows("junk")
    assert peers.allows_grpc_peer("ipv4:10.1.0.9:4321") and peers.allows_grpc_peer("ipv6:[2001:db8::1]:80")
    assert not peers.allows_grpc_peer("ipv4:127.0.0.1:4321")
    auth = AdminAuth(token=TOKEN)
    basic = base64.b64encode(f"admin:{TOKEN}".encode()).decode()
    assert auth.allows(f"Bearer {TOKEN}") and auth.allows(f"Basic {basic}")
    assert not auth.allows(None) and not auth.allows("Bearer nope") and not auth.allows(f"Token {TOKEN}")


def test_open_ports_refuse_to_start(tmp_path: Path) -> None:
    policies = str(_policies(tmp_path))
    admin = _run_cli(
        "serve", "--policies", policies, "--host", "0.0.0.0", "--xds-port", "0", "--admin-port", "0"
    )
    assert (
        admin.returncode == 2
        and "refusing to start" in admin.stderr
        and "WAYPOST_ADMIN_TOKEN" in admin.stderr
    )
    token = {"WAYPOST_ADMIN_TOKEN": TOKEN}
    decision = _run_cli(
        "serve", "--policies", policies, "--host", "0.0.0.0", "--xds-port", "0", "--admin-port", "0",
        "--authz-port", "0", env=token,
    )  # fmt: skip
    assert decision.returncode == 2 and "--decision-allow" in decision.stderr, decision.stderr
    ratelimit = _run_cli("ratelimit", "--policies", policies, "--host", "0.0.0.0", "--port", "0", env=token)
    assert ratelimit.returncode == 2 and "--decision-allow" in ratelimit.stderr
    authz = _run_cli("authz", "--policies", policies, "--host", "::", "--port", "0")
    assert authz.returncode == 2 and "--decision-allow" in authz.stderr
    short = _run_cli("serve", "--policies", policies, env={"WAYPOST_ADMIN_TOKEN": "short"})
    assert short.returncode == 2 and "at least 16 characters" in short.stderr


@pytest.mark.e2e
def test_every_port_binds_loopback_by_default(
    tmp_path: Path, start_waypost: Callable[..., WaypostProcess]
) -> None:
    waypost = start_waypost(_decision_policies(tmp_path), host=None)  # no --host: the default
    authz_port, http_port, rls_port = (waypost.decision_port(c) for c in DECISION_CLUSTERS)
    for port in (waypost.xds_port, waypost.admin_port, authz_port, http_port, rls_port):
        assert _listening(port) == {"127.0.0.1"}, (port, _listening(port))


# --- admin authentication ----------------------------------------------------------------------------


@pytest.mark.e2e
def test_admin_token_guards_everything_but_the_probes(
    tmp_path: Path, start_waypost: Callable[..., WaypostProcess]
) -> None:
    waypost = start_waypost(_policies(tmp_path), env={"WAYPOST_ADMIN_TOKEN": TOKEN})
    with httpx.Client(trust_env=False, timeout=5) as client:
        for path in ("/healthz", "/readyz"):
            assert client.get(waypost.admin_url + path).status_code == 200
        for path in ("/", "/status", "/metrics"):
            refused = client.get(waypost.admin_url + path)
            assert refused.status_code == 401, path
            assert refused.headers["www-authenticate"] == 'Basic realm="waypost admin"'
            assert TOKEN not in refused.text
            wrong = client.get(
                waypost.admin_url + path, headers={"authorization": "Bearer guess-guess-guess"}
            )
            assert wrong.status_code == 401
            assert client.get(waypost.admin_url + path, headers=waypost.admin_headers).status_code == 200
        assert client.get(waypost.admin_url + "/status", auth=("any", TOKEN)).status_code == 200  # a browser
    assert waypost.status()["policy"]["version"]


@pytest.mark.e2e
def test_admin_client_certificates(tmp_path: Path, start_waypost: Callable[..., WaypostProcess]) -> None:
    ca = TestCA.create(tmp_path / "pki")
    server = ca.issue("admin", ips=["127.0.0.1"])
    operator = ca.issue("operator", client=True)
    args = ["--admin-cert", server.cert_path, "--admin-key", server.key_path, "--admin-ca", ca.cert_path]
    waypost = start_waypost(_policies(tmp_path), args=[str(a) for a in args], wait=False)
    url = f"https://127.0.0.1:{waypost.admin_port}/status"
    with_cert = ssl.create_default_context(cafile=str(ca.cert_path))
    with_cert.load_cert_chain(operator.cert_path, operator.key_path)
    response = wait_until(lambda: httpx.get(url, verify=with_cert, trust_env=False, timeout=5), timeout=30)
    assert response.status_code == 200 and response.json()["policy"]["version"]
    without = ssl.create_default_context(cafile=str(ca.cert_path))
    with pytest.raises((httpx.HTTPError, ssl.SSLError)):
        httpx.get(url, verify=without, trust_env=False, timeout=5)


# --- decision ports ---------------------------------------------------------------------------------


def _first_bytes(port: int, source: str, payload: bytes) -> bytes:
    """What the server sends first after ``payload`` from ``source`` (b"": it closed at once)."""
    with socket.socket() as sock:
        sock.settimeout(5)
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        try:
            sock.sendall(payload)
            return sock.recv(4096)
        except ConnectionResetError:
            return b""


@pytest.mark.e2e
@pytest.mark.parametrize("server", ["lean", "grpcio"])
def test_decision_ports_answer_only_the_allowed_networks(
    server: str, tmp_path: Path, start_waypost: Callable[..., WaypostProcess]
) -> None:
    grpcio = ["--authz-grpcio", "--ratelimit-grpcio"] if server == "grpcio" else []
    waypost = start_waypost(_decision_policies(tmp_path), args=["--decision-allow", "127.0.0.2/32", *grpcio])
    authz_port, http_port, rls_port = (waypost.decision_port(c) for c in DECISION_CLUSTERS)
    with pytest.raises(grpc.RpcError) as refused:
        check_grpc(authz_port, "any", {})  # from 127.0.0.1: not on the list
    # Waypost's own gRPC server closes the connection as it is accepted (UNAVAILABLE to the
    # client); grpcio's (--authz-grpcio) answers each call PERMISSION_DENIED.
    expected = grpc.StatusCode.PERMISSION_DENIED if grpcio else grpc.StatusCode.UNAVAILABLE
    assert refused.value.code() == expected
    http_request = b"GET /_waypost/x HTTP/1.1\r\nhost: a\r\n\r\n"
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    assert _first_bytes(http_port, "127.0.0.1", http_request) == b""
    if not grpcio:  # grpcio's RLS refuses per call (as the Check above), not per connection
        assert _first_bytes(rls_port, "127.0.0.1", preface) == b""
    assert _first_bytes(http_port, "127.0.0.2", http_request).startswith(b"HTTP/1.1 ")
    assert _first_bytes(rls_port, "127.0.0.2", preface)[3:4] == b"\x04"  # the server's SETTINGS
    assert "address not in --decision-allow" in waypost.log_text()
    # SIGHUP reloads; the process stays.
    waypost.send_signal(signal.SIGHUP)
    wait_until(lambda: "SIGHUP: reloading the policy" in waypost.log_text(), timeout=10)
    assert waypost.running and waypost.readyz() == 200


# --- private keys over plaintext xDS ---------------------------------------------------------------------


@pytest.mark.e2e
async def test_private_keys_are_withheld_over_plaintext_xds(
    tmp_path: Path,
    echo_backend: EchoFactory,
    start_waypost: Callable[..., WaypostProcess],
    start_envoy: Callable[..., EnvoyProcess],
) -> None:
    backend = await echo_backend("echo")
    plain_port, tls_port = free_ports(2)
    policies = _policies(tmp_path, plain_port, backend.address)
    ca = TestCA.create(tmp_path / "pki")
    ca.issue("localhost", dns=["localhost"], file_stem="server", directory=policies / "certs")
    (policies / "tls.yaml").write_text(
        f"kind: Gateway\nname: secure\nport: {tls_port}\naddress: 127.0.0.1\n"
        "tls: {cert: certs/server.pem, key: certs/server-key.pem}\n---\n"
        "kind: Route\nname: s\ngateway: secure\nmatch: {prefix: /}\nbackend: echo\n---\n"
        "kind: Route\nname: p\ngateway: public\nmatch: {prefix: /}\nbackend: echo\n"
    )
    waypost = await asyncio.to_thread(start_waypost, policies)
    envoy = await asyncio.to_thread(start_envoy, xds_port=waypost.xds_port)
    await asyncio.to_thread(envoy.wait_for_listener, plain_port)
    async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
        assert (await client.get(f"http://127.0.0.1:{plain_port}/")).status_code == 200
    status = await asyncio.to_thread(waypost.status)
    assert status["xds"]["secrets_withheld"] == ["secure/cert"], status["xds"]
    assert "private keys not sent over plaintext xDS" in waypost.log_text()
    assert "BEGIN" not in waypost.log_text()
    verify = ssl.create_default_context(cafile=str(ca.cert_path))
    async with httpx.AsyncClient(verify=verify, trust_env=False, timeout=3) as https:
        with pytest.raises((httpx.HTTPError, ssl.SSLError)):
            await https.get(f"https://localhost:{tls_port}/")
    sds = await asyncio.to_thread(envoy.admin_get, "/config_dump", resource="dynamic_active_secrets")
    assert "server-key" not in sds.text and "PRIVATE KEY" not in sds.text


# --- failed API keys ------------------------------------------------------------------------------------


def test_failed_key_guard_is_bounded() -> None:
    now = [0.0]
    guard = FailedKeyGuard(burst=3, refill_seconds=10, max_addresses=100, clock=lambda: now[0])
    for _ in range(3):
        assert not guard.blocked("10.0.0.1")
        guard.failed("10.0.0.1")
    assert guard.blocked("10.0.0.1") and guard.retry_after("10.0.0.1") == 10
    now[0] = 10.0
    assert not guard.blocked("10.0.0.1")
    for index in range(10_000):
        guard.failed(f"10.1.{index // 256}.{index % 256}")
    assert len(guard) == 100


@pytest.mark.e2e
async def test_many_bad_keys_from_one_address_get_429_before_the_key_check(
    tmp_path: Path,
    echo_backend: EchoFactory,
    start_waypost: Callable[..., WaypostProcess],
    start_envoy: Callable[..., EnvoyProcess],
) -> None:
    backend = await echo_backend("echo")
    port = free_ports(1)[0]
    await start_stack(_policies(tmp_path, port, backend.address, SECURE), port, start_waypost, start_envoy)
    url = f"http://127.0.0.1:{port}/secure"
    async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
        assert (await client.get(url, headers={"x-api-key": "acme-key"})).status_code == 200
        for guess in range(BURST):
            assert (await client.get(url, headers={"x-api-key": f"guess-{guess}"})).status_code == 401
        blocked = await client.get(url, headers={"x-api-key": "guess-more"})
        assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) >= 1
        assert blocked.json()["reason"] == "too many invalid api keys from this address"
        # Before the key check: even the right key waits, from that address.
        assert (await client.get(url, headers={"x-api-key": "acme-key"})).status_code == 429
    other = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
    async with httpx.AsyncClient(transport=other, trust_env=False, timeout=5) as elsewhere:
        assert (await elsewhere.get(url, headers={"x-api-key": "acme-key"})).status_code == 200


# --- what a node says about itself is capped --------------------------------------------------------------


@pytest.mark.e2e
async def test_node_labels_and_nack_details_are_capped(
    tmp_path: Path, start_waypost: Callable[..., WaypostProcess]
) -> None:
    waypost = await asyncio.to_thread(start_waypost, _policies(tmp_path))
    async with grpc.aio.insecure_channel(waypost.xds_address) as channel:
        client = AdsClient(channel, node_id="noisy")
        labels = client._node.metadata.fields["labels"].struct_value
        for index in range(100):
            labels.fields[f"k{index:03d}"].CopyFrom(struct_pb2.Value(string_value="v"))
        labels.fields["huge"].CopyFrom(struct_pb2.Value(string_value="x" * 100_000))
        client.send(CDS)
        cds = await client.recv(timeout=10)
        client.send(CDS, ack=cds, nack="E" * 2_000_000, version="")

        def nacked() -> dict[str, object] | None:
            nodes = [n for n in waypost.status()["nodes"] if n["id"] == "noisy"]
            return nodes[0] if nodes and nodes[0]["types"]["cds"]["last_nack"] else None

        node = await async_wait_until(lambda: asyncio.to_thread(nacked), timeout=10)
        client.close()
    assert len(node["labels"]) == 64 and node["labels_dropped"] == 37  # type: ignore[arg-type]
    error = node["types"]["cds"]["last_nack"]["error"]  # type: ignore[index]
    assert len(error) < 5000 and error.endswith("more characters)")
    assert len(waypost.log_text()) < 200_000
