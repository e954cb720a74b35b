"""The state-of-the-world ADS protocol, checked over a real gRPC stream with a scripted client.

The client double asserts protocol rules on every response (fresh nonce, matching type URL,
resources of that type); the tests script what Envoy would send and check what comes back.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import struct_pb2
from google.rpc import status_pb2

from waypost.h2grpc import start_grpc_server
from waypost.policies.model import Gateway, PolicySet, Route, Service
from waypost.xds.ads import XDS_LIMITS, AdsServer
from waypost.xds.cache import NodeInfo, SnapshotCache
from waypost.xds.compiler import compile_policy
from waypost.xds.sotw import SotwStream
from waypost.xds.types import TypeUrl

CDS, EDS, LDS, RDS = TypeUrl.CLUSTER, TypeUrl.ENDPOINT, TypeUrl.LISTENER, TypeUrl.ROUTE


def policy(version: str, backend: str = "orders", *, gateway_cluster: str | None = None) -> PolicySet:
    services = {
        name: Service(name=name, endpoints=[f"127.0.0.1:{port}"])
        for name, port in (("orders", 9001), ("catalog", 9002))
    }
    gateway = Gateway(
        name="public", port=8080, nodes={"cluster": gateway_cluster} if gateway_cluster else None
    )
    route = Route(name="r", gateway="public", match={"prefix": "/"}, backend=backend)
    return PolicySet(version=version, gateways={"public": gateway}, services=services, routes={"r": route})


class AdsClient:
    """Plays Envoy's side of one ADS stream and checks every response it receives."""

    def __init__(self, channel: grpc.aio.Channel, node_id: str = "envoy-1", cluster: str = "edge") -> None:
        self._requests: asyncio.Queue[discovery_pb2.DiscoveryRequest | None] = asyncio.Queue()
        self._node = base_pb2.Node(id=node_id, cluster=cluster)
        self._node.metadata.fields["labels"].CopyFrom(struct_pb2.Value(struct_value=struct_pb2.Struct()))
        self._first = True
        self._seen_nonces: set[str] = set()
        self.last: dict[str, discovery_pb2.DiscoveryResponse] = {}
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        self._call = stub.StreamAggregatedResources(self._iterate())
        # Cancelling a pending read would cancel the whole RPC, so one task reads into a queue.
        self._responses: asyncio.Queue[discovery_pb2.DiscoveryResponse] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for response in self._call:
            self._responses.put_nowait(response)

    async def _iterate(self) -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
        while True:
            request = await self._requests.get()
            if request is None:
                return
            yield request

    def send(
        self,
        type_url: TypeUrl,
        names: list[str] | None = None,
        *,
        ack: discovery_pb2.DiscoveryResponse | None = None,
        nack: str | None = None,
        version: str = "",
    ) -> None:
        request = discovery_pb2.DiscoveryRequest(type_url=type_url, resource_names=names or [])
        if self._first:
            request.node.CopyFrom(self._node)
            self._first = False
        if ack is not None:
            request.response_nonce = ack.nonce
            request.version_info = version if nack is not None else ack.version_info
            if nack is not None:
                request.error_detail.CopyFrom(status_pb2.Status(code=3, message=nack))
        else:
            request.version_info = version
        self._requests.put_nowait(request)

    async def recv(self, timeout: float = 2.0) -> discovery_pb2.DiscoveryResponse:
        response = await asyncio.wait_for(self._responses.get(), timeout)
        assert response.nonce and response.nonce not in self._seen_nonces, "nonces must be fresh"
        self._seen_nonces.add(response.nonce)
        assert response.control_plane.identifier == "waypost"
        for resource in response.resources:
            assert resource.type_url == response.type_url
        self.last[response.type_url] = response
        return response

    async def expect_silence(self, seconds: float = 0.3) -> None:
        with pytest.raises(TimeoutError):
            await self.recv(timeout=seconds)

    def close(self) -> None:
        self._requests.put_nowait(None)
        self._call.cancel()
        self._reader.cancel()


