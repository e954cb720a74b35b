"""Delta (incremental) xDS and the per-type services, over real gRPC streams with a scripted client.

The delta client double checks protocol rules on every response (fresh nonce, matching type
URL, per-resource versions present, control plane set) and keeps the node's view of what it
holds, applying additions and removals as Envoy would.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.service.cluster.v3 import cds_pb2_grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2

from test_ads_protocol import AdsClient as SotwClient
from test_ads_protocol import Harness, handshake, policy
from test_ads_protocol import server as server  # the same in-process ADS fixture, shared
from waypost.xds.ads import AdsServer
from waypost.xds.cache import NodeInfo, SnapshotCache
from waypost.xds.compiler import compile_policy
from waypost.xds.delta import DeltaStream
from waypost.xds.types import TypeUrl

CDS, EDS, LDS, RDS = TypeUrl.CLUSTER, TypeUrl.ENDPOINT, TypeUrl.LISTENER, TypeUrl.ROUTE


class DeltaClient:
    """Plays Envoy's side of one delta ADS stream."""

    def __init__(self, channel: grpc.aio.Channel, node_id: str = "envoy-d", cluster: str = "edge") -> None:
        self._requests: asyncio.Queue[discovery_pb2.DeltaDiscoveryRequest | None] = asyncio.Queue()
        self._node = base_pb2.Node(id=node_id, cluster=cluster)
        self._first = True
        self._seen_nonces: set[str] = set()
        self.held: dict[str, dict[str, str]] = {}
        """type URL -> name -> version, as the node holds them after applying responses."""
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        self._call = stub.DeltaAggregatedResources(self._iterate())
        self._responses: asyncio.Queue[discovery_pb2.DeltaDiscoveryResponse] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for response in self._call:
            self._responses.put_nowait(response)

    async def _iterate(self) -> AsyncIterator[discovery_pb2.DeltaDiscoveryRequest]:
        while True:
            request = await self._requests.get()
            if request is None:
                return
            yield request

    def send(
        self,
        type_url: TypeUrl,
        subscribe: list[str] | None = None,
        *,
        unsubscribe: list[str] | None = None,
        initial: Mapping[str, str] | None = None,
        ack: discovery_pb2.DeltaDiscoveryResponse | None = None,
        nack: str | None = None,
    ) -> None:
        request = discovery_pb2.DeltaDiscoveryRequest(
            type_url=type_url,
            resource_names_subscribe=subscribe or [],
            resource_names_unsubscribe=unsubscribe or [],
            initial_resource_versions=dict(initial or {}),
        )
        if self._first:
            request.node.CopyFrom(self._node)
            self._first = False
        if ack is not None:
            request.response_nonce = ack.nonce
            if nack is not None:
                request.error_detail.CopyFrom(status_pb2.Status(code=3, message=nack))
        self._requests.put_nowait(request)

    async def recv(self, timeout: float = 2.0) -> discovery_pb2.DeltaDiscoveryResponse:
        response = await asyncio.wait_for(self._responses.get(), timeout)
        assert response.nonce and response.nonce not in self._seen_nonces, "nonces must be fresh"
        self._seen_nonces.add(response.nonce)
        assert response.control_plane.identifier == "waypost"
        assert response.system_version_info
        held = self.held.setdefault(response.type_url, {})
        for resource in response.resources:
            assert resource.resource.type_url == response.type_url
            assert resource.name and resource.version
            held[resource.name] = resource.version
        for name in response.removed_resources:
            held.pop(name, None)
        return response

    async def expect_silence(self, seconds: float = 0.3) -> None:
        with pytest.raises(TimeoutError):
            await self.recv(timeout=seconds)

    def close(self) -> None:
        self._requests.put_nowait(None)
        self._call.cancel()
        self._reader.cancel()


def delta_names(response: discovery_pb2.DeltaDiscoveryResponse) -> list[str]:
    return sorted(r.name for r in response.resources)


async def delta_handshake(client: DeltaClient) -> dict[str, discovery_pb2.DeltaDiscoveryResponse]:
    client.send(CDS)
    cds = await client.recv()
    assert cds.type_url == CDS
    client.send(EDS, delta_names(cds))
    client.send(CDS, ack=cds)
    eds = await client.recv()
    assert eds.type_url == EDS
    client.send(EDS, ack=eds)
    client.send(LDS)
    lds = await client.recv()
    assert lds.type_url == LDS
    client.send(LDS, ack=lds)
    client.send(RDS, ["public"])
    rds = await client.recv()
    assert rds.type_url == RDS
    client.send(RDS, ack=rds)
    return {"cds": cds, "eds": eds, "lds": lds, "rds": rds}


