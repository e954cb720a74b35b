"""The portal's API in process (httpx over ASGI) against a real git upstream: every action's
commit (author, files, YAML that validates), review branches, approvals, CSRF, sign-in limits,
usage read through the Limiter, and no key anywhere in git."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from support.gitrepo import GitRepo
from support.portal import ADMIN_KEY, seed_upstream
from waypost.filters.ratelimit.limiter import Limiter, check_consumer_quota
from waypost.filters.ratelimit.store import MemoryStore
from waypost.policies.loader import load_policies
from waypost.portal.app import create_app
from waypost.portal.repo import PolicyRepo
from waypost.portal.service import PortalService


@dataclass
class Portal:
    client: httpx.AsyncClient
    service: PortalService
    upstream: GitRepo
    seed: GitRepo
    tmp: Path

    def fetch(self) -> GitRepo:
        self.seed.git("fetch", "--quiet", "--prune", "origin")
        return self.seed

    def head(self, branch: str = "main") -> str:
        return self.upstream.git("rev-parse", branch)

    def show(self, path: str, ref: str = "main") -> str:
        return self.upstream.git("show", f"{ref}:policies/{path}")

    async def new_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=self.client._transport, base_url="http://portal.test")


async def csrf(client: httpx.AsyncClient) -> str:
    answer = await client.get("/api/session")
    client.headers["x-csrf-token"] = answer.json()["csrf"]
    return str(answer.json()["csrf"])


async def signed_in(client: httpx.AsyncClient, key: str) -> httpx.AsyncClient:
    await csrf(client)
    answer = await client.post("/api/session", json={"key": key})
    assert answer.status_code == 200, answer.text
    return client


@pytest.fixture
async def portal(tmp_path: Path) -> AsyncIterator[Portal]:
    upstream, seed = seed_upstream(tmp_path)
    repo = PolicyRepo(str(upstream.path), tmp_path / "work", subdir="policies")
    repo.open()
    service = PortalService(repo, Limiter(MemoryStore()), owns_limiter=True)
    await service.policy(fresh=True)
    app = create_app(service, secret="test-secret")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://portal.test"
    ) as client:
        yield Portal(client, service, upstream, seed, tmp_path)


async def test_catalog_pages_openapi_and_swagger_assets(portal: Portal) -> None:
    client = portal.client
    apis = (await client.get("/api/apis")).json()
    assert [a["name"] for a in apis] == ["orders"]
    plans = {p["name"]: p for p in apis[0]["plans"]}
    assert plans["free"]["limits"] == [{"policy": "quota", "requests": 5, "per": "minute"}]
    assert plans["gold"]["approval"] is True and plans["free"]["approval"] is False
    page = (await client.get("/apis/orders")).text
    assert "<strong>Orders</strong>" in page and "<script>alert(1)</script>" not in page
    assert (await client.get("/api/apis/orders/openapi")).json()["paths"]
    spec = (await client.get("/api/openapi.json")).json()
    assert "/api/subscriptions" in spec["paths"] and "/api/signup" in spec["paths"]
    assert "/static/swagger-ui/swagger-ui-bundle.js" in (await client.get("/api/docs")).text
    assert "/static/swagger-ui/swagger-ui-bundle.js" in (await client.get("/apis/orders/reference")).text
    bundle = await client.get("/static/swagger-ui/swagger-ui-bundle.js")
    assert bundle.status_code == 200 and len(bundle.content) > 100_000
    assert (await client.get("/api/apis/nope")).status_code == 404


async def test_signup_key_subscription_each_a_commit_authored_as_the_user(portal: Portal) -> None:
    client = portal.client
    await csrf(client)
    before = portal.head()
    answer = await client.post("/api/signup", json={"name": "acme", "email": "dev@acme.example"})
    assert answer.status_code == 200, answer.text
    first_key = answer.json()["key"]
    assert answer.json()["status"] == "active"
    log = portal.upstream.git("log", "--format=%an <%ae>|%cn|%s", f"{before}..main").splitlines()
    assert log == ["acme <dev@acme.example>|waypost portal|Sign up acme"]
    document = yaml.safe_load(portal.show("portal/consumers/acme.yaml"))
    assert document["api_keys"] == ["sha256:" + hashlib.sha256(first_key.encode()).hexdigest()]
    assert document["subscriptions"] == []

    # Signed in as acme by the sign-up: a second key, a free subscription (no approval needed).
    second = (await client.post("/api/keys")).json()["key"]
    free = await client.post("/api/subscriptions", json={"api": "orders", "plan": "free"})
    assert free.json()["status"] == "approved"
    document = yaml.safe_load(portal.show("portal/consumers/acme.yaml"))
    assert document["subscriptions"] == [{"api": "orders", "plan": "free", "status": "approved"}]
    assert len(document["api_keys"]) == 2
    authors = set(portal.upstream.git("log", "--format=%an", f"{before}..main").splitlines())
    assert authors == {"acme"}

    # Gold needs an admin: a review branch, main untouched.
    head = portal.head()
    gold = await client.post("/api/subscriptions", json={"api": "orders", "plan": "gold"})
    assert gold.json()["status"] == "pending"
    assert portal.head() == head
    branches = portal.upstream.git("branch", "--list", "portal/review/*").split()
    assert len(branches) == 1 and branches[0].startswith("portal/review/sub-acme-orders-")
    me = (await client.get("/api/me")).json()
    assert [p["subject"] for p in me["pending"]] == ["Subscribe acme to orders on plan gold"]
    assert {k["prefix"][:4] for k in me["keys"]} == {"wpk_"}

    admin = await signed_in(await portal.new_client(), ADMIN_KEY)
    pending = (await admin.get("/api/admin/requests")).json()["pending"]
    assert len(pending) == 1 and "key_hash" not in pending[0]["request"]
    assert (await client.post(f"/api/admin/requests/{pending[0]['id']}/approve")).status_code == 403
    approved = await admin.post(f"/api/admin/requests/{pending[0]['id']}/approve")
    assert approved.status_code == 200, approved.text
    assert portal.upstream.git("branch", "--list", "portal/review/*") == ""
    last = portal.upstream.git("log", "-1", "--format=%an|%s", "main")
    assert (
        last == "admin|Approve: Subscribe acme to orders on plan gold (requested by acme <dev@acme.example>)"
    )
    document = yaml.safe_load(portal.show("portal/consumers/acme.yaml"))
    assert document["subscriptions"] == [{"api": "orders", "plan": "gold", "status": "approved"}]

    # Every commit validates, and no key is anywhere in the history.
    clone = GitRepo.clone(portal.upstream.path, portal.tmp / "check")
    load_policies(clone.path / "policies")
    history = portal.upstream.git("log", "-p", "--all")
    for key in (first_key, second):
        assert key not in history
        assert key.split("_", 2)[2] not in history  # the random part: it may hold "_" too

    # Rotate and revoke: the old key's hash goes, the new one comes.
    me = (await client.get("/api/me")).json()
    old_id = me["keys"][0]["id"]
    rotated = await client.post(f"/api/keys/{old_id}/rotate")
    assert rotated.status_code == 200
    assert f"sha256:{old_id}" not in portal.show("portal/consumers/acme.yaml")
    assert (await client.delete(f"/api/keys/{old_id}")).status_code == 404


async def test_reject_is_a_commit_and_closes_the_branch(portal: Portal) -> None:
    client = portal.client
    await csrf(client)
    await client.post("/api/signup", json={"name": "beta-co"})
    await client.post("/api/subscriptions", json={"api": "orders", "plan": "gold"})
    admin = await signed_in(await portal.new_client(), ADMIN_KEY)
    [pending] = (await admin.get("/api/admin/requests")).json()["pending"]
    head = portal.head()
    assert (await admin.post(f"/api/admin/requests/{pending['id']}/reject")).status_code == 200
    assert portal.upstream.git("log", "--format=%an|%s", f"{head}..main").startswith(
        "admin|Reject: Subscribe"
    )
    assert portal.upstream.git("diff", head, "main") == ""
    assert portal.upstream.git("branch", "--list", "portal/review/*") == ""
    assert (await admin.post(f"/api/admin/requests/{pending['id']}/approve")).status_code == 404


async def test_merging_a_review_branch_by_hand_lands_it(portal: Portal) -> None:
    client = portal.client
    await csrf(client)
    await client.post("/api/signup", json={"name": "handmerge"})
    await client.post("/api/subscriptions", json={"api": "orders", "plan": "gold"})
    seed = portal.fetch()
    [branch] = seed.git("branch", "-r", "--list", "origin/portal/review/*").split()
    seed.git("checkout", "--quiet", "main")
    seed.git("pull", "--quiet", "--ff-only", "origin", "main")
    seed.git("merge", "--quiet", "--no-edit", branch)
    seed.git("push", "--quiet", "origin", "main")
    me = (await client.get("/api/me")).json()
    assert me["pending"] == []
    await portal.service.policy(fresh=True)
    me = (await client.get("/api/me")).json()
    assert me["subscriptions"][0]["status"] == "approved"


async def test_signup_waiting_for_approval(tmp_path: Path) -> None:
    upstream, _ = seed_upstream(tmp_path, signup="approval")
    repo = PolicyRepo(str(upstream.path), tmp_path / "work", subdir="policies")
    repo.open()
    service = PortalService(repo)
    app = create_app(service, secret="s")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://p") as client:
        await csrf(client)
        head = upstream.git("rev-parse", "main")
        answer = await client.post("/api/signup", json={"name": "waiting"})
        assert answer.json()["status"] == "pending"
        assert upstream.git("rev-parse", "main") == head
        assert (await client.get("/api/me")).json()["status"] == "pending"
        admin = await signed_in(
            httpx.AsyncClient(transport=client._transport, base_url="http://p"), ADMIN_KEY
        )
        [pending] = (await admin.get("/api/admin/requests")).json()["pending"]
        assert pending["id"] == "signup-waiting"
        assert (await admin.post("/api/admin/requests/signup-waiting/approve")).status_code == 200
        assert (await client.get("/api/me")).json()["status"] == "active"


async def test_usage_and_remaining_quota_come_from_the_limiter(portal: Portal) -> None:
    client = portal.client
    await csrf(client)
    await client.post("/api/signup", json={"name": "counted"})
    await client.post("/api/subscriptions", json={"api": "orders", "plan": "free"})
    assert portal.service.limiter is not None
    for _ in range(3):
        await check_consumer_quota(portal.service.limiter, "orders", "counted", "free")
    [subscription] = (await client.get("/api/me")).json()["subscriptions"]
    [route] = subscription["routes"]
    [limit] = route["limits"]
    assert (limit["limit"], limit["used"], limit["remaining"], limit["per"]) == (5, 3, 2, "minute")
    # Reading counted nothing.
    [again] = (await client.get("/api/me")).json()["subscriptions"][0]["routes"][0]["limits"]
    assert again["used"] == 3


async def test_csrf_and_sign_in_rate_limit(portal: Portal) -> None:
    client = portal.client
    head = portal.head()
    no_token = await client.post("/api/signup", json={"name": "forged"})
    assert no_token.status_code == 403 and "CSRF" in no_token.json()["error"]
    await csrf(client)
    client.headers["x-csrf-token"] = "wrong"
    assert (await client.post("/api/signup", json={"name": "forged"})).status_code == 403
    assert portal.head() == head
    await csrf(client)
    statuses = [
        (await client.post("/api/session", json={"key": f"guess-{i}"})).status_code for i in range(12)
    ]
    assert statuses[:10] == [401] * 10 and statuses[10:] == [429, 429]
    answer = await client.post("/api/session", json={"key": ADMIN_KEY})
    assert answer.status_code == 429 and answer.headers["retry-after"]


async def test_revoked_key_ends_its_session(portal: Portal) -> None:
    client = portal.client
    await csrf(client)
    key = (await client.post("/api/signup", json={"name": "shortlived"})).json()["key"]
    other = await signed_in(await portal.new_client(), key)
    assert (await other.get("/api/me")).status_code == 200
    key_id = hashlib.sha256(key.encode()).hexdigest()
    admin = await signed_in(await portal.new_client(), ADMIN_KEY)
    assert (await admin.delete(f"/api/admin/consumers/shortlived/keys/{key_id}")).status_code == 200
    assert (await other.get("/api/me")).status_code == 401


async def test_two_replicas_committing_at_once_lose_nothing(portal: Portal) -> None:
    replicas = []
    for index in range(2):
        repo = PolicyRepo(str(portal.upstream.path), portal.tmp / f"replica{index}", subdir="policies")
        repo.open()
        replicas.append(PortalService(repo))
    from waypost.portal.service import User

    async def sign_up(service: PortalService, name: str) -> None:
        await service.signup(User(consumer=None), name, None)

    names = [f"team-{i}" for i in range(6)]
    await asyncio.gather(*(sign_up(replicas[i % 2], name) for i, name in enumerate(names)))
    listed = portal.upstream.git("ls-tree", "--name-only", "main", "policies/portal/consumers/").split()
    assert {Path(p).stem for p in listed} >= set(names)
    clone = GitRepo.clone(portal.upstream.path, portal.tmp / "after")
    assert set(names) <= set(load_policies(clone.path / "policies").consumers)


async def test_a_failed_push_is_shown_as_failed(portal: Portal) -> None:
    client = portal.client
    await csrf(client)
    hook = portal.upstream.path / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho refused by policy >&2\nexit 1\n")
    hook.chmod(0o755)
    head = portal.head()
    answer = await client.post("/api/signup", json={"name": "unlucky"})
    assert answer.status_code == 502 and "not saved" in answer.json()["error"]
    assert portal.head() == head
    hook.unlink()
    admin = await signed_in(await portal.new_client(), ADMIN_KEY)
    failed = (await admin.get("/api/admin/requests")).json()["failed"]
    assert [f["action"] for f in failed] == ["Sign up unlucky"]
    assert "refused by policy" in failed[0]["error"]


def _oversized(n: int) -> str:
    return "x" * n


BAD_BODIES = [
    pytest.param("/api/signup", {}, id="signup-missing"),
    pytest.param("/api/signup", {"name": _oversized(64)}, id="signup-name-oversized"),
    pytest.param("/api/signup", {"name": "bad name!"}, id="signup-name-malformed"),
    pytest.param("/api/signup", {"name": "ok", "email": "not-an-email"}, id="signup-email-malformed"),
    pytest.param("/api/signup", {"name": "ok", "extra": 1}, id="signup-unknown-field"),
    pytest.param("/api/signup", {"name": ["list"]}, id="signup-name-wrong-type"),
    pytest.param("/api/session", {}, id="session-missing"),
    pytest.param("/api/session", {"key": _oversized(201)}, id="session-key-oversized"),
    pytest.param("/api/session", {"key": 7}, id="session-key-wrong-type"),
    pytest.param("/api/subscriptions", {}, id="subscribe-missing"),
    pytest.param("/api/subscriptions", {"api": "orders", "plan": "platinum"}, id="subscribe-unknown-plan"),
    pytest.param("/api/subscriptions", {"api": "nope"}, id="subscribe-unknown-api"),
    pytest.param("/api/subscriptions", {"api": _oversized(100)}, id="subscribe-api-oversized"),
    pytest.param("/api/console", {"api": "orders"}, id="console-missing-path"),
    pytest.param("/api/console", {"api": "orders", "path": "no-slash"}, id="console-path-malformed"),
    pytest.param(
        "/api/console", {"api": "orders", "path": "/" + _oversized(2001)}, id="console-path-oversized"
    ),
    pytest.param("/api/console", {"api": "orders", "path": "/", "method": "TRACE"}, id="console-bad-method"),
    pytest.param("/api/keys/zz/rotate", None, id="rotate-malformed-id"),
    pytest.param("/api/admin/requests/..%2Fmain/approve", None, id="approve-malformed-id"),
    pytest.param("/api/admin/requests/x/maybe", None, id="verdict-malformed"),
]


@pytest.mark.parametrize(("path", "body"), BAD_BODIES)
async def test_bad_input_gets_a_4xx_json_error_and_changes_nothing(
    portal: Portal, path: str, body: object
) -> None:
    client = portal.client
    await csrf(client)
    await client.post("/api/signup", json={"name": "bad-input-user"})
    admin = await signed_in(await portal.new_client(), ADMIN_KEY)
    head, branches = portal.head(), portal.upstream.git("branch", "--list")
    for who in (client, admin):
        answer = await who.post(path, json=body) if body is not None else await who.post(path)
        assert 400 <= answer.status_code < 500, (answer.status_code, answer.text)
        assert "error" in answer.json()
    assert portal.head() == head and portal.upstream.git("branch", "--list") == branches


@pytest.mark.parametrize(
    ("content", "headers", "status"),
    [
        pytest.param(b"{not json", {"content-type": "application/json"}, 422, id="malformed-json"),
        pytest.param(b"\xff\xfe", {"content-type": "application/json"}, 422, id="not-utf8"),
        pytest.param(
            json.dumps({"name": "x" * 300_000}).encode(),
            {"content-type": "application/json"},
            413,
            id="body-oversized",
        ),
        pytest.param(
            b"name=form", {"content-type": "application/x-www-form-urlencoded"}, 422, id="form-not-json"
        ),
    ],
)
async def test_malformed_bodies(portal: Portal, content: bytes, headers: dict[str, str], status: int) -> None:
    client = portal.client
    await csrf(client)
    head = portal.head()
    answer = await client.post("/api/signup", content=content, headers=headers)
    assert answer.status_code == status and "error" in answer.json()
    assert portal.head() == head


async def test_endpoints_need_sign_in_or_admin(portal: Portal) -> None:
    client = portal.client
    await csrf(client)
    assert (await client.get("/api/me")).status_code == 401
    assert (await client.post("/api/keys")).status_code == 401
    assert (await client.get("/api/admin/requests")).status_code == 401
    await client.post("/api/signup", json={"name": "plain"})
    assert (await client.get("/api/admin/requests")).status_code == 403
    assert (await client.get("/admin")).status_code == 403
    assert (await client.delete("/api/admin/consumers/admin/subscriptions/orders")).status_code == 403


async def test_a_human_edit_in_between_is_kept_and_an_invalid_tip_refuses_changes(portal: Portal) -> None:
    client = portal.client
    await csrf(client)
    await client.post("/api/signup", json={"name": "edited"})
    await client.post("/api/subscriptions", json={"api": "orders", "plan": "gold"})
    # A platform engineer edits the same file on main while the request waits.
    seed = portal.fetch()
    seed.git("checkout", "--quiet", "main")
    seed.git("reset", "--quiet", "--hard", "origin/main")
    path = "policies/portal/consumers/edited.yaml"
    seed.write(
        path, (seed.path / path).read_text().replace("kind: Consumer\n", "kind: Consumer\nroles: [partner]\n")
    )
    seed.commit_all("Give edited the partner role")
    seed.git("push", "--quiet", "origin", "main")
    admin = await signed_in(await portal.new_client(), ADMIN_KEY)
    [pending] = (await admin.get("/api/admin/requests")).json()["pending"]
    assert (await admin.post(f"/api/admin/requests/{pending['id']}/approve")).status_code == 200
    document = yaml.safe_load(portal.show("portal/consumers/edited.yaml"))
    assert document["roles"] == ["partner"]
    assert document["subscriptions"] == [{"api": "orders", "plan": "gold", "status": "approved"}]

    # Someone pushes a broken policy to main: the portal refuses to build on it, and says why.
    seed.git("pull", "--quiet", "--ff-only", "origin", "main")
    seed.write("policies/broken.yaml", "kind: Route\nname: broken\n")
    seed.commit_all("broken")
    seed.git("push", "--quiet", "origin", "main")
    head = portal.head()
    answer = await client.post("/api/keys")
    assert answer.status_code == 409
    assert "policies/broken.yaml:1: Route broken: field 'gateway' is required" in answer.json()["error"]
    assert portal.head() == head


async def test_admin_revokes_a_subscription_and_reads_the_log(portal: Portal) -> None:
    client = portal.client
    await csrf(client)
    await client.post("/api/signup", json={"name": "revokee"})
    await client.post("/api/subscriptions", json={"api": "orders", "plan": "free"})
    admin = await signed_in(await portal.new_client(), ADMIN_KEY)
    answer = await admin.delete("/api/admin/consumers/revokee/subscriptions/orders")
    assert answer.status_code == 200
    document = yaml.safe_load(portal.show("portal/consumers/revokee.yaml"))
    assert document["subscriptions"] == [{"api": "orders", "plan": "free", "status": "revoked"}]
    assert (await admin.delete("/api/admin/consumers/revokee/subscriptions/nope")).status_code == 404
    log = (await admin.get("/api/admin/log")).json()
    assert [(e["author"], e["subject"]) for e in log[:3]] == [
        ("admin", "Revoke revokee's subscription to orders"),
        ("revokee", "Subscribe revokee to orders on plan free"),
        ("revokee", "Sign up revokee"),
    ]
    # A Consumer written by hand outside portal/consumers/ is read-only for the portal.
    seed = portal.fetch()
    seed.git("checkout", "--quiet", "main")
    seed.git("reset", "--quiet", "--hard", "origin/main")
    seed.write(
        "policies/handwritten.yaml",
        "kind: Consumer\nname: handwritten\nsubscriptions: [{api: orders, plan: free, status: approved}]\n",
    )
    seed.commit_all("a hand-written consumer")
    seed.git("push", "--quiet", "origin", "main")
    await portal.service.policy(fresh=True)
    head = portal.head()
    answer = await admin.delete("/api/admin/consumers/handwritten/subscriptions/orders")
    assert answer.status_code == 409 and "not managed by the portal" in answer.json()["error"]
    assert portal.head() == head


@pytest.mark.parametrize(
    ("method", "path"),
    [
        pytest.param("DELETE", "/api/keys/not-a-hash", id="revoke-key-malformed"),
        pytest.param("DELETE", "/api/keys/" + "0" * 64, id="revoke-key-unknown"),
        pytest.param(
            "DELETE", "/api/admin/consumers/bad name/keys/" + "0" * 64, id="admin-revoke-key-bad-name"
        ),
        pytest.param("DELETE", "/api/admin/consumers/nobody/keys/" + "0" * 64, id="admin-revoke-key-unknown"),
        pytest.param(
            "DELETE", "/api/admin/consumers/admin/subscriptions/" + "x" * 64, id="admin-revoke-sub-long"
        ),
        pytest.param("DELETE", "/api/admin/consumers/admin/subscriptions/orders", id="admin-revoke-sub-none"),
        pytest.param("POST", "/api/keys/" + "0" * 64 + "/rotate", id="rotate-unknown"),
        pytest.param("GET", "/api/apis/" + "x" * 100, id="api-name-oversized"),
        pytest.param("GET", "/api/apis/bad%20name/openapi", id="api-name-malformed"),
        pytest.param("PUT", "/api/signup", id="wrong-method"),
    ],
)
async def test_bad_paths_get_a_4xx_json_error_and_change_nothing(
    portal: Portal, method: str, path: str
) -> None:
    client = portal.client
    await csrf(client)
    await client.post("/api/signup", json={"name": "path-user"})
    admin = await signed_in(await portal.new_client(), ADMIN_KEY)
    head = portal.head()
    for who in (client, admin):
        answer = await who.request(method, path)
        assert 400 <= answer.status_code < 500, (answer.status_code, answer.text)
        assert "error" in answer.json()
    assert portal.head() == head
