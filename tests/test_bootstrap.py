"""The Envoy bootstrap: proto-valid, accepted by a real Envoy, and carrying the node identity
(cluster + labels) that waypost selects Gateways by, in both state-of-the-world and delta mode."""

from __future__ import annotations

import queue
import subprocess
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.extensions.resource_monitors.downstream_connections.v3 import (
    downstream_connections_pb2,  # noqa: F401 - registers the type for ParseDict
)
from envoy.extensions.resource_monitors.fixed_heap.v3 import fixed_heap_pb2  # noqa: F401 - idem
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401 - idem
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import json_format

from support import REPO_ROOT, EnvoyProcess, free_port
from waypost.xds.bootstrap import XDS_CLUSTER, build_bootstrap, parse_host_port, render_bootstrap

BASE: dict[str, Any] = {
    "node_id": "edge-1",
    "node_cluster": "edge",
    "xds_host": "127.0.0.1",
    "xds_port": 18000,
}

VARIANTS: dict[str, dict[str, Any]] = {
    "sotw-ip": {},
    "delta": {"delta": True},
    "labels": {"labels": {"zone": "a", "tier": "gold"}},
    "dns-host": {"xds_host": "waypost"},
    "localhost": {"xds_host": "localhost"},
    "ipv6": {"xds_host": "::1", "admin_address": "::1"},
    "admin-any": {"admin_address": "0.0.0.0", "admin_port": 19901},
    "overload": {"max_connections": 1000, "max_heap_bytes": 1 << 30},
}


def _bootstrap(**overrides: Any) -> dict[str, Any]:
    return build_bootstrap(**{**BASE, **overrides})


def _xds_cluster(bootstrap: dict[str, Any]) -> dict[str, Any]:
    (cluster,) = bootstrap["static_resources"]["clusters"]
    assert isinstance(cluster, dict)
    return cluster


@pytest.mark.parametrize("variant", VARIANTS)
def test_bootstrap_parses_as_envoy_v3_bootstrap(variant: str) -> None:
    # ParseDict rejects unknown or misspelt field names, so this proves the schema.
    json_format.ParseDict(_bootstrap(**VARIANTS[variant]), bootstrap_pb2.Bootstrap())


