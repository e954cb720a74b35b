"""Consumer rate limits end to end: ext_authz names the caller, the rate-limit service counts it.

A real Envoy asks waypost's ext_authz service who the caller is (API key -> Consumer); the
decision's dynamic metadata (`consumer`, `plan`) keys the global limit, which waypost's RLS
counts. Checks the spec's outcome for `by: consumer` limits and `plans`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from support import EchoFactory, EnvoyProcess, WaypostProcess, async_wait_until, free_port
from waypost.filters.authz.core import hash_api_key

pytestmark = pytest.mark.e2e

KEYS = {"acme": "acme-key-1", "globex": "globex-key-1", "initech": "initech-key-1"}


def policy_text(port: int, backend: str) -> str:
    return f"""
kind: Gateway
name: public
port: {port}
address: 127.0.0.1
---
kind: Service
name: echo
endpoints: ["{backend}"]
---
kind: Route
name: orders
gateway: public
match: {{prefix: /orders}}
backend: echo
auth: keys
rate_limit: per-consumer
---
kind: AuthPolicy
name: keys
identity:
  - api_key: {{header: x-api-key}}
---
kind: RateLimitPolicy
name: per-consumer
limits:
  - {{by: consumer, requests: 10, per: hour}}
plans:
  gold: {{requests: 15, per: hour}}
---
kind: Consumer
name: acme
api_keys: ["{hash_api_key(KEYS["acme"])}"]
---
kind: Consumer
name: globex
api_keys: ["{hash_api_key(KEYS["globex"])}"]
---
kind: Consumer
name: initech
plan: gold
api_keys: ["{hash_api_key(KEYS["initech"])}"]
"""


async def test_consumer_limit_plan_and_isolation(
    tmp_path: Path,
    echo_backend: EchoFactory,
    start_waypost: Callable[..., WaypostProcess],
    start_envoy: Callable[..., EnvoyProcess],
) -> None:
    echo = await echo_backend("orders")
    port = free_port()
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "policy.yaml").write_text(policy_text(port, echo.address))
    waypost = await asyncio.to_thread(start_waypost, policies)
    envoy = await asyncio.to_thread(start_envoy, xds_port=waypost.xds_port)
    await asyncio.to_thread(envoy.wait_for_listener, port)

    async with httpx.AsyncClient(trust_env=False, timeout=5) as client:

        async def call(consumer: str) -> httpx.Response:
            return await client.get(
                f"http://127.0.0.1:{port}/orders/1", headers={"x-api-key": KEYS[consumer]}
            )

        # Envoy's first calls open its connections to both services; wait until an answer carries
        # the limit headers so that no request slips through uncounted (filters fail open).
        async def limited() -> bool:
            return "ratelimit-limit" in (await call("globex")).headers

        await async_wait_until(limited, timeout=15, interval=0.2)

        # No credential: 401 from ext_authz, never counted against anyone.
        assert (await client.get(f"http://127.0.0.1:{port}/orders/1")).status_code == 401

        statuses = [(await call("acme")).status_code for _ in range(10)]
        assert statuses == [200] * 10
        over = await call("acme")
        assert over.status_code == 429, over.text
        assert over.headers["ratelimit-limit"].split(",")[0].strip() == "10"
        assert over.headers["ratelimit-remaining"] == "0"
        assert int(over.headers["retry-after"]) >= 1
        assert "ratelimit-reset" in over.headers

        # Another consumer has its own count (globex used some during the warm-up only).
        other = await call("globex")
        assert other.status_code == 200
        assert int(other.headers["ratelimit-remaining"]) < 10

        # A gold consumer gets the plan's 15 per hour instead of the default 10.
        gold = [(await call("initech")).status_code for _ in range(15)]
        assert gold == [200] * 15
        assert (await call("initech")).status_code == 429

    # The backend saw who called: the consumer header set by ext_authz.
    consumers = {request.headers.get("x-waypost-consumer") for request in echo.requests}
    assert consumers == {"acme", "globex", "initech"}
