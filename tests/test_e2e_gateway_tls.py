"""Gateway TLS end to end: certificates reach Envoy as SDS secrets over ADS; HTTPS and mTLS
serve with a CA generated in the test; a certificate replaced on disk rotates in place (a new
secret, the same listener: nothing drained or re-created)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from support import EchoFactory, EnvoyProcess, WaypostProcess, async_wait_until, free_ports
from support.pki import Issued, TestCA

pytestmark = pytest.mark.e2e

LISTENER_STATS = (
    "^listener_manager\\.(listener_added|listener_modified|listener_removed"
    "|total_listeners_draining|lds\\.update_success)$"
)


def served_serial(port: int) -> int:
    pem = ssl.get_server_certificate(("127.0.0.1", port), timeout=5)
    return int(x509.load_pem_x509_certificate(pem.encode()).serial_number)


async def test_https_mtls_and_rotation_without_listener_churn(
    tmp_path: Path,
    echo_backend: EchoFactory,
    start_waypost: Callable[..., WaypostProcess],
    start_envoy: Callable[..., EnvoyProcess],
) -> None:
    echo = await echo_backend("alpha")
    policies = tmp_path / "policies"
    certs = policies / "certs"
    ca = TestCA.create(tmp_path / "ca")
    certs.mkdir(parents=True)
    (certs / "ca.pem").write_bytes(ca.cert_pem)

    def issue_server() -> Issued:
        return ca.issue(
            "localhost", dns=["localhost"], ips=["127.0.0.1"], file_stem="server", directory=certs
        )

    first = issue_server()
    client = ca.issue("client-1", dns=["client-1"], client=True, directory=tmp_path / "client")
    https_port, mtls_port = free_ports(2)
    tls = "{cert: certs/server.pem, key: certs/server-key.pem"
    (policies / "policy.yaml").write_text(
        f"kind: Gateway\nname: secure\nport: {https_port}\naddress: 127.0.0.1\ntls: {tls}}}\n---\n"
        f"kind: Gateway\nname: mutual\nport: {mtls_port}\naddress: 127.0.0.1\n"
        f"tls: {tls}, client_ca: certs/ca.pem}}\n---\n"
        f'kind: Service\nname: alpha\nendpoints: ["{echo.address}"]\n---\n'
        "kind: Route\nname: s\ngateway: secure\nmatch: {prefix: /}\nbackend: alpha\n---\n"
        "kind: Route\nname: m\ngateway: mutual\nmatch: {prefix: /}\nbackend: alpha\n"
    )
    waypost = await asyncio.to_thread(start_waypost, policies)
    envoy = await asyncio.to_thread(start_envoy, xds_port=waypost.xds_port)
    await asyncio.to_thread(envoy.wait_for_listener, https_port)
    await asyncio.to_thread(envoy.wait_for_listener, mtls_port)

    verify = ssl.create_default_context(cafile=str(ca.cert_path))
    with_cert = ssl.create_default_context(cafile=str(ca.cert_path))
    with_cert.load_cert_chain(client.cert_path, client.key_path)
    async with httpx.AsyncClient(verify=verify, trust_env=False, timeout=5) as https:
        response = await https.get(f"https://127.0.0.1:{https_port}/hello")
        assert response.status_code == 200 and response.json()["backend"] == "alpha"
        # mTLS: no client certificate, no request. TLS 1.3 sends the refusal (certificate_required)
        # after the client's handshake is done: it surfaces from the read, mapped or not by httpx.
        with pytest.raises((httpx.HTTPError, ssl.SSLError)):
            await https.get(f"https://127.0.0.1:{mtls_port}/hello")
    async with httpx.AsyncClient(verify=with_cert, trust_env=False, timeout=5) as mutual:
        response = await mutual.get(f"https://127.0.0.1:{mtls_port}/hello")
        assert response.status_code == 200 and response.json()["backend"] == "alpha"
    assert await asyncio.to_thread(served_serial, https_port) == first.serial

    # Rotation: a new certificate written over the same files.
    listeners_before = envoy.stats(filter=LISTENER_STATS)
    sds_before = envoy.stats(filter="^sds\\..*update_success$")
    version_before = (await asyncio.to_thread(waypost.status))["policy"]["version"]
    second = issue_server()
    assert second.serial != first.serial

    async def rotated() -> bool:
        return await asyncio.to_thread(served_serial, https_port) == second.serial

    await async_wait_until(rotated, timeout=10)
    # The content hash covers referenced files, so the cert change is a new policy version.
    assert (await asyncio.to_thread(waypost.status))["policy"]["version"] != version_before
    certs_page = envoy.admin_get("/certs").json()
    serials = {
        int(c["serial_number"], 16) for entry in certs_page["certificates"] for c in entry["cert_chain"]
    }
    assert second.serial in serials and first.serial not in serials
    assert envoy.stats(filter=LISTENER_STATS) == listeners_before  # no listener drained or re-created
    sds_after = envoy.stats(filter="^sds\\..*update_success$")
    assert sds_after and all(sds_after[name] > sds_before.get(name, 0) for name in sds_after), sds_after
    async with httpx.AsyncClient(verify=with_cert, trust_env=False, timeout=5) as mutual:
        assert (await mutual.get(f"https://127.0.0.1:{mtls_port}/again")).status_code == 200