async def test_delta_handshake_matches_sotw_versions(server: Harness) -> None:
    server.cache.publish(compile_policy(policy("v1")))
    delta = DeltaClient(server.channel)
    got = await delta_handshake(delta)
    assert delta_names(got["cds"]) == ["orders"] and delta_names(got["eds"]) == ["orders"]
    snapshot = server.cache.snapshot_for(NodeInfo(id="x", cluster="edge"))
    assert snapshot is not None
    # Per-resource versions are the content digests; the system version is the SotW type version.
    assert got["cds"].resources[0].version == snapshot.resources[CDS]["orders"].digest
    sotw = SotwClient(server.channel, node_id="envoy-s")
    sotw_got = await handshake(sotw)
    for short in ("cds", "eds", "lds", "rds"):
        assert got[short].system_version_info == sotw_got[short].version_info
    await delta.expect_silence()
    statuses = {s["id"]: s for s in (stream.status() for stream in server.ads.registry.streams())}
    assert statuses["envoy-d"]["protocol"] == "delta" and statuses["envoy-s"]["protocol"] == "sotw"
    for short in ("cds", "eds", "lds", "rds"):
        assert statuses["envoy-d"]["types"][short]["in_sync"], statuses["envoy-d"]
    delta.close()
    sotw.close()


async def test_delta_sends_only_changes_and_removes_after_routes_move(server: Harness) -> None:
    server.cache.publish(compile_policy(policy("v1")))
    client = DeltaClient(server.channel)
    first = await delta_handshake(client)
    server.cache.publish(compile_policy(policy("v1-again")))  # same content: nothing to send
    await client.expect_silence()
    server.cache.publish(compile_policy(policy("v2", backend="catalog")))
    cds = await client.recv()
    # Only the new cluster travels; the old one stays until the routes leaving it are acked.
    assert cds.type_url == CDS and delta_names(cds) == ["catalog"] and not cds.removed_resources
    assert cds.system_version_info != first["cds"].system_version_info
    client.send(EDS, ["catalog"])
    client.send(CDS, ack=cds)
    eds = await client.recv()
    assert delta_names(eds) == ["catalog"]
    client.send(EDS, ack=eds)
    rds = await client.recv()
    assert rds.type_url == RDS and delta_names(rds) == ["public"]
    client.send(RDS, ack=rds)
    shrunk = await client.recv()
    assert (
        shrunk.type_url == CDS
        and list(shrunk.resources) == []
        and list(shrunk.removed_resources) == ["orders"]
    )
    client.send(CDS, ack=shrunk)
    gone = await client.recv()  # the dropped cluster's endpoints go with it
    assert gone.type_url == EDS and list(gone.removed_resources) == ["orders"]
    client.send(EDS, ack=gone)
    client.send(EDS, unsubscribe=["orders"])  # as Envoy does once the cluster is gone
    await client.expect_silence()
    assert set(client.held[CDS]) == {"catalog"}
    client.close()


async def test_delta_reconnect_with_current_versions_gets_nothing(server: Harness) -> None:
    server.cache.publish(compile_policy(policy("v1")))
    client = DeltaClient(server.channel)
    await delta_handshake(client)
    held = {type_url: dict(by_name) for type_url, by_name in client.held.items()}
    client.close()
    again = DeltaClient(server.channel)
    again.send(CDS, initial=held[CDS])
    again.send(EDS, ["orders"], initial=held[EDS])
    again.send(LDS, initial=held[LDS])
    again.send(RDS, ["public"], initial=held[RDS])
    await again.expect_silence()
    await asyncio.sleep(0.05)
    (stream,) = [s for s in server.ads.registry.streams() if isinstance(s, DeltaStream)]
    assert all(t["in_sync"] for t in stream.status()["types"].values()), stream.status()
    again.close()


async def test_delta_reconnect_with_old_versions_gets_only_the_difference(server: Harness) -> None:
    server.cache.publish(compile_policy(policy("v1")))
    client = DeltaClient(server.channel)
    await delta_handshake(client)
    held = dict(client.held[CDS])
    client.close()
    server.cache.publish(compile_policy(policy("v2", backend="catalog")))
    again = DeltaClient(server.channel)
    again.send(CDS, initial=held)
    cds = await again.recv()
    # A fresh stream holds no acked routes, so the orphaned cluster goes at once.
    assert delta_names(cds) == ["catalog"] and list(cds.removed_resources) == ["orders"]
    again.close()


