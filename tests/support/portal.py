"""A policy repository for portal tests: a bare upstream seeded with a small catalog.

The catalog: Route ``orders`` (API keys, RateLimitPolicy ``quota`` with plans free and gold),
Api ``orders`` (free granted at once, gold approved by an admin), Portal (open sign-up, admin
Consumer ``admin`` whose key is :data:`ADMIN_KEY`). ``backend_port`` lets an e2e test point the
Service at a real echo backend.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from support.gitrepo import GitRepo

__all__ = ["ADMIN_KEY", "CATALOG", "seed_upstream"]

ADMIN_KEY = "admin-test-key-0123456789"
_ADMIN_HASH = "sha256:" + hashlib.sha256(ADMIN_KEY.encode()).hexdigest()

CATALOG = """\
kind: Gateway
name: public
port: {gateway_port}
address: 127.0.0.1
---
kind: Service
name: orders
endpoints: ["127.0.0.1:{backend_port}"]
---
kind: Route
name: orders
gateway: public
match: {{prefix: /orders}}
backend: orders
auth: keys
rate_limit: quota
---
kind: AuthPolicy
name: keys
identity: [{{api_key: {{header: x-api-key}}}}]
---
kind: RateLimitPolicy
name: quota
limits: [{{by: consumer, requests: 100, per: minute}}]
plans:
  free: {{requests: 5, per: minute}}
  gold: {{requests: 50, per: minute}}
---
kind: Api
name: orders
title: Orders
version: "1.0"
summary: Orders, one JSON document each.
description: "**Orders** API. <script>alert(1)</script>"
routes: [orders]
openapi: openapi.json
plans:
  free: {{approval: false}}
  gold: {{approval: true}}
---
kind: Portal
name: portal
title: Test portal
signup: {signup}
admins: [{{consumer: admin}}]
gateway_url: http://127.0.0.1:{gateway_port}
"""

ADMIN = f"""\
kind: Consumer
name: admin
api_keys: ["{_ADMIN_HASH}"]
subscriptions: []
"""

OPENAPI = (
    '{"openapi": "3.0.3", "info": {"title": "Orders", "version": "1.0"},'
    ' "paths": {"/orders/{id}": {"get": {"responses": {"200": {"description": "an order"}}}}}}\n'
)


def seed_upstream(
    tmp_path: Path,
    *,
    gateway_port: int = 1,
    backend_port: int = 1,
    signup: str = "open",
    oidc_issuer: str | None = None,
) -> tuple[GitRepo, GitRepo]:
    """(bare upstream, a clone of it for the test to look at), policies under ``policies/``.
    With ``oidc_issuer``, the Portal signs in through it (client ``portal``) and the subject
    ``admin-sub`` is an admin."""
    origin = GitRepo.init(tmp_path / "upstream.git", bare=True)
    seed = GitRepo.clone(origin.path, tmp_path / "seed")
    catalog = CATALOG.format(gateway_port=gateway_port, backend_port=backend_port, signup=signup)
    if oidc_issuer is not None:
        catalog = catalog.replace(
            "admins: [{consumer: admin}]", "admins: [{consumer: admin}, {subject: admin-sub}]"
        )
        catalog += f"oidc: {{issuer: '{oidc_issuer}', client_id: portal}}\n"
    seed.write("policies/catalog.yaml", catalog)
    seed.write("policies/portal/consumers/admin.yaml", ADMIN)
    seed.write("policies/openapi.json", OPENAPI)
    seed.commit_all("seed")
    seed.git("push", "--quiet", "origin", "HEAD:main")
    return origin, seed
