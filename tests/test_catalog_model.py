"""Api and Portal documents: what validates, what fails (each at file:line), and what an Api
subscription means to the ext_authz decision core (every route of the Api, on its plan)."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import textwrap
from pathlib import Path

import pytest

from waypost.filters.authz.core import AuthRequest, AuthzCore, Decision
from waypost.policies.diagnostics import PolicyError
from waypost.policies.loader import load_policies
from waypost.policies.model import PolicySet

KEY = "catalog-test-key"
BASE = """
kind: Gateway
name: gw
port: 8080
---
kind: Service
name: s
endpoints: ["127.0.0.1:9"]
---
kind: Route
name: a
gateway: gw
match: {prefix: /a}
backend: s
auth: keys
rate_limit: quota
---
kind: Route
name: b
gateway: gw
match: {prefix: /b}
backend: s
auth: keys
---
kind: Route
name: c
gateway: gw
match: {prefix: /c}
backend: s
auth: keys
---
kind: AuthPolicy
name: keys
identity: [{api_key: {}}]
---
kind: RateLimitPolicy
name: quota
limits: [{by: consumer, requests: 10, per: minute}]
plans: {gold: {requests: 100, per: minute}}
---
kind: Api
name: shop
title: Shop
version: "2"
routes: [a, b]
plans: {gold: {approval: false}}
"""
CONSUMER = f"""
kind: Consumer
name: acme
plan: basic
api_keys: ["sha256:{hashlib.sha256(KEY.encode()).hexdigest()}"]
"""


def load(tmp_path: Path, extra: str) -> PolicySet:
    (tmp_path / "p.yaml").write_text(
        textwrap.dedent(BASE).lstrip() + "---\n" + textwrap.dedent(extra).lstrip()
    )
    return load_policies(tmp_path)


def problems(tmp_path: Path, extra: str) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        load(tmp_path, extra)
    return [str(d).replace(str(tmp_path) + "/", "") for d in caught.value.diagnostics]


def decide(core: AuthzCore, route: str) -> Decision:
    result = core.decide(
        AuthRequest(route=route, policies=(), method="GET", path="/", headers={"x-api-key": KEY})
    )
    return asyncio.run(result) if inspect.isawaitable(result) else result  # type: ignore[arg-type, return-value]


def test_api_subscription_covers_its_routes_on_its_plan(tmp_path: Path) -> None:
    policy = load(tmp_path, CONSUMER + "subscriptions: [{api: shop, plan: gold, status: approved}]\n")
    core = AuthzCore()
    core.apply(policy)
    allowed = decide(core, "a")
    assert allowed.allowed and allowed.plan == "gold"  # the subscription's plan, not Consumer.plan
    assert decide(core, "b").allowed
    denied = decide(core, "c")
    assert (denied.status, denied.reason) == (403, "no subscription to this route")


@pytest.mark.parametrize(
    ("subscriptions", "route", "status", "reason", "plan"),
    [
        ("[{api: shop, status: pending}]", "a", 403, "subscription pending approval", None),
        ("[{api: shop, status: revoked}]", "b", 403, "subscription revoked", None),
        # A route subscription keeps the Consumer's plan; an approved Api one wins over a revoked route one.
        ("[{route: c, status: approved}]", "c", 200, "allowed", "basic"),
        (
            "[{api: shop, plan: gold, status: approved}, {route: a, status: revoked}]",
            "a",
            200,
            "allowed",
            "gold",
        ),
    ],
)
def test_route_and_api_subscriptions_together(
    tmp_path: Path, subscriptions: str, route: str, status: int, reason: str, plan: str | None
) -> None:
    core = AuthzCore()
    core.apply(load(tmp_path, CONSUMER + f"subscriptions: {subscriptions}\n"))
    decision = decide(core, route)
    assert (decision.status, decision.reason) == (status, reason)
    if status == 200:
        assert decision.plan == plan


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        pytest.param(
            "kind: Api\nname: x\ntitle: X\nversion: '1'\nroutes: [nope]\n",
            ["p.yaml:51: Api x: routes[0] 'nope' is not a Route"],
            id="api-route-missing",
        ),
        pytest.param(
            "kind: Api\nname: x\ntitle: X\nversion: '1'\nroutes: [b]\nplans: {gold: {}}\n",
            [
                "p.yaml:52: Api x: plans.gold: no RateLimitPolicy of this Api's routes has a plan 'gold'"
                " (plans there: none)"
            ],
            id="api-plan-not-in-policies",
        ),
        pytest.param(
            "kind: Api\nname: x\ntitle: X\nversion: '1'\nroutes: [a]\nlifecycle: deprecated\n",
            ["p.yaml:47: Api x: sunset is required for a deprecated Api, and only for one"],
            id="deprecated-without-sunset",
        ),
        pytest.param(
            "kind: Api\nname: x\ntitle: X\nversion: '1'\nroutes: [a]\nopenapi: missing.json\n",
            ["p.yaml:52: Api x: openapi: file 'missing.json' not found"],
            id="openapi-missing",
        ),
        pytest.param(
            CONSUMER + "subscriptions: [{api: shop, plan: platinum, status: approved}]\n",
            [
                "p.yaml:51: Consumer acme: subscriptions[0].plan: Api shop offers no plan 'platinum'"
                " (offered: gold)"
            ],
            id="subscription-plan-not-offered",
        ),
        pytest.param(
            CONSUMER + "subscriptions: [{api: nope, status: approved}]\n",
            ["p.yaml:51: Consumer acme: subscriptions[0].api 'nope' is not an Api"],
            id="subscription-api-missing",
        ),
        pytest.param(
            CONSUMER + "subscriptions: [{api: shop, route: a, status: approved}]\n",
            ["p.yaml:51: Consumer acme: subscriptions[0]: each subscription has exactly one of route, api"],
            id="subscription-route-and-api",
        ),
        pytest.param(
            CONSUMER + "subscriptions: [{route: a, plan: gold, status: approved}]\n",
            [
                "p.yaml:51: Consumer acme: subscriptions[0]: plan goes with api:"
                " a route subscription takes the Consumer's plan"
            ],
            id="route-subscription-with-plan",
        ),
        pytest.param(
            "kind: Portal\nname: one\nadmins: [{consumer: ghost}]\n---\nkind: Portal\nname: two\n",
            [
                "p.yaml:49: Portal one: admins[0].consumer 'ghost' is not a Consumer",
                "p.yaml:52: Portal two: only one Portal is allowed, first defined at p.yaml:48",
            ],
            id="portal-admin-missing-and-two-portals",
        ),
        pytest.param(
            "kind: Portal\nname: p\nsignup: maybe\noidc: {issuer: ftp://x, client_id: c}\n",
            [
                "p.yaml:49: Portal p: signup: must be one of 'open', 'approval' or 'closed', got 'maybe'",
                "p.yaml:50: Portal p: oidc.issuer: 'ftp://x' does not match the pattern ^https?://",
            ],
            id="portal-fields",
        ),
    ],
)
def test_catalog_errors_at_file_and_line(tmp_path: Path, extra: str, expected: list[str]) -> None:
    assert problems(tmp_path, extra) == expected


def test_example_catalog_validates() -> None:
    policy = load_policies(Path(__file__).resolve().parent.parent / "policies")
    assert set(policy.apis) == {"partner-orders", "partner-catalog"}
    assert policy.portal is not None and policy.portal.is_admin(consumer="portal-admin")