@pytest.mark.parametrize("variant", VARIANTS)
def test_envoy_validate_accepts_bootstrap(variant: str, envoy_bin: Path, tmp_path: Path) -> None:
    path = tmp_path / "bootstrap.yaml"
    path.write_text(render_bootstrap(**{**BASE, **VARIANTS[variant]}))
    result = subprocess.run(
        [str(envoy_bin), "--mode", "validate", "-c", str(path), "-l", "warning", "--use-dynamic-base-id"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# Plain scalars Envoy's YAML reader would turn into booleans, null or numbers.
TRAPS = ["n", "y", "no", "on", "null", "~", "1e3", "0x10"]


@pytest.mark.parametrize("value", TRAPS)
def test_bootstrap_strings_never_change_type(value: str, envoy_bin: Path, tmp_path: Path) -> None:
    text = render_bootstrap(**{**BASE, "node_id": value, "node_cluster": value, "labels": {value: value}})
    node = yaml.safe_load(text)["node"]
    assert node == {"id": value, "cluster": value, "metadata": {"labels": {value: value}}}
    path = tmp_path / "bootstrap.yaml"
    path.write_text(text)
    result = subprocess.run(
        [str(envoy_bin), "--mode", "validate", "-c", str(path), "-l", "warning", "--use-dynamic-base-id"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.e2e
def test_envoy_sees_trap_node_identities(start_envoy: Callable[..., EnvoyProcess]) -> None:
    """The node id, cluster and labels Envoy sends are the strings the bootstrap was made for."""
    port = free_port()
    # Envoys first, then the gRPC server: forking next to grpcio's threads is not safe.
    envoys = [
        start_envoy(xds_port=port, node_id=value, node_cluster=value, labels={value: value})
        for value in TRAPS
    ]
    with _fake_ads(port) as (ads, _):
        seen = {}
        try:
            while len(seen) < len(TRAPS):
                _, request = ads.requests.get(timeout=20)
                if not request.HasField("node"):  # only a stream's first request names the node
                    continue
                seen[request.node.id] = (
                    request.node.cluster,
                    json_format.MessageToDict(request.node.metadata),
                )
        except queue.Empty:
            pytest.fail(f"only {sorted(seen)} reached the control plane\n{envoys[-1].log_tail()}")
        for envoy in envoys:
            envoy.stop()
    assert seen == {value: (value, {"labels": {value: value}}) for value in TRAPS}


def test_node_identity_and_labels() -> None:
    node = _bootstrap(labels={"zone": "a", "tier": "gold"})["node"]
    assert node == {"id": "edge-1", "cluster": "edge", "metadata": {"labels": {"tier": "gold", "zone": "a"}}}


def test_no_labels_is_an_empty_map() -> None:
    assert _bootstrap()["node"]["metadata"] == {"labels": {}}


@pytest.mark.parametrize(("delta", "api_type"), [(False, "GRPC"), (True, "DELTA_GRPC")])
def test_ads_config(delta: bool, api_type: str) -> None:
    dynamic = _bootstrap(delta=delta)["dynamic_resources"]
    ads = dynamic["ads_config"]
    assert ads["api_type"] == api_type
    assert ads["transport_api_version"] == "V3"
    assert ads["set_node_on_first_message_only"] is True
    assert ads["grpc_services"][0]["envoy_grpc"]["cluster_name"] == XDS_CLUSTER
    assert ads["grpc_services"][0]["envoy_grpc"]["retry_policy"]["retry_back_off"]["base_interval"]
    assert dynamic["cds_config"] == {"ads": {}, "resource_api_version": "V3"}
    assert dynamic["lds_config"] == {"ads": {}, "resource_api_version": "V3"}


def test_xds_cluster_static_for_ip_and_dns_for_names() -> None:
    static = _xds_cluster(_bootstrap(xds_host="10.1.2.3"))
    assert static["type"] == "STATIC"
    assert "dns_lookup_family" not in static
    dns = _xds_cluster(_bootstrap(xds_host="waypost"))
    assert dns["type"] == "STRICT_DNS"
    assert dns["dns_lookup_family"] == "V4_PREFERRED"
    endpoint = dns["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint["address"]["socket_address"] == {"address": "waypost", "port_value": 18000}


def test_xds_cluster_speaks_http2_with_keepalive() -> None:
    cluster = _xds_cluster(_bootstrap())
    assert cluster["connect_timeout"] == "1s"
    options = cluster["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    assert "http2_protocol_options" in options["explicit_http_config"]
    assert cluster["upstream_connection_options"]["tcp_keepalive"]


def test_ipv6_brackets_are_stripped() -> None:
    bootstrap = _bootstrap(xds_host="[::1]", admin_address="[::1]")
    assert _xds_cluster(bootstrap)["type"] == "STATIC"
    address = _xds_cluster(bootstrap)["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert address["address"]["socket_address"]["address"] == "::1"
    assert bootstrap["admin"]["address"]["socket_address"]["address"] == "::1"


@pytest.mark.parametrize(
    "overrides",
    [{"node_id": ""}, {"node_cluster": ""}, {"xds_port": 0}, {"xds_port": 70000}, {"admin_port": -1}],
)
def test_invalid_arguments(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        _bootstrap(**overrides)


def test_render_is_yaml_of_build() -> None:
    text = render_bootstrap(**BASE, labels={"zone": "a"}, delta=True)
    assert text.startswith("#")  # explains where it came from
    assert yaml.safe_load(text) == _bootstrap(labels={"zone": "a"}, delta=True)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:18000", ("127.0.0.1", 18000)),
        ("waypost:18000", ("waypost", 18000)),
        ("[::1]:18000", ("::1", 18000)),
        (" localhost:1 ", ("localhost", 1)),
    ],
)
def test_parse_host_port(text: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(text) == expected


@pytest.mark.parametrize("text", ["waypost", ":18000", "waypost:", "waypost:abc", "waypost:0", "::1:18000"])
def test_parse_host_port_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_host_port(text)


def test_compose_bootstrap_is_up_to_date() -> None:
    """envoy/bootstrap-edge.yaml is generated; regenerate it (see envoy/README.md) when this fails."""
    committed = yaml.safe_load((REPO_ROOT / "envoy" / "bootstrap-edge.yaml").read_text())
    expected = build_bootstrap(
        node_id="edge-1",
        node_cluster="edge",
        xds_host="waypost",
        xds_port=18000,
        admin_address="0.0.0.0",
        admin_port=9901,
        labels={"env": "compose"},
    )
    assert committed == expected


# --- with a real Envoy ---------------------------------------------------------------------------


class _RecordingAds(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    """An ADS server that never answers: it only records what Envoy asks for."""

    def __init__(self) -> None:
        self.requests: queue.Queue[tuple[str, Any]] = queue.Queue()

    def StreamAggregatedResources(self, request_iterator: Iterator[Any], context: Any) -> Iterator[Any]:
        for request in request_iterator:
            self.requests.put(("sotw", request))
        yield from ()

    def DeltaAggregatedResources(self, request_iterator: Iterator[Any], context: Any) -> Iterator[Any]:
        for request in request_iterator:
            self.requests.put(("delta", request))
        yield from ()


@contextmanager
def _fake_ads(port: int = 0) -> Iterator[tuple[_RecordingAds, int]]:
    servicer = _RecordingAds()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))  # a thread per open stream
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port(f"127.0.0.1:{port}")  # 0: the server picks the port, no race
    server.start()
    try:
        yield servicer, port
    finally:
        server.stop(grace=0).wait(5)


@pytest.mark.e2e
def test_envoy_starts_without_control_plane(start_envoy: Callable[..., EnvoyProcess]) -> None:
    envoy = start_envoy(xds_port=free_port(), node_id="lonely", labels={"zone": "a"})
    # Nothing listens on the xDS port: Envoy keeps trying and stays up, waiting for its config.
    assert envoy.server_state() in {"PRE_INITIALIZING", "INITIALIZING", "LIVE"}
    assert envoy.stat("control_plane.connected_state") == 0
    (dump,) = envoy.config_dump(resource="static_clusters")["configs"]
    assert dump["cluster"]["name"] == XDS_CLUSTER
    bootstrap = envoy.config_dump(mask="bootstrap.node")["configs"][0]["bootstrap"]
    assert bootstrap["node"]["metadata"] == {"labels": {"zone": "a"}}
    assert envoy.running


@pytest.mark.e2e
@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_envoy_sends_node_and_labels_to_control_plane(
    start_envoy: Callable[..., EnvoyProcess], delta: bool
) -> None:
    with _fake_ads() as (ads, port):
        envoy = start_envoy(
            xds_port=port, node_id="edge-7", node_cluster="edge", labels={"zone": "b"}, delta=delta
        )
        try:
            kind, first = ads.requests.get(timeout=20)
        except queue.Empty:
            pytest.fail(f"Envoy never opened an ADS stream\n{envoy.log_tail()}")
        envoy.stop()
    assert kind == ("delta" if delta else "sotw")
    request_type = discovery_pb2.DeltaDiscoveryRequest if delta else discovery_pb2.DiscoveryRequest
    assert isinstance(first, request_type)
    assert first.node.id == "edge-7"
    assert first.node.cluster == "edge"
    assert json_format.MessageToDict(first.node.metadata) == {"labels": {"zone": "b"}}
    # Clusters come first: Envoy asks for CDS before LDS so listeners never route to nowhere.
    assert first.type_url == "type.googleapis.com/envoy.config.cluster.v3.Cluster"
