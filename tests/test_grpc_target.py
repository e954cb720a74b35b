"""GrpcTarget outside the end-to-end tests: who counts as a gRPC client, and its bootstrap."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from envoy.config.core.v3 import base_pb2

from waypost.xds.cache import NodeInfo
from waypost.xds.grpc_bootstrap import render_grpc_bootstrap

GOLDEN_IN = Path(__file__).parent / "golden" / "proxyless" / "in"


@pytest.mark.parametrize(
    ("user_agent", "proxyless"),
    [("gRPC Python", True), ("gRPC Go", True), ("grpc-java-netty", True), ("envoy", False), ("", False)],
)
def test_a_node_is_a_grpc_client_by_its_user_agent(user_agent: str, proxyless: bool) -> None:
    node = base_pb2.Node(id="n", cluster="c", user_agent_name=user_agent)
    assert NodeInfo.from_proto(node).proxyless is proxyless


def test_grpc_bootstrap_names_the_server_node_and_credentials() -> None:
    plain = json.loads(
        render_grpc_bootstrap(
            node_id="c1", node_cluster="grpc", xds_host="::1", xds_port=18000, labels={"a": "b"}
        )
    )
    assert plain["xds_servers"] == [
        {"server_uri": "[::1]:18000", "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}
    ]
    assert plain["node"] == {
        "id": "c1",
        "cluster": "grpc",
        "metadata": {"labels": {"a": "b"}},
        "locality": {},
    }
    mtls = json.loads(
        render_grpc_bootstrap(
            node_id="c1", node_cluster="grpc", xds_host="cp", xds_port=1,
            xds_tls_ca="ca.pem", xds_client_cert="c.pem", xds_client_key="k.pem",
        )
    )  # fmt: skip
    assert mtls["xds_servers"][0]["channel_creds"] == [
        {
            "type": "tls",
            "config": {
                "ca_certificate_file": "ca.pem",
                "certificate_file": "c.pem",
                "private_key_file": "k.pem",
            },
        }
    ]
    with pytest.raises(ValueError, match="go together"):
        render_grpc_bootstrap(
            node_id="c", node_cluster="g", xds_host="h", xds_port=1, xds_client_cert="c.pem"
        )
    with pytest.raises(ValueError, match="needs --xds-tls-ca"):
        render_grpc_bootstrap(
            node_id="c", node_cluster="g", xds_host="h", xds_port=1, xds_client_cert="c", xds_client_key="k"
        )


def test_render_shows_what_a_grpc_client_or_an_envoy_gets() -> None:
    def render(*extra: str) -> dict[str, list[dict[str, object]]]:
        out = subprocess.run(
            [sys.executable, "-m", "waypost", "render", str(GOLDEN_IN), "--node-id", "n",
             "--node-cluster", "grpc-clients", "--format", "json", *extra],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        rendered: dict[str, list[dict[str, object]]] = json.loads(out.stdout)
        return rendered

    assert [listener["name"] for listener in render("--grpc-client")["listeners"]] == [
        "greeter.example:50051"
    ]
    assert [listener["name"] for listener in render()["listeners"]] == ["public"]
