"""Rate-limit decisions without Envoy: the limiter (plans, shadow, headers), the counter stores
(in process and a real redis-server), the RLS over real gRPC, and `waypost ratelimit` alone."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import redis
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2 as common_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from support import free_port, wait_until
from support.procs import SRC_DIR
from support.redis import RedisProcess, find_redis_server
from waypost.contract import RATELIMIT_CLUSTER
from waypost.filters.ratelimit.limiter import Limiter, check_consumer_quota
from waypost.filters.ratelimit.service import encode_verdict, encode_verdict_bytes
from waypost.filters.ratelimit.store import CounterStore, MemoryStore, RedisStore
from waypost.filters.ratelimit.table import build_table
from waypost.policies.loader import load_policies
from waypost.policies.model import PolicySet
from waypost.policies.types import Endpoint
from waypost.server.ratelimit import RateLimitOptions, start_ratelimit
from waypost.xds.bootstrap import build_bootstrap
from waypost.xds.compiler import DecisionEndpoints, compile_policy

POLICY = """
kind: Gateway
name: public
port: 8080
---
kind: Service
name: orders
endpoints: ["127.0.0.1:9001"]
---
kind: Route
name: orders
gateway: public
match: {prefix: /orders}
backend: orders
rate_limit: [standard, watch]
---
kind: RateLimitPolicy
name: standard
limits:
  - {by: consumer, requests: 3, per: minute}
  - {by: header:x-tenant, requests: 5, per: hour}
plans:
  gold: {requests: 6, per: minute}
---
kind: RateLimitPolicy
name: watch
limits:
  - {by: route, requests: 1, per: second}
shadow: true
"""


def load(tmp_path: Path, text: str = POLICY) -> PolicySet:
    directory = tmp_path / "policies"
    directory.mkdir(exist_ok=True)
    (directory / "all.yaml").write_text(textwrap.dedent(text))
    return load_policies(directory)


def limiter_for(policy: PolicySet, store: CounterStore, *, fail_closed: bool = False) -> Limiter:
    limiter = Limiter(store, fail_closed=fail_closed)
    limiter.apply(policy)
    return limiter


def consumer(name: str, plan: str | None = None, limit: str = "standard/0") -> list[tuple[str, str]]:
    entries = [("limit", limit), ("consumer", name)]
    if plan is not None:
        entries.append(("plan", plan))
    return entries


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisProcess]:
    binary = find_redis_server()
    if binary is None:
        pytest.fail("redis-server is not installed: run `make system-deps`", pytrace=False)
    process = RedisProcess(workdir=tmp_path, binary=binary).start()
    yield process
    process.stop()


async def test_consumer_limit_plan_and_other_consumer(tmp_path: Path) -> None:
    policy = load(tmp_path)
    limiter = limiter_for(policy, MemoryStore())
    verdicts = [await limiter.decide([consumer("acme")]) for _ in range(4)]
    assert [v.allowed for v in verdicts] == [True, True, True, False]
    assert dict(verdicts[0].headers)["ratelimit-limit"] == "3"
    assert dict(verdicts[2].headers)["ratelimit-remaining"] == "0"
    denied = dict(verdicts[3].headers)
    assert denied["retry-after"] == denied["ratelimit-reset"]
    assert 1 <= int(denied["retry-after"]) <= 60
    # Another consumer has its own counter.
    assert (await limiter.decide([consumer("globex")])).allowed
    # A gold consumer gets the plan's limit (6/minute) instead of the consumer limit.
    gold = [await limiter.decide([consumer("initech", "gold")]) for _ in range(7)]
    assert [v.allowed for v in gold] == [True] * 6 + [False]
    assert dict(gold[0].headers)["ratelimit-limit"] == "6"
    # An unknown plan falls back to the `by: consumer` limit.
    assert dict((await limiter.decide([consumer("hooli", "platinum")])).headers)["ratelimit-limit"] == "3"


async def test_unknown_descriptors_are_not_limited_and_shadow_never_blocks(tmp_path: Path) -> None:
    policy = load(tmp_path)
    limiter = limiter_for(policy, MemoryStore())
    unknown = await limiter.decide([[("limit", "nope/0"), ("consumer", "x")], [("other", "1")], []])
    assert unknown.allowed and unknown.headers == ()
    shadow = [await limiter.decide([[("limit", "watch/0"), ("route", "orders")]]) for _ in range(3)]
    assert all(v.allowed for v in shadow)
    assert not any(r.over_limit for v in shadow for r in v.results)


async def test_tightest_limit_in_headers_and_all_counted(tmp_path: Path) -> None:
    policy = load(tmp_path)
    limiter = limiter_for(policy, MemoryStore())
    both = [consumer("acme"), [("limit", "standard/1"), ("header", "t1")]]
    verdict = await limiter.decide(both)
    headers = dict(verdict.headers)
    assert headers["ratelimit-limit"] == "3" and headers["ratelimit-remaining"] == "2"
    assert [r.remaining for r in verdict.results] == [2, 4]


async def test_reload_keeps_unrelated_counters(tmp_path: Path) -> None:
    policy = load(tmp_path)
    current = {"policy": policy}
    limiter = limiter_for(policy, MemoryStore())
    for _ in range(2):
        await limiter.decide([consumer("acme"), [("limit", "standard/1"), ("header", "t1")]])
    # Change the header limit's count and add a limit in front: indices shift, counters stay.
    changed = POLICY.replace(
        "  - {by: consumer, requests: 3, per: minute}",
        "  - {by: route, requests: 100, per: second}\n  - {by: consumer, requests: 3, per: minute}",
    ).replace("requests: 5, per: hour", "requests: 50, per: hour")
    current["policy"] = load(tmp_path, changed)
    assert current["policy"].version != policy.version
    limiter.apply(current["policy"])
    verdict = await limiter.decide(
        [consumer("acme", limit="standard/1"), [("limit", "standard/2"), ("header", "t1")]]
    )
    assert [r.remaining for r in verdict.results] == [0, 47]
    old, new = build_table(policy), build_table(current["policy"])
    assert old.rules["standard/0"].counter == new.rules["standard/1"].counter


async def test_plans_only_policy_counts_planned_consumers(tmp_path: Path) -> None:
    policy = load(
        tmp_path,
        POLICY
        + """