def names(response: discovery_pb2.DiscoveryResponse) -> list[str]:
    out = []
    for resource in response.resources:
        if response.type_url == CDS:
            msg = cluster_pb2.Cluster()
            resource.Unpack(msg)
            out.append(msg.name)
        else:
            out.append(resource.value[2 : 2 + resource.value[1]].decode())  # field 1 = name
    return out


@dataclass
class Harness:
    cache: SnapshotCache
    channel: grpc.aio.Channel
    ads: AdsServer

    def stream(self) -> SotwStream:
        (only,) = self.ads.registry.streams()
        return only


@pytest.fixture(params=["h2grpc", "grpcio"])
async def server(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    """ADS on waypost's lean gRPC server (plaintext xDS) and on grpcio's (TLS xDS): alike."""
    cache = SnapshotCache()
    ads = AdsServer(cache)
    if request.param == "h2grpc":
        lean = await start_grpc_server(ads.services(), "127.0.0.1", 0, limits=XDS_LIMITS)
        port, stop = lean.port, lean.stop
    else:
        grpc_server = grpc.aio.server()
        ads.add_to(grpc_server)
        port = grpc_server.add_insecure_port("127.0.0.1:0")
        await grpc_server.start()

        async def stop() -> None:
            await grpc_server.stop(grace=None)

    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield Harness(cache, channel, ads)
    await channel.close()
    await stop()
    ads.close()


async def handshake(client: AdsClient) -> dict[str, discovery_pb2.DiscoveryResponse]:
    """Envoy's start-up: CDS, then EDS for the clusters, then LDS, then RDS; ACK each."""
    client.send(CDS)
    cds = await client.recv()
    assert cds.type_url == CDS
    client.send(EDS, names(cds))
    client.send(CDS, ack=cds)
    eds = await client.recv()
    assert eds.type_url == EDS
    client.send(EDS, names(cds), ack=eds)
    client.send(LDS)
    lds = await client.recv()
    assert lds.type_url == LDS
    client.send(LDS, ack=lds)
    client.send(RDS, ["public"])
    rds = await client.recv()
    assert rds.type_url == RDS
    client.send(RDS, ["public"], ack=rds)
    return {"cds": cds, "eds": eds, "lds": lds, "rds": rds}


async def test_handshake_delivers_every_type_in_order(server) -> None:
    cache, channel = server.cache, server.channel
    cache.publish(compile_policy(policy("v1")))
    client = AdsClient(channel)
    got = await handshake(client)
    assert names(got["cds"]) == ["orders"]
    assert names(got["eds"]) == ["orders"]
    await client.expect_silence()
    client.close()


async def test_listeners_wait_for_clusters_to_be_acked(server) -> None:
    cache, channel = server.cache, server.channel
    cache.publish(compile_policy(policy("v1")))
    client = AdsClient(channel)
    client.send(CDS)
    cds = await client.recv()
    client.send(LDS)  # asked before CDS is acked and before EDS was sent
    await client.expect_silence()
    client.send(CDS, ack=cds)
    await client.expect_silence()  # acked, but endpoints of the EDS cluster not sent yet
    client.send(EDS, ["orders"])
    assert (await client.recv()).type_url == EDS
    assert (await client.recv()).type_url == LDS
    client.close()


async def test_unchanged_policy_pushes_nothing_and_change_pushes(server) -> None:
    cache, channel = server.cache, server.channel
    cache.publish(compile_policy(policy("v1")))
    client = AdsClient(channel)
    first = await handshake(client)
    cache.publish(compile_policy(policy("v1-again")))  # same content, new policy version
    await client.expect_silence()
    cache.publish(compile_policy(policy("v2", backend="catalog")))
    cds = await client.recv()
    assert cds.type_url == CDS
    # The old cluster stays until the node has acked routes that no longer use it.
    assert sorted(names(cds)) == ["catalog", "orders"]
    assert cds.version_info != first["cds"].version_info
    client.send(EDS, ["catalog", "orders"])
    client.send(CDS, ack=cds)
    eds = await client.recv()
    assert sorted(names(eds)) == ["catalog", "orders"]
    client.send(EDS, ["catalog", "orders"], ack=eds)
    rds = await client.recv()
    assert rds.type_url == RDS
    client.send(RDS, ["public"], ack=rds)
    shrunk = await client.recv()
    assert shrunk.type_url == CDS and names(shrunk) == ["catalog"]
    client.close()


async def test_nack_is_recorded_and_not_resent(server) -> None:
    cache, channel = server.cache, server.channel
    cache.publish(compile_policy(policy("v1")))
    client = AdsClient(channel)
    first = await handshake(client)
    cache.publish(compile_policy(policy("v2", backend="catalog")))
    cds = await client.recv()
    client.send(CDS, ack=cds, nack="cluster catalog: bad config", version=first["cds"].version_info)
    await client.expect_silence(0.5)  # no resend loop, and routes needing the cluster held back
    state = server.stream().types[CDS]
    assert state.acked_version == first["cds"].version_info
    assert state.last_nack is not None and "bad config" in state.last_nack.message
    cache.publish(compile_policy(policy("v3", backend="orders")))  # the fix moves the node on
    fixed = await client.recv()
    assert fixed.type_url == CDS and names(fixed) == ["orders"]
    client.close()


async def test_stale_nonce_is_ignored(server) -> None:
    cache, channel = server.cache, server.channel
    cache.publish(compile_policy(policy("v1")))
    client = AdsClient(channel)
    got = await handshake(client)
    cache.publish(compile_policy(policy("v2", backend="catalog")))
    cds = await client.recv()
    client.send(CDS, ack=got["cds"])  # ACK of an older response: stale
    await client.expect_silence()
    assert server.stream().types[CDS].acked_version == got["cds"].version_info
    client.send(CDS, ack=cds)
    await asyncio.sleep(0.1)
    assert server.stream().types[CDS].acked_version == cds.version_info
    client.close()


async def test_reconnect_with_current_versions_gets_no_resend(server) -> None:
    cache, channel = server.cache, server.channel
    cache.publish(compile_policy(policy("v1")))
    client = AdsClient(channel)
    got = await handshake(client)
    client.close()
    again = AdsClient(channel)
    again.send(CDS, version=got["cds"].version_info)
    await again.expect_silence()
    again.send(EDS, ["orders"], version=got["eds"].version_info)
    again.send(LDS, version=got["lds"].version_info)
    again.send(RDS, ["public"], version=got["rds"].version_info)
    await again.expect_silence()
    again.close()


async def test_replicas_on_same_policy_give_identical_versions(server) -> None:
    cache, channel = server.cache, server.channel
    cache.publish(compile_policy(policy("v1")))
    client = AdsClient(channel)
    got = await handshake(client)
    other = SnapshotCache()
    other.publish(compile_policy(policy("v1")))
    snapshot = other.snapshot_for(NodeInfo(id="x", cluster="edge"))
    assert snapshot is not None
    assert snapshot.version(CDS) == got["cds"].version_info
    assert snapshot.version(LDS) == got["lds"].version_info
    client.close()


async def test_node_outside_every_selector_gets_empty_config(server) -> None:
    cache, channel = server.cache, server.channel
    cache.publish(compile_policy(policy("v1", gateway_cluster="edge")))
    client = AdsClient(channel, cluster="sidecars")
    client.send(CDS)
    cds = await client.recv()
    assert names(cds) == []
    client.send(CDS, ack=cds)
    client.send(LDS)
    lds = await client.recv()
    assert list(lds.resources) == []
    client.close()


async def test_first_request_without_node_is_rejected(server) -> None:
    cache, channel = server.cache, server.channel
    cache.publish(compile_policy(policy("v1")))
    stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)

    async def requests() -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
        yield discovery_pb2.DiscoveryRequest(type_url=CDS)

    call = stub.StreamAggregatedResources(requests())
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call.read()
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_malformed_request_is_rejected(server) -> None:
    server.cache.publish(compile_policy(policy("v1")))
    call = server.channel.stream_stream(
        "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"
    )(iter([b"\xff\xff\xff"]))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call.read()
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "DeltaDiscoveryRequest" in (info.value.details() or "")
