"""The fleet dashboard on the admin port, rendered by a real headless Chromium against a real
waypost with a real Envoy connected. The screenshot lands in test-artifacts/dashboard.png."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter

from support import REPO_ROOT, get, wait_until
from support.browser import headless
from waypost.server.dashboard import AUTHZ_METRIC, RATELIMIT_METRIC, Sample, rates, read_counters

ARTIFACTS = REPO_ROOT / "test-artifacts"


def test_counters_and_rates() -> None:
    registry = CollectorRegistry()
    authz = Counter(AUTHZ_METRIC, "authz", ["decision"], registry=registry)
    limits = Counter(RATELIMIT_METRIC, "rl", ["result"], registry=registry)
    empty = read_counters(registry, now=0.0)
    assert empty == Sample(t=0.0)  # absent counters read as 0
    authz.labels("allow").inc(30)
    authz.labels("deny").inc(10)
    limits.labels("ok").inc(15)
    limits.labels("over_limit").inc(5)
    later = read_counters(registry, now=10.0)
    assert rates(empty, later) == {
        "decisions": 6.0,
        "denied": 1.0,
        "limited": 0.5,
        "nacks": 0.0,
        "pushes": 0.0,
    }
    assert rates(later, Sample(t=20.0))["decisions"] == 0.0  # a reset (restart) is not negative


@pytest.mark.e2e
def test_dashboard_shows_a_connected_envoy_in_sync(
    tmp_path: Path, tmp_policies, start_waypost, start_envoy
) -> None:
    waypost = start_waypost(tmp_policies(), env={"WAYPOST_DASHBOARD_INTERVAL": "0.5"})
    envoy = start_envoy(
        xds_port=waypost.xds_port, node_id="edge-1", node_cluster="edge", labels={"zone": "a"}
    )
    envoy.wait_ready()

    def synced() -> bool:
        nodes = get(f"{waypost.admin_url}/dashboard.json").json()["status"]["nodes"]
        return len(nodes) == 1 and all(t["in_sync"] for t in nodes[0]["types"].values())

    wait_until(synced, timeout=20, message="edge-1 in sync on /dashboard.json")
    data = get(f"{waypost.admin_url}/dashboard.json").json()
    assert data["summary"] == {"nodes": 1, "in_sync": 1, "nacked": 0}
    wait_until(lambda: len(get(f"{waypost.admin_url}/dashboard.json").json()["series"]) >= 2, timeout=10)

    page = get(f"{waypost.admin_url}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    # Self-contained: no script, style or font from elsewhere (the SVG namespace is only a name).
    assert "://" not in page.text.replace("http://www.w3.org/2000/svg", "")

    dom = headless(f"{waypost.admin_url}/", tmp_path / "chrome-dom", "--dump-dom")
    assert 'data-loaded="true"' in dom.stdout, dom.stderr[-2000:]
    assert '<tr data-node="edge-1">' in dom.stdout
    assert 'data-sync="in-sync"' in dom.stdout
    assert "zone=a" in dom.stdout and "no rejected pushes" in dom.stdout
    assert data["status"]["policy"]["version"][:12] in dom.stdout
    assert "<polyline" in dom.stdout  # the chart has points

    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "dashboard.png"
    screenshot.unlink(missing_ok=True)
    shot = headless(f"{waypost.admin_url}/", tmp_path / "chrome-shot", f"--screenshot={screenshot}")
    assert screenshot.exists() and screenshot.stat().st_size > 10_000, shot.stderr[-2000:]

    # A refused change shows on the page with its file:line, while the Envoy stays in sync.
    policies = waypost.policies
    (policies / "broken.yaml").write_text(
        "kind: Route\nname: broken\ngateway: public\nmatch: {prefix: /x}\nbackend: nope\n"
    )
    wait_until(
        lambda: waypost.status()["policy"]["last_error"], timeout=20, message="the broken file refused"
    )
    dom = headless(f"{waypost.admin_url}/", tmp_path / "chrome-dom2", "--dump-dom")
    assert '<section class="error" id="load-error">' in dom.stdout, dom.stdout
    assert "broken.yaml:5: Route broken: backend 'nope' is not a Service" in dom.stdout
    assert 'data-sync="in-sync"' in dom.stdout


def test_dashboard_page_shows_nacks_as_text(tmp_path: Path) -> None:
    """The page on a real admin server fed a status with a NACK (Envoy's own error text, which
    may contain markup) and a refused commit; rendered by Chromium."""
    import asyncio
    import threading

    from waypost.server.admin import AdminServer
    from waypost.server.dashboard import Dashboard

    nack = {
        "version": "ab12cd34ef56",
        "error": "<img src=x onerror=alert(1)> Proto constraint validation failed",
        "at": 99.0,
    }
    status = {
        "policy": {
            "directory": "/srv/policies",
            "version": "0123456789abcdef",
            "applied_at": 40.0,
            "git": {
                "describe": "3f2a9c1d4e5b",
                "commit": "3f2a9c1d4e5b" + "0" * 28,
                "branch": "main",
                "last_pull": {
                    "ok": False,
                    "at": 95.0,
                    "message": "fatal: Not possible to fast-forward, aborting.",
                },
            },
            "last_error": {
                "at": 90.0,
                "errors": ["policies/routes.yaml:7: Route r: backend 'x' is not a Service"],
                "git": {"describe": "77aa88bb99cc"},
            },
            "teams": {
                "payments": {
                    "state": "held",
                    "since": 70.0,
                    "owners": [],
                    "errors": ["teams/payments/s.yaml:3: Service app: team payments: '10.9.9.9'"],
                },
                "search": {"state": "serving", "owners": []},
            },
        },
        "nodes": [
            {
                "id": "edge-2",
                "cluster": "edge",
                "labels": {},
                "gateways": ["public"],
                "connected_since": 10.0,
                "types": {
                    "cds": {"acked_version": "v1", "sent_version": "v2", "in_sync": False, "last_nack": nack},
                    "lds": {"acked_version": "v1", "sent_version": "v1", "in_sync": True, "last_nack": None},
                },
            }
        ],
        "decision_services": {
            "advertise_address": "10.1.2.3",
            "clusters": {
                "waypost_authz": {
                    "service": "the ext_authz decision service (gRPC)",
                    "needed_by": ["orders"],
                    "endpoints": ["10.1.2.3:9191"],
                    "served_by": "this process",
                    "local_port": 9191,
                    "health_checked": False,
                    "error": None,
                },
                "waypost_ratelimit": {
                    "service": "the rate-limit service",
                    "needed_by": ["orders"],
                    "endpoints": [],
                    "served_by": None,
                    "local_port": None,
                    "health_checked": False,
                    "error": None,
                },
            },
            "unserved": [
                {
                    "route": "orders",
                    "cluster": "waypost_ratelimit",
                    "service": "the rate-limit service",
                    "fix": "name it with --ratelimit-address HOST:PORT, or drop --no-ratelimit",
                }
            ],
        },
        "time": 100.0,
    }
    ready = threading.Event()
    stopping: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
    port: list[int] = []

    def serve() -> None:
        async def main() -> None:
            admin = AdminServer(ready=lambda: True, status=lambda: status)
            dashboard = Dashboard(lambda: status, interval=60)
            dashboard.install(admin)
            port.append(await admin.start("127.0.0.1", 0))
            stop = asyncio.Event()
            stopping.append((asyncio.get_running_loop(), stop))
            ready.set()
            await stop.wait()
            await admin.close()

        asyncio.run(main())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        url = f"http://127.0.0.1:{port[0]}/"
        dom = headless(url, tmp_path / "chrome", "--dump-dom").stdout
        assert 'data-sync="nacked"' in dom  # behind because Envoy rejected the push
        assert "&lt;img src=x onerror=alert(1)&gt; Proto constraint validation failed" in dom
        assert "<img" not in dom
        assert "commit 3f2a9c1d4e5b · version 0123456789ab · branch main" in dom
        assert '<section class="error" id="pull-error">' in dom
        assert "Not possible to fast-forward" in dom
        assert "(commit 77aa88bb99cc)" in dom
        # A team held at its last good version, with its errors; a serving team is not listed.
        assert '<section class="error" id="teams-held">' in dom
        assert "team payments (held, " in dom and "team payments: '10.9.9.9'" in dom
        assert "team search" not in dom
        # A route whose decision service nothing serves: a banner, and the service marked.
        assert '<section class="error" id="unserved">' in dom
        assert "route orders needs the rate-limit service (waypost_ratelimit): name it with" in dom
        assert '<tr data-cluster="waypost_ratelimit">' in dom
        assert '<span class="badge bad">nothing</span>' in dom
        assert "10.1.2.3:9191" in dom
        ARTIFACTS.mkdir(exist_ok=True)
        headless(url, tmp_path / "chrome-shot", f"--screenshot={ARTIFACTS / 'dashboard-nack.png'}")
    finally:
        loop, stop = stopping[0]
        loop.call_soon_threadsafe(stop.set)
        thread.join(5)
