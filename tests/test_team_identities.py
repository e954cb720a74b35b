"""Team Consumers named by a JWT subject or a certificate: matched by the name their team wrote.

A Consumer in a team's folder is ``<team>~<name>`` in the policy; a token's ``sub`` or a client
certificate names it ``<name>``. Through the decision core: on a team's route the team's own
Consumer of that name is found (its roles apply), then the platform's; a scoped subject never
matches, and another team's Consumer of the same name is never lent.
"""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path

from authz_support import ISSUER, Signer
from waypost.filters.authz.core import AuthRequest, AuthzCore, Decision
from waypost.policies import load_policies

PLATFORM = """\
kind: Gateway
name: edge
port: 8080
---
kind: Service
name: s
endpoints: ["10.0.0.1:80"]
---
kind: Route
name: open
gateway: edge
match: {prefix: /open}
backend: s
auth: tokens
---
kind: AuthPolicy
name: tokens
shared: true
identity: [{jwt: {issuer: "ISSUER", jwks: keys/jwks.json, audiences: [orders]}}, {mtls: {}}]
rules: [{allow: {roles: [ops]}}]
---
kind: Consumer
name: platform-ops
roles: [ops]
---
"""
TEAM = """\
kind: Team
name: {team}
folders: [teams/{team}]
gateways: [{{gateway: edge, hosts: [{{host: '*', path_prefix: /{team}}}]}}]
upstreams: [10.0.0.0/8]
"""
ROUTE = """\
kind: Route
name: orders
gateway: edge
match: {{prefix: /{team}/orders}}
backend: s
auth: tokens
---
kind: Service
name: s
endpoints: ["10.0.0.2:80"]
---
kind: Consumer
name: {consumer}
roles: [{role}]
"""


def policy(tmp_path: Path, signer: Signer) -> AuthzCore:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "jwks.json").write_text(signer.jwks())
    platform = (
        PLATFORM.replace("ISSUER", ISSUER)
        + TEAM.format(team="payments")
        + "---\n"
        + TEAM.format(team="search")
    )
    (tmp_path / "platform.yaml").write_text(platform)
    for team, role in (("payments", "ops"), ("search", "viewer")):
        (tmp_path / "teams" / team).mkdir(parents=True)
        # Both teams have a Consumer `shop`; only payments' has the role the rule asks for.
        (tmp_path / "teams" / team / "p.yaml").write_text(ROUTE.format(team=team, consumer="shop", role=role))
    core = AuthzCore()
    core.apply(load_policies(tmp_path))
    return core


def decide(core: AuthzCore, route: str, **request: object) -> Decision:
    headers = request.pop("headers", {})
    result = core.decide(
        AuthRequest(route=route, policies=(), method="GET", path="/x", headers=headers, **request)
    )  # type: ignore[arg-type]
    return asyncio.run(result) if inspect.isawaitable(result) else result  # type: ignore[arg-type, return-value]


def test_a_jwt_subject_names_the_routes_teams_consumer(tmp_path: Path) -> None:
    signer = Signer.new()
    core = policy(tmp_path, signer)

    def bearer(subject: str) -> dict[str, str]:
        return {"authorization": "Bearer " + signer.token(sub=subject)}

    allowed = decide(core, "payments~orders", headers=bearer("shop"))
    assert (allowed.status, allowed.consumer) == (200, "payments~shop")
    assert dict(allowed.headers)["x-waypost-consumer"] == "payments~shop"
    # search's `shop` is search's Consumer (no ops role): payments' roles are not lent to it.
    assert decide(core, "search~orders", headers=bearer("shop")).status == 403
    # A scoped subject is not a declared identity: no Consumer, no role.
    assert decide(core, "payments~orders", headers=bearer("payments~shop")).status == 403
    # Platform Consumers are found on team routes too, and team Consumers not on platform routes.
    assert decide(core, "payments~orders", headers=bearer("platform-ops")).allowed
    assert decide(core, "open", headers=bearer("shop")).status == 403


def test_a_certificate_names_the_routes_teams_consumer(tmp_path: Path) -> None:
    core = policy(tmp_path, Signer.new())
    assert decide(core, "payments~orders", principal="shop").consumer == "payments~shop"
    assert decide(core, "payments~orders", principal="CN=shop,O=Shop Inc").allowed
    assert decide(core, "search~orders", principal="CN=shop,O=Shop Inc").status == 403