async def test_delta_nack_is_recorded_not_resent_and_a_fix_moves_on(server: Harness) -> None:
    server.cache.publish(compile_policy(policy("v1")))
    client = DeltaClient(server.channel)
    first = await delta_handshake(client)
    server.cache.publish(compile_policy(policy("v2", backend="catalog")))
    cds = await client.recv()
    client.send(CDS, ack=cds, nack="cluster catalog: bad config")
    await client.expect_silence(0.5)  # no resend loop, and routes needing the cluster held back
    (stream,) = server.ads.registry.streams()
    state = stream.types[CDS]
    assert state.acked_version == first["cds"].system_version_info
    assert state.last_nack is not None and state.last_nack.version == cds.system_version_info
    status = stream.status()["types"]["cds"]
    assert status["last_nack"]["error"] == "cluster catalog: bad config" and not status["in_sync"]
    server.cache.publish(compile_policy(policy("v3", backend="orders")))
    fixed = await client.recv()
    assert fixed.type_url == CDS and list(fixed.removed_resources) == ["catalog"]
    client.send(CDS, ack=fixed)
    await asyncio.sleep(0.1)
    assert stream.types[CDS].acked_version == fixed.system_version_info
    assert stream.status()["types"]["cds"]["in_sync"]
    client.close()


async def test_delta_named_subscriptions(server: Harness) -> None:
    server.cache.publish(compile_policy(policy("v1")))
    client = DeltaClient(server.channel)
    client.send(EDS, ["orders", "ghost"])
    eds = await client.recv()
    # A subscribed name that does not exist is reported removed, once.
    assert delta_names(eds) == ["orders"] and list(eds.removed_resources) == ["ghost"]
    client.send(EDS, ack=eds)
    client.send(EDS, unsubscribe=["orders"])
    await client.expect_silence()
    client.send(EDS, ["orders"])
    again = await client.recv()
    assert delta_names(again) == ["orders"] and not again.removed_resources
    client.close()


async def test_delta_wildcard_type_named_only(server: Harness) -> None:
    server.cache.publish(compile_policy(policy("v1")))
    client = DeltaClient(server.channel)
    client.send(CDS, ["catalog"])  # names only: not a wildcard subscription
    cds = await client.recv()
    assert delta_names(cds) == [] and list(cds.removed_resources) == ["catalog"]
    client.send(CDS, ["*"], ack=cds)
    everything = await client.recv()
    assert delta_names(everything) == ["orders"]
    client.close()


async def test_empty_wildcard_gets_an_answer(server: Harness) -> None:
    server.cache.publish(compile_policy(policy("v1", gateway_cluster="edge")))
    client = DeltaClient(server.channel, cluster="sidecars")
    client.send(LDS)
    lds = await client.recv()  # Envoy's initial fetch must complete even with nothing to send
    assert list(lds.resources) == [] and not lds.removed_resources
    client.close()


async def test_per_type_services_serve_their_type(server: Harness) -> None:
    server.cache.publish(compile_policy(policy("v1")))
    stub = cds_pb2_grpc.ClusterDiscoveryServiceStub(server.channel)
    node = base_pb2.Node(id="plain", cluster="edge")

    async def one(request: object) -> AsyncIterator[object]:
        yield request
        await asyncio.sleep(10)

    sotw = stub.StreamClusters(one(discovery_pb2.DiscoveryRequest(node=node, type_url=CDS)))
    response = await asyncio.wait_for(sotw.read(), 2)
    cluster = cluster_pb2.Cluster()
    response.resources[0].Unpack(cluster)
    assert cluster.name == "orders"
    delta = stub.DeltaClusters(one(discovery_pb2.DeltaDiscoveryRequest(node=node)))  # type implied
    delta_response = await asyncio.wait_for(delta.read(), 2)
    assert delta_response.type_url == CDS and delta_names(delta_response) == ["orders"]
    assert {s["service"] for s in (st.status() for st in server.ads.registry.streams())} == {"cds"}
    # A per-type stream serves its own type only.
    listeners = stub.StreamClusters(one(discovery_pb2.DiscoveryRequest(node=node, type_url=LDS)))
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(listeners.read(), 0.3)
    for call in (sotw, delta, listeners):
        call.cancel()


async def test_authorizer_refuses_with_permission_denied() -> None:
    cache = SnapshotCache()
    cache.publish(compile_policy(policy("v1")))
    ads = AdsServer(cache, authorizer=lambda _ctx, node: None if node.id == "ok" else "not yours")
    grpc_server = grpc.aio.server()
    ads.add_to(grpc_server)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    await grpc_server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            allowed = DeltaClient(channel, node_id="ok")
            allowed.send(CDS)
            assert delta_names(await allowed.recv()) == ["orders"]
            allowed.close()
            refused = DeltaClient(channel, node_id="someone-else")
            refused.send(CDS)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await refused._call.read()
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "not yours" in (info.value.details() or "")
            refused.close()
            sotw = SotwClient(channel, node_id="intruder")
            sotw.send(CDS)
            with pytest.raises(grpc.aio.AioRpcError) as sotw_info:
                await sotw._call.read()
            assert sotw_info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            sotw.close()
    finally:
        await grpc_server.stop(grace=None)
