"""Portal sign-in through OpenID Connect (authorization-code flow with PKCE) against a real
provider: panva's ``oidc-provider`` from npm, pinned by tests/oidc/package-lock.json, installed
with ``npm ci`` into a directory the test owns (never committed), started on loopback.

The test plays the browser: follows the redirects, submits the provider's login and consent
forms, lands on the portal's callback. A new subject signs up (its Consumer records the
subject); signing in again finds that Consumer; a subject named in Portal.admins is an admin.
"""

from __future__ import annotations

import fcntl
import hashlib
import re
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from support import free_port, wait_until
from support.portal import seed_upstream
from waypost.portal.app import create_app
from waypost.portal.repo import PolicyRepo
from waypost.portal.service import PortalService

OIDC_DIR = Path(__file__).resolve().parent / "oidc"
PORTAL = "http://portal.test"
SECRET = "oidc-test-client-secret"


@pytest.fixture(scope="session")
def oidc_provider_dir() -> Path:
    """``npm ci`` of tests/oidc into a temp directory keyed by the lock file (shared by workers)."""
    if shutil.which("npm") is None or shutil.which("node") is None:
        pytest.fail("node and npm are needed: run `make system-deps`", pytrace=False)
    lock = (OIDC_DIR / "package-lock.json").read_bytes()
    target = Path(tempfile.gettempdir()) / f"waypost-oidc-provider-{hashlib.sha256(lock).hexdigest()[:12]}"
    target.mkdir(exist_ok=True)
    with open(target / ".lock", "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        for name in ("package.json", "package-lock.json", "provider.mjs"):
            shutil.copy(OIDC_DIR / name, target / name)
        if not (target / "node_modules" / "oidc-provider").is_dir():
            subprocess.run(
                ["npm", "ci", "--no-audit", "--no-fund", "--ignore-scripts"],
                cwd=target,
                check=True,
                capture_output=True,
                timeout=300,
            )
    return target


@pytest.fixture
def issuer(oidc_provider_dir: Path, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(tmp_path / "oidc-provider.log", "w") as log:
        process = subprocess.Popen(
            ["node", "provider.mjs", str(port), "portal", SECRET, f"{PORTAL}/signin/oidc/callback"],
            cwd=oidc_provider_dir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until(
                lambda: httpx.get(f"{url}/.well-known/openid-configuration").status_code == 200, timeout=20
            )
            yield url
        finally:
            process.terminate()
            process.wait(10)


@pytest.fixture
async def portal(
    issuer: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[httpx.AsyncClient, Path]]:
    monkeypatch.setenv("WAYPOST_OIDC_CLIENT_SECRET", SECRET)
    upstream, _ = seed_upstream(tmp_path, oidc_issuer=issuer)
    repo = PolicyRepo(str(upstream.path), tmp_path / "work", subdir="policies")
    repo.open()
    app = create_app(PortalService(repo), secret="s")
    yield app, upstream.path  # type: ignore[misc]


def browser(app: object) -> httpx.AsyncClient:
    """A client that reaches the portal in process and the provider over loopback, one cookie jar."""
    return httpx.AsyncClient(
        mounts={PORTAL: httpx.ASGITransport(app=app)},  # type: ignore[arg-type]
        trust_env=False,
        timeout=10,
    )


async def sign_in(client: httpx.AsyncClient, subject: str) -> httpx.Response:
    page = await client.get(f"{PORTAL}/signin/oidc", follow_redirects=True)
    for _ in range(4):  # the login form, then consent
        action = re.search(r'<form[^>]*action="([^"]+)"', page.text)
        if page.url.host == "portal.test" or action is None:
            return page
        fields = {}
        for tag in re.findall(r"<input[^>]*>", page.text):  # hidden fields (the prompt) included
            name = re.search(r'name="([^"]*)"', tag)
            value = re.search(r'value="([^"]*)"', tag)
            if name is not None:
                fields[name.group(1)] = value.group(1) if value is not None else ""
        if "login" in fields:
            fields.update(login=subject, password="any")
        page = await client.post(page.url.join(action.group(1)), data=fields, follow_redirects=True)
    return page


async def test_oidc_sign_in_sign_up_and_admin_by_subject(portal: tuple[object, Path]) -> None:
    app, upstream = portal
    async with browser(app) as client:
        landed = await sign_in(client, "dev-sub")
        assert landed.url == f"{PORTAL}/signup", landed.text[:500]
        session = (await client.get(f"{PORTAL}/api/session")).json()
        assert session["user"] == {"consumer": None, "subject": "dev-sub"} and not session["admin"]
        signup = await client.post(
            f"{PORTAL}/api/signup", json={"name": "oidc-dev"}, headers={"x-csrf-token": session["csrf"]}
        )
        assert signup.status_code == 200, signup.text
        committed = subprocess.run(
            ["git", "show", "main:policies/portal/consumers/oidc-dev.yaml"],
            cwd=upstream,
            capture_output=True,
            text=True,
        ).stdout
        account = yaml.safe_load(committed)["account"]
        assert account["subject"] == "dev-sub" and account["email"] == "dev-sub@example.com"
        author = subprocess.run(
            ["git", "log", "-1", "--format=%an <%ae>", "main"], cwd=upstream, capture_output=True, text=True
        ).stdout.strip()
        assert author == "oidc-dev <dev-sub@example.com>"

    async with browser(app) as again:
        landed = await sign_in(again, "dev-sub")
        assert landed.url == f"{PORTAL}/account"
        assert (await again.get(f"{PORTAL}/api/me")).json()["consumer"] == "oidc-dev"

    async with browser(app) as admin:
        await sign_in(admin, "admin-sub")
        assert (await admin.get(f"{PORTAL}/api/admin/requests")).status_code == 200


async def test_a_forged_callback_is_refused(portal: tuple[object, Path]) -> None:
    app, _ = portal
    async with browser(app) as client:
        answer = await client.get(f"{PORTAL}/signin/oidc/callback?code=forged&state=forged")
        assert answer.status_code == 401 and "OIDC sign-in failed" in answer.json()["error"]
        assert (await client.get(f"{PORTAL}/api/session")).json()["user"] is None