---
kind: RateLimitPolicy
name: plans-only
plans:
  free: {requests: 1, per: minute}
""",
    )
    limiter = limiter_for(policy, MemoryStore())
    assert (await limiter.decide([consumer("acme", limit="plans-only/plans")])).headers == ()
    free = [await limiter.decide([consumer("acme", "free", limit="plans-only/plans")]) for _ in range(2)]
    assert [v.allowed for v in free] == [True, False]


async def test_check_consumer_quota_shares_the_rls_counters(tmp_path: Path) -> None:
    policy = load(tmp_path)
    limiter = limiter_for(policy, MemoryStore())
    await limiter.decide([consumer("acme")])
    await limiter.decide([consumer("acme")])
    verdict = await check_consumer_quota(limiter, "orders", "acme")
    assert verdict.allowed and dict(verdict.headers)["ratelimit-remaining"] == "0"
    denied = await check_consumer_quota(limiter, "orders", "acme")
    assert not denied.allowed and "retry-after" in dict(denied.headers)
    assert (await check_consumer_quota(limiter, "no-such-route", "acme")).allowed


async def test_consumer_quota_follows_the_policy_version_and_the_plan(tmp_path: Path) -> None:
    """What a quota counts is resolved once per version, route, consumer and plan: a new version's
    limits apply from its first decision on, and a consumer's plan picks the plan's limit."""
    policy = load(tmp_path)
    limiter = limiter_for(policy, MemoryStore())
    first = await check_consumer_quota(limiter, "orders", "acme")
    assert dict(first.headers)["ratelimit-limit"] == "3"
    assert (
        dict((await check_consumer_quota(limiter, "orders", "acme", "gold")).headers)["ratelimit-limit"]
        == "6"
    )
    limiter.apply(load(tmp_path, POLICY.replace("requests: 3, per: minute", "requests: 30, per: minute")))
    again = await check_consumer_quota(limiter, "orders", "acme")
    assert dict(again.headers)["ratelimit-limit"] == "30"
    assert dict(again.headers)["ratelimit-remaining"] == "28"  # the same counter: 2 counted
    limiter.apply(load(tmp_path, POLICY.replace("rate_limit: [standard, watch]", "rate_limit: watch")))
    assert (await check_consumer_quota(limiter, "orders", "acme")).headers == ()


def test_memory_store_fixed_and_sliding_windows() -> None:
    fixed = MemoryStore("fixed")
    assert [fixed.hit_now([("k", 60)], 1, 120.0 + i)[0].used for i in range(3)] == [1, 2, 3]
    assert fixed.hit_now([("k", 60)], 1, 181.0)[0].used == 1  # a new window starts from zero
    assert fixed.hit_now([("k", 60)], 1, 181.0)[0].reset == pytest.approx(59.0)
    sliding = MemoryStore("sliding")
    for _ in range(10):
        sliding.hit_now([("k", 60)], 1, 150.0)
    # 15 s into the next window, 3/4 of the previous window's 10 still weigh in.
    assert sliding.hit_now([("k", 60)], 1, 195.0)[0].used == pytest.approx(1 + 7.5)
    # Idle counters go away (checked every 50,000 hits), each after two of its own windows.
    store = MemoryStore()
    store.hit_now([("per-second", 1), ("per-day", 86400)], 1, 1000.0)
    for i in range(50_000):
        store.hit_now([("busy", 60)], 1, 1010.0 + i / 10_000)
    assert "per-second" not in store._counters and "per-day" in store._counters


async def test_redis_store_atomic_one_round_trip_expiring(redis_server: RedisProcess) -> None:
    store = RedisStore(redis_server.url)
    try:
        await store.hit([("warm", 60)], 1)  # loads the script
        client = redis_server.client()
        client.config_resetstat()
        counts = await asyncio.gather(*(store.hit([("a|x", 60), ("b|y", 3600)], 1) for _ in range(50)))
        assert sorted(c[0].used for c in counts) == list(range(1, 51))
        assert sorted(c[1].used for c in counts) == list(range(1, 51))
        stats = client.info("commandstats")
        # One EVALSHA per decision, both counters inside it: one round trip.
        assert stats["cmdstat_evalsha"]["calls"] == 50
        # (commandstats also counts the commands the script runs inside Redis: two INCRBYs each.)
        assert stats["cmdstat_incrby"]["calls"] == 100
        assert not any(name in stats for name in ("cmdstat_eval", "cmdstat_multi", "cmdstat_exec"))
        keys = sorted(k.decode() for k in client.keys("wp:*"))
        assert [k.rsplit(":", 1)[0] for k in keys if "warm" not in k] == ["wp:{a|x}", "wp:{b|y}"]
        assert all(0 < client.pttl(k) <= 2 * 3600 * 1000 for k in keys)
        client.close()
    finally:
        await store.close()


async def test_redis_sliding_window(redis_server: RedisProcess) -> None:
    store = RedisStore(redis_server.url, "sliding")
    try:
        # Seed the previous hour's window by hand: the sliding count weighs it by the overlap.
        client = redis_server.client()
        now_ms = int(client.time()[0]) * 1000
        start = now_ms - now_ms % 3_600_000
        client.set(f"{RedisStore.redis_key('s')}:{start - 3_600_000}", 100, px=7_200_000)
        client.close()
        first = (await store.hit([("s", 3600)], 1))[0]
        weight = 1.0 - (3600 - first.reset) / 3600
        assert first.used == pytest.approx(1 + 100 * weight, abs=0.5)
    finally:
        await store.close()


async def test_redis_unreachable_fails_open_or_closed(tmp_path: Path) -> None:
    policy = load(tmp_path)
    url = f"redis://127.0.0.1:{free_port()}/0"
    for fail_closed in (False, True):
        limiter = limiter_for(policy, RedisStore(url), fail_closed=fail_closed)
        verdict = await limiter.decide([consumer("acme")])
        assert verdict.store_error
        assert verdict.allowed is not fail_closed
        await limiter.store.close()


@pytest.mark.parametrize("grpcio", [False, True], ids=["h2grpc", "grpcio"])
async def test_rls_over_grpc(tmp_path: Path, grpcio: bool) -> None:
    policy = load(tmp_path)
    running = await start_ratelimit(
        RateLimitOptions(port=0, host="127.0.0.1", grpcio=grpcio), limiter_for(policy, MemoryStore())
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = rls_pb2_grpc.RateLimitServiceStub(channel)
            request = rls_pb2.RateLimitRequest(
                domain="waypost",
                descriptors=[
                    common_pb2.RateLimitDescriptor(
                        entries=[
                            common_pb2.RateLimitDescriptor.Entry(key="limit", value="standard/0"),
                            common_pb2.RateLimitDescriptor.Entry(key="consumer", value="acme"),
                        ]
                    )
                ],
            )
            responses = [await stub.ShouldRateLimit(request) for _ in range(4)]
            # Many concurrent calls on one connection (streams interleave; flow control holds).
            burst = await asyncio.gather(
                *(stub.ShouldRateLimit(rls_pb2.RateLimitRequest(domain="waypost")) for _ in range(300))
            )
            assert all(r.overall_code == rls_pb2.RateLimitResponse.OK for r in burst)
            assert [r.overall_code for r in responses[:3]] == [rls_pb2.RateLimitResponse.OK] * 3
            last = responses[3]
            assert last.overall_code == rls_pb2.RateLimitResponse.OVER_LIMIT
            assert last.statuses[0].current_limit.requests_per_unit == 3
            assert last.statuses[0].current_limit.unit == rls_pb2.RateLimitResponse.RateLimit.MINUTE
            headers = {h.key: h.value for h in last.response_headers_to_add}
            assert set(headers) == {
                "ratelimit-limit",
                "ratelimit-remaining",
                "ratelimit-reset",
                "retry-after",
            }
            other = await stub.ShouldRateLimit(
                rls_pb2.RateLimitRequest(domain="other", descriptors=request.descriptors)
            )
            assert other.overall_code == rls_pb2.RateLimitResponse.OK
            # Garbage bytes: a gRPC status, never a crash.
            raw = channel.unary_unary("/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit")
            with pytest.raises(grpc.aio.AioRpcError) as excinfo:
                await raw(b"\xff\xff\xff")
            assert excinfo.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        await running.stop()


def test_ratelimit_cluster_comes_over_cds_not_the_bootstrap(tmp_path: Path) -> None:
    policy = load(tmp_path)
    endpoints = DecisionEndpoints(endpoints={RATELIMIT_CLUSTER: (Endpoint("10.0.0.7", 18001),)})
    compiled = compile_policy(policy, decisions=endpoints)
    assert compiled.clusters[RATELIMIT_CLUSTER].type == compiled.clusters[RATELIMIT_CLUSTER].EDS
    address = compiled.load_assignments[RATELIMIT_CLUSTER].endpoints[0].lb_endpoints[0].endpoint.address
    assert (address.socket_address.address, address.socket_address.port_value) == ("10.0.0.7", 18001)
    plain = build_bootstrap(node_id="n", node_cluster="edge", xds_host="127.0.0.1", xds_port=18000)
    assert [c["name"] for c in plain["static_resources"]["clusters"]] == ["waypost_xds"]


def test_waypost_ratelimit_alone_with_hot_reload(tmp_path: Path) -> None:
    policy = load(tmp_path)
    directory = tmp_path / "policies"
    port, admin = free_port(), free_port()
    env = dict(os.environ, PYTHONPATH=str(SRC_DIR), PYTHONUNBUFFERED="1")
    log = (tmp_path / "ratelimit.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "waypost",
            "ratelimit",
            "--policies",
            str(directory),
            "--port",
            str(port),
            "--admin-port",
            str(admin),
            "--host",
            "127.0.0.1",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:

        def limit_of() -> int:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = rls_pb2_grpc.RateLimitServiceStub(channel)
                response = stub.ShouldRateLimit(
                    rls_pb2.RateLimitRequest(
                        domain="waypost",
                        descriptors=[
                            common_pb2.RateLimitDescriptor(
                                entries=[
                                    common_pb2.RateLimitDescriptor.Entry(key="limit", value="standard/1"),
                                    common_pb2.RateLimitDescriptor.Entry(key="header", value="t"),
                                ]
                            )
                        ],
                    ),
                    timeout=2,
                )
                return response.statuses[0].current_limit.requests_per_unit

        assert wait_until(limit_of, timeout=20) == 5
        assert policy.version
        (directory / "all.yaml").write_text(
            textwrap.dedent(POLICY).replace("requests: 5, per: hour", "requests: 7, per: hour")
        )
        wait_until(lambda: limit_of() == 7, timeout=10.0, interval=0.1)
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


async def test_redis_store_survives_script_flush_restart_and_uses_its_db(redis_server: RedisProcess) -> None:
    store = RedisStore(redis_server.url.replace("/0", "/3"))
    try:
        await store.prepare()
        assert (await store.hit([("x", 60)], 1))[0].used == 1
        client = redis_server.client()
        client.script_flush()  # NOSCRIPT next time: the store loads it again by itself
        assert (await store.hit([("x", 60)], 1))[0].used == 2
        client.close()
        with redis.Redis(host="127.0.0.1", port=redis_server.port, db=3) as db3:
            assert any(k.startswith(b"wp:{x}:") for k in db3.keys("*"))
        await asyncio.to_thread(redis_server.restart)
        # The idle connection died with the old server: one transparent reconnect, no error.
        assert (await store.hit([("x", 60)], 1))[0].used == 1
    finally:
        await store.close()


async def test_hand_encoded_response_equals_protobuf(tmp_path: Path) -> None:
    policy = load(tmp_path)
    limiter = limiter_for(policy, MemoryStore())
    descriptors = [consumer("acme"), [("limit", "standard/1"), ("header", "t" * 200)], [("nope", "x")]]
    for _ in range(5):
        verdict = await limiter.decide(descriptors, hits=40)
        expected = encode_verdict(verdict)
        assert rls_pb2.RateLimitResponse.FromString(encode_verdict_bytes(verdict)) == expected
    assert not verdict.allowed


def test_trusted_hops_is_validated_with_file_and_line(tmp_path: Path) -> None:
    from waypost.policies.diagnostics import PolicyError

    with pytest.raises(PolicyError) as excinfo:
        load(tmp_path, POLICY.replace("port: 8080", "port: 8080\ntrusted_hops: -1"))
    message = "\n".join(str(d) for d in excinfo.value.diagnostics)
    assert "all.yaml:5" in message and "trusted_hops" in message, message
