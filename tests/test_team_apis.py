"""A Team's Apis: scoped like its other documents, over its own Routes, within its plans; how
Consumers subscribe to them (a team's by name, the platform's by ``<team>~<name>``)."""

from __future__ import annotations

from pathlib import Path

from test_teams import errors, repo, team_docs, write
from waypost.policies import load_policies

PLANS = """\
---
kind: RateLimitPolicy
name: quota
plans: {gold: {requests: 10, per: minute}}
---
kind: Route
name: quoted
gateway: edge
hosts: [pay.example.com]
match: {prefix: /quoted}
backend: orders
auth: keys
rate_limit: quota
"""
API = """\
---
kind: Api
name: catalog
title: Orders
version: "1"
routes: [{routes}]
plans: {{gold: {{approval: false}}}}
"""


def payments(routes: str = "orders, quoted", extra: str = "") -> str:
    return (
        team_docs("payments", "1", "api.example.com", "/payments") + PLANS + API.format(routes=routes) + extra
    )


def test_a_teams_api_is_scoped_and_covers_its_own_routes(tmp_path: Path) -> None:
    consumer = (
        "---\nkind: Consumer\nname: shop\nsubscriptions: [{api: catalog, plan: gold, status: approved}]\n"
    )
    directory = repo(tmp_path, payments=payments(extra=consumer))
    platform = (directory / "platform.yaml").read_text() + (
        "---\nkind: Consumer\nname: partner\nsubscriptions: [{api: payments~catalog, status: approved}]\n"
    )
    policy = load_policies(write(directory, {"platform.yaml": platform}))
    assert policy.apis["payments~catalog"].routes == ("payments~orders", "payments~quoted")
    assert policy.consumers["payments~shop"].subscriptions is not None
    assert policy.consumers["payments~shop"].subscriptions[0].api == "payments~catalog"
    assert policy.consumers["partner"].subscriptions is not None


def test_a_teams_api_stays_in_its_lane(tmp_path: Path) -> None:
    # Another team's route, and a plan the team was not granted.
    api = payments(routes="orders").replace("gold", "platinum") + API.replace("catalog", "theirs").format(
        routes="orders"
    )
    search = team_docs("search", "2", "api.example.com", "/search") + (
        "---\nkind: Consumer\nname: c\nsubscriptions: [{api: payments~catalog, status: approved}]\n"
    )
    found = errors(repo(tmp_path, payments=api, search=search))
    assert any(
        "Api catalog: plans.platinum: team payments: plan 'platinum' is not granted (grant lacking: plans)"
        in e
        for e in found
    ), found
    assert any(
        "Consumer c: subscriptions[0].api: team search: 'payments~catalog' is an Api of another team" in e
        for e in found
    ), found
    # search's Api naming payments' route `quoted` (search has no route of that name).
    cross = repo(tmp_path / "cross", payments=payments(), search=search.split("---\nkind: Consumer")[0])
    write(cross, {"teams/search/api.yaml": API.format(routes="quoted").replace("gold", "x").lstrip("-\n")})
    assert (
        "teams/search/api.yaml:5: Api catalog: routes[0]: team search: 'quoted' is a Route of team"
        " payments: a team may refer only to its own documents and shared ones"
    ) in errors(cross)
