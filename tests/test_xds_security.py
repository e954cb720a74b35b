"""Securing xDS itself: TLS and mTLS on the xDS port, and which node ids a certificate may claim.

The end-to-end test runs ``waypost serve --xds-cert/--xds-key/--xds-ca`` and real Envoys whose
bootstraps come from :func:`build_bootstrap` with the ``--xds-tls-ca``/``--xds-client-*`` options.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
import yaml
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.extensions.resource_monitors.downstream_connections.v3 import (
    downstream_connections_pb2,  # noqa: F401 - registers the type for ParseDict
)
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2  # noqa: F401 - idem
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401 - idem
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import json_format

from support import EchoFactory, EnvoyProcess, WaypostProcess, aget, free_port, wait_until
from support.pki import TestCA
from waypost.xds.bootstrap import build_bootstrap
from waypost.xds.security import NodeIdentity, identities_allow


@pytest.mark.parametrize(
    ("identity", "node_id", "allowed"),
    [
        (NodeIdentity(common_names=("edge-1",)), "edge-1", True),
        (NodeIdentity(common_names=("edge-1",)), "edge-2", False),
        (NodeIdentity(dns_names=("edge-1.nodes.example",)), "edge-1.nodes.example", True),
        (NodeIdentity(dns_names=("edge-*",)), "edge-eu-2", True),
        (NodeIdentity(dns_names=("edge-*",)), "core-1", False),
        (NodeIdentity(common_names=("*",)), "anything", True),
        (NodeIdentity(uris=("spiffe://example.org/waypost/node/edge-1",)), "edge-1", True),
        (NodeIdentity(uris=("spiffe://example.org/waypost/node/edge-1",)), "node", False),
        (NodeIdentity(uris=("urn:edge-1",)), "urn:edge-1", True),
        (NodeIdentity(), "edge-1", False),
    ],
)
def test_identity_rule(identity: NodeIdentity, node_id: str, allowed: bool) -> None:
    assert identities_allow(identity, node_id) is allowed


def test_identity_from_certificate(tmp_path: Path) -> None:
    ca = TestCA.create(tmp_path)
    issued = ca.issue("edge-1", dns=["edge-1.example"], uris=["spiffe://t/node/edge-1"], client=True)
    identity = NodeIdentity.from_pem(issued.cert_pem)
    assert identity == NodeIdentity(("edge-1",), ("edge-1.example",), ("spiffe://t/node/edge-1",))


def test_bootstrap_tls_options_are_valid_envoy_config(tmp_path: Path, envoy_bin: Path) -> None:
    ca = TestCA.create(tmp_path)
    client = ca.issue("edge-1", dns=["edge-1"], client=True)
    for host, sni, san_type in (
        ("127.0.0.1", None, "IP_ADDRESS"),
        ("waypost", None, "DNS"),
        ("10.0.0.1", "cp", "DNS"),
    ):
        bootstrap = build_bootstrap(
            node_id="edge-1",
            node_cluster="edge",
            xds_host=host,
            xds_port=18000,
            xds_tls_ca=str(ca.cert_path),
            xds_client_cert=str(client.cert_path),
            xds_client_key=str(client.key_path),
            xds_sni=sni,
        )
        json_format.ParseDict(bootstrap, bootstrap_pb2.Bootstrap())
        socket = bootstrap["static_resources"]["clusters"][0]["transport_socket"]["typed_config"]
        (matcher,) = socket["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"]
        assert matcher["san_type"] == san_type
        assert socket.get("sni") == (sni or (host if san_type == "DNS" else None))
    path = tmp_path / "bootstrap.yaml"
    path.write_text(yaml.safe_dump(bootstrap))
    result = subprocess.run(
        [str(envoy_bin), "--mode", "validate", "-c", str(path), "-l", "warning", "--use-dynamic-base-id"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr + result.stdout


@pytest.mark.parametrize(
    "overrides",
    [
        {"xds_client_cert": "c.pem"},
        {"xds_client_cert": "c.pem", "xds_client_key": "k.pem"},
        {"xds_sni": "cp"},
    ],
)
def test_bootstrap_tls_option_mistakes(overrides: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        build_bootstrap(node_id="n", node_cluster="c", xds_host="127.0.0.1", xds_port=1, **overrides)  # type: ignore[arg-type]


def test_cli_bootstrap_flags(tmp_path: Path) -> None:
    from waypost.cli import main

    assert (
        main(["bootstrap", "--node-id", "n", "--node-cluster", "c", "--xds", "127.0.0.1:1", "--xds-sni", "x"])
        == 2
    )


@pytest.mark.e2e
async def test_mtls_xds_serves_only_the_node_ids_a_certificate_names(
    tmp_path: Path,
    echo_backend: EchoFactory,
    start_waypost: Callable[..., WaypostProcess],
    start_envoy: Callable[..., EnvoyProcess],
) -> None:
    echo = await echo_backend("alpha")
    ca = TestCA.create(tmp_path / "pki")
    server = ca.issue("waypost", dns=["localhost"], ips=["127.0.0.1"])
    edge1 = ca.issue("edge-1", uris=["spiffe://test/node/edge-1"], client=True)
    port = free_port()
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "policy.yaml").write_text(
        f"kind: Gateway\nname: public\nport: {port}\naddress: 127.0.0.1\n---\n"
        f'kind: Service\nname: alpha\nendpoints: ["{echo.address}"]\n---\n'
        "kind: Route\nname: all\ngateway: public\nmatch: {prefix: /}\nbackend: alpha\n"
    )
    tls_args = ["--xds-cert", server.cert_path, "--xds-key", server.key_path, "--xds-ca", ca.cert_path]
    waypost = await asyncio.to_thread(start_waypost, policies, args=[str(a) for a in tls_args])

    def client_tls(cert: Path, key: Path) -> dict[str, str]:
        return {"xds_tls_ca": str(ca.cert_path), "xds_client_cert": str(cert), "xds_client_key": str(key)}

    good = await asyncio.to_thread(
        start_envoy,
        xds_port=waypost.xds_port,
        node_id="edge-1",
        bootstrap_options=client_tls(edge1.cert_path, edge1.key_path),
    )
    await asyncio.to_thread(good.wait_for_listener, port)
    assert (await aget(f"http://127.0.0.1:{port}/x")).json()["backend"] == "alpha"

    # edge-1's certificate claiming another node id: refused, and nothing is served to it.
    impostor = await asyncio.to_thread(
        start_envoy,
        xds_port=waypost.xds_port,
        node_id="edge-2",
        bootstrap_options=client_tls(edge1.cert_path, edge1.key_path),
    )
    await asyncio.to_thread(
        wait_until, lambda: "node 'edge-2' is not allowed by the client certificate" in waypost.log_text(), 10
    )
    assert "PERMISSION_DENIED" in waypost.log_text() or "xds stream refused" in waypost.log_text()
    assert impostor.listeners() == []
    # Envoy retries the refused stream: between a retry's open and its refusal it counts as
    # connected for an instant, so wait for the refused state rather than sample it once.
    await asyncio.to_thread(wait_until, lambda: impostor.stat("control_plane.connected_state") == 0, 10)
    status = await asyncio.to_thread(waypost.status)
    assert [n["id"] for n in status["nodes"]] == ["edge-1"]

    # A client without a certificate does not get past the TLS handshake.
    with ca.cert_path.open("rb") as f:
        credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
    async with grpc.aio.secure_channel(waypost.xds_address, credentials) as channel:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)

        async def one() -> object:
            yield discovery_pb2.DiscoveryRequest(node={"id": "edge-1", "cluster": "edge"})

        call = stub.StreamAggregatedResources(one())
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await asyncio.wait_for(call.read(), 10)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_cli_serve_tls_flag_mistakes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from waypost.cli import main

    assert main(["serve", "--policies", str(tmp_path), "--xds-ca", str(tmp_path / "ca.pem")]) == 2
    assert "--xds-cert and --xds-key go together" in capsys.readouterr().err
    missing = ["--xds-cert", str(tmp_path / "nope.pem"), "--xds-key", str(tmp_path / "nope-key.pem")]
    assert main(["serve", "--policies", str(tmp_path), *missing]) == 2
    assert "no such file" in capsys.readouterr().err
