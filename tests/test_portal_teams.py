"""The portal over a repository with a Team: the team's Api in the catalog (and only it under
``?team=``), and a developer subscribing to it: a review branch (git refuses ``~`` in branch
names), approved into ``api: payments~catalog`` that validates."""

from __future__ import annotations

import yaml

from support.gitrepo import GitRepo
from support.portal import ADMIN_KEY
from test_portal_api import Portal, csrf, portal, signed_in
from waypost.policies.loader import load_policies

__all__ = ["portal"]  # the fixture, shared with test_portal_api

TEAM = """\
kind: Team
name: payments
folders: [teams/payments]
gateways: [{gateway: public, hosts: [{host: '*', path_prefix: /payments}]}]
upstreams: [127.0.0.0/8]
"""
DOCUMENTS = """\
kind: Service
name: app
endpoints: ["127.0.0.1:1"]
---
kind: Route
name: pay
gateway: public
match: {prefix: /payments}
backend: app
---
kind: Api
name: catalog
title: Payments
version: "1"
routes: [pay]
"""


async def test_a_developer_subscribes_to_a_teams_api(portal: Portal) -> None:
    seed = portal.seed
    seed.git("pull", "--quiet")
    seed.write("policies/team.yaml", TEAM)
    seed.write("policies/teams/payments/docs.yaml", DOCUMENTS)
    seed.commit_all("team payments")
    seed.git("push", "--quiet", "origin", "HEAD")
    await portal.service.policy(fresh=True)
    client = portal.client
    assert [a["name"] for a in (await client.get("/api/apis", params={"team": "payments"})).json()] == [
        "payments~catalog"
    ]
    assert (await client.get("/apis/payments~catalog")).status_code == 200

    await csrf(client)
    assert (await client.post("/api/signup", json={"name": "acme"})).status_code == 200
    pending = await client.post("/api/subscriptions", json={"api": "payments~catalog"})
    assert pending.status_code == 200 and pending.json()["status"] == "pending", pending.text
    branches = portal.upstream.git("branch", "--list", "portal/review/*").split()
    assert len(branches) == 1 and branches[0].startswith("portal/review/sub-acme-payments.catalog-")

    admin = await signed_in(await portal.new_client(), ADMIN_KEY)
    request = (await admin.get("/api/admin/requests")).json()["pending"][0]
    assert (await admin.post(f"/api/admin/requests/{request['id']}/approve")).status_code == 200
    document = yaml.safe_load(portal.show("portal/consumers/acme.yaml"))
    assert document["subscriptions"] == [{"api": "payments~catalog", "status": "approved"}]
    clone = GitRepo.clone(portal.upstream.path, portal.tmp / "check")
    assert load_policies(clone.path / "policies").consumers["acme"].subscriptions is not None
