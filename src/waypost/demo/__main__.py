"""``python -m waypost.demo``: the whole picture on one machine, in one command.

It starts, in order:

1. two echo backends (in this process) on the ports the example Services name;
2. ``waypost serve --policies policies/`` (a child process), the control plane;
3. ``envoy`` (a child process) with a bootstrap from :func:`build_bootstrap` for node
   ``demo-edge-1`` of cluster ``edge``, which gets the ``public`` Gateway over ADS;

then waits until a request through the gateway reaches a backend, and prints ``curl`` lines
that show each route at work. Ctrl-C stops everything. Files (bootstrap, logs) go to ``.demo/``.

``--smoke`` sends those requests itself, checks every answer came from the right backend with
the right changes, and exits 0 only if all did: CI runs it as the end-to-end check.

The ports are fixed (curl lines are meant to be copy-pasted), so they are checked up front and a
taken one is reported with what needs it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import yaml

import waypost
from waypost.demo import EnvoyNotFoundError, find_envoy, parent_death_signal
from waypost.demo.echo import EchoServer, start_echo
from waypost.demo.portal_repo import prepare_repo
from waypost.xds.bootstrap import render_bootstrap

NODE_ID = "demo-edge-1"
NODE_CLUSTER = "edge"
GATEWAY = "public"
BACKENDS = ("orders", "catalog")
LOOPBACK = "127.0.0.1"
XDS_PORT = 18000  # `waypost serve` defaults
WAYPOST_ADMIN_PORT = 9902
ENVOY_ADMIN_PORT = 9901  # Envoy's customary admin port
# The decision services `waypost serve` runs itself, on its default ports, for the routes that need
# them; Envoy learns where they are over CDS/EDS (its bootstrap names only waypost's xDS port).
AUTHZ_PORT = 9191  # ext_authz decisions (`waypost serve --authz-port`)
RATELIMIT_PORT = 18001  # rate-limit decisions (`waypost serve --ratelimit-port`)
PORTAL_PORT = 9904  # the developer portal (`waypost serve --portal-port`)
PULL_INTERVAL = "1s"  # how soon a portal commit reaches the fleet
ANALYTICS_PORT = 18002  # Envoy's access-log stream (`waypost serve --analytics-port`)
ACME_KEY = "demo-acme-key"  # policies/partners.yaml holds their hashes
TRIAL_KEY = "demo-trial-key"
DEV_KEY = "demo-dev-key"  # policies/portal/consumers/demo-dev.yaml: the portal's demo consumer
ADMIN_KEY = "demo-admin-key"  # policies/portal/consumers/portal-admin.yaml: the portal's admin

STARTUP_TIMEOUT = 60.0
WEIGHTED_SAMPLES = 40


class DemoError(Exception):
    """Something the person running the demo can act on; printed without a traceback."""


# --- what the policies say ----------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """The ports the demo needs, read from the example policies so the two cannot drift."""

    gateway_port: int
    backends: dict[str, tuple[str, int]]
    """Service name -> (host, port) of its first endpoint."""


def read_plan(policies: Path) -> Plan:
    if not policies.is_dir():
        raise DemoError(f"no policy directory at {policies}; run from the repository root or pass --policies")
    documents: list[tuple[Path, dict[str, Any]]] = []
    for path in sorted(policies.rglob("*.y*ml")):
        with contextlib.suppress(yaml.YAMLError):  # `waypost serve` reports broken files properly
            documents += [
                (path, doc) for doc in yaml.safe_load_all(path.read_text()) if isinstance(doc, dict)
            ]

    def find(kind: str, name: str) -> dict[str, Any]:
        for _, doc in documents:
            if doc.get("kind") == kind and doc.get("name") == name:
                return doc
        raise DemoError(f"the demo needs a {kind} named {name!r} in {policies}")

    gateway_port = find("Gateway", GATEWAY).get("port")
    if not isinstance(gateway_port, int):
        raise DemoError(f"Gateway {GATEWAY!r} in {policies} has no port")
    backends = {}
    for name in BACKENDS:
        endpoints = find("Service", name).get("endpoints") or []
        host, _, port = str(endpoints[0] if endpoints else "").rpartition(":")
        if host not in (LOOPBACK, "localhost") or not port.isdigit():
            raise DemoError(f"Service {name!r} must have a {LOOPBACK}:PORT endpoint for the demo")
        backends[name] = (LOOPBACK, int(port))
    return Plan(gateway_port=gateway_port, backends=backends)


def check_ports_free(needs: Sequence[tuple[str, int, str]]) -> None:
    """Fail with one clear message listing every needed port that something already uses."""
    taken = []
    for host, port, purpose in needs:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            # Same option the real servers use, so a port in TIME_WAIT does not count as taken.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                taken.append(f"  port {port} ({purpose})")
    if taken:
        raise DemoError(
            "the demo uses fixed ports, and these are taken:\n"
            + "\n".join(taken)
            + "\nStop whatever holds them (`ss -ltnp` shows it; a previous demo still running?) and retry."
        )


# --- child processes ----------------------------------------------------------------------------


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def exited(self) -> int | None:
        return self.proc.poll()

    def tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return "(no output)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:]) or "(no output)"

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def spawn(name: str, argv: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None) -> Child:
    with open(log_path, "wb") as log:
        log.write(f"$ {shlex.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            # Own session: Ctrl-C reaches only the demo, which then stops the children in order.
            start_new_session=True,
            preexec_fn=parent_death_signal(),
        )
    return Child(name, proc, log_path)


# --- talking to the gateway ---------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, Any]:
        try:
            data = json.loads(self.body)
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}


def http_request(
    port: int, method: str, path: str, headers: Mapping[str, str] | None = None, body: str | None = None
) -> Reply:
    """One request on a fresh connection (blocking: call through ``asyncio.to_thread``)."""
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        response = conn.getresponse()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        conn.close()


# --- the examples -------------------------------------------------------------------------------


@dataclass
class Example:
    """One request worth showing: the curl line to print, and what a correct answer looks like."""

    title: str
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    body: str | None = None
    show_headers: bool = False
    expect_status: int = 200
    expect_backend: str | None = None
    expect_path: str | None = None
    expect_upstream_headers: dict[str, str | None] = field(default_factory=dict)
    """Header the backend must have seen with this value; None: must not have seen it."""
    expect_response_headers: dict[str, str | None] = field(default_factory=dict)
    expect_upstream_attempts: int | None = None
    """How many times the backend must have received this request (retries)."""
    repeat: int = 1
    """Send the request this many times; the last answer is the one checked (rate limits)."""

    def curl(self, port: int) -> str:
        argv = ["curl", "-si" if self.show_headers else "-s"]
        if self.method not in ("GET", "POST") or (self.method == "POST" and self.body is None):
            argv += ["-X", self.method]
        for name, value in self.headers.items():
            argv += ["-H", f"{name}: {value}"]
        if self.body is not None:
            argv += ["-d", self.body]
        argv.append(f"http://{LOOPBACK}:{port}{self.path}")
        line = shlex.join(argv)
        if self.repeat > 1:
            line = f"for i in $(seq {self.repeat}); do {line}; echo; done"
        if self.expect_status != 200:
            line += "   # -> " + str(self.expect_status)
        return line

    def problems(self, reply: Reply, echo: Mapping[str, EchoServer], seen_before: int) -> list[str]:
        found = []
        if reply.status != self.expect_status:
            found.append(f"status {reply.status}, expected {self.expect_status}")
        answer = reply.json()
        if self.expect_backend is not None and answer.get("backend") != self.expect_backend:
            found.append(f"answered by {answer.get('backend')!r}, expected {self.expect_backend!r}")
        if self.expect_path is not None and answer.get("path") != self.expect_path:
            found.append(f"backend saw path {answer.get('path')!r}, expected {self.expect_path!r}")
        upstream_headers = answer.get("headers") or {}
        for name, value in self.expect_upstream_headers.items():
            if upstream_headers.get(name) != value:
                found.append(f"backend saw {name}: {upstream_headers.get(name)!r}, expected {value!r}")
        for name, value in self.expect_response_headers.items():
            if reply.headers.get(name) != value:
                found.append(f"response {name}: {reply.headers.get(name)!r}, expected {value!r}")
        if self.expect_upstream_attempts is not None and self.expect_backend and self.expect_path:
            attempts = _count(echo[self.expect_backend], self.expect_path) - seen_before
            if attempts != self.expect_upstream_attempts:
                found.append(f"backend got {attempts} attempts, expected {self.expect_upstream_attempts}")
        return found


def _count(server: EchoServer, path: str) -> int:
    return sum(1 for request in server.requests if request.path == path)


EXAMPLES = [
    Example(
        "orders-read: prefix + GET, /api/orders rewritten to /orders, x-gateway added, x-debug removed",
        "GET",
        "/api/orders/42?expand=items",
        headers={"x-debug": "1"},
        expect_backend="orders",
        expect_path="/orders/42?expand=items",
        expect_upstream_headers={"x-gateway": "waypost", "x-debug": None},
    ),
    Example(
        "orders-read: response headers: x-frame-options added, the backend's x-internal removed",
        "GET",
        "/api/orders/42",
        headers={"x-echo-header-x-internal": "secret"},
        show_headers=True,
        expect_backend="orders",
        expect_response_headers={"x-frame-options": "DENY", "x-internal": None},
    ),
    Example(
        "orders-create: exact path + POST (not retried)",
        "POST",
        "/api/orders",
        headers={"content-type": "application/json"},
        body='{"item": "book"}',
        expect_backend="orders",
        expect_path="/orders",
    ),
    Example(
        "methods: no route takes DELETE on /api/orders",
        "DELETE",
        "/api/orders/42",
        expect_status=404,
    ),
    Example(
        "catalog-stable: /api/catalog rewritten to /catalog",
        "GET",
        "/api/catalog/items",
        expect_backend="catalog",
        expect_path="/catalog/items",
    ),
    Example(
        "catalog-beta: the x-beta header selects the v2 path",
        "GET",
        "/api/catalog/items",
        headers={"x-beta": "true"},
        expect_backend="catalog",
        expect_path="/v2/catalog/items",
    ),
    Example(
        "timeouts: a backend slower than the route's 1s timeout gets the client a 504",
        "GET",
        "/api/catalog/slow",
        headers={"x-echo-delay-ms": "1500"},
        expect_status=504,
    ),
    Example(
        "retries: a 503 is retried twice (three attempts reach the backend) before the client sees it",
        "GET",
        "/api/orders/flaky",
        headers={"x-echo-status": "503"},
        expect_status=503,
        expect_backend="orders",
        expect_path="/orders/flaky",
        expect_upstream_attempts=3,
    ),
    Example("no route: anything else is a 404", "GET", "/nothing/here", expect_status=404),
    Example(
        "screen: a SQL injection in the query is refused by Envoy itself",
        "GET",
        "/web/catalog/items?id=1%27%20OR%20%271%27%3D%271",
        expect_status=403,
    ),
    Example(
        "validation: an order matching its JSON Schema reaches the backend",
        "POST",
        "/web/orders",
        headers={"content-type": "application/json"},
        body='{"items": [{"sku": "A-1", "qty": 2}]}',
        expect_backend="orders",
    ),
    Example(
        "validation: a bad order gets 400 naming each failing location; the backend never sees it",
        "POST",
        "/web/orders",
        headers={"content-type": "application/json"},
        body='{"items": [{"sku": "A-1", "qty": 0}]}',
        expect_status=400,
    ),
    Example(
        "partner-orders: no API key gets 401 from waypost's ext_authz service",
        "GET",
        "/partner/orders/7",
        expect_status=401,
    ),
    Example(
        "partner-orders: acme's key passes; the backend learns the caller, a forged header is dropped",
        "GET",
        "/partner/orders/7",
        headers={"x-api-key": ACME_KEY, "x-waypost-consumer": "someone-else"},
        expect_backend="orders",
        expect_path="/orders/7",
        expect_upstream_headers={"x-waypost-consumer": "acme"},
    ),
    Example(
        "partner-quota: the trial plan allows 2 requests a minute; the third gets 429",
        "GET",
        "/partner/orders/7",
        headers={"x-api-key": TRIAL_KEY},
        show_headers=True,
        expect_status=429,
        repeat=3,
    ),
    Example(
        "portal: demo-dev subscribed to the partner-orders Api (trial plan) through the portal",
        "GET",
        "/partner/orders/8",
        headers={"x-api-key": DEV_KEY},
        expect_backend="orders",
        expect_upstream_headers={"x-waypost-consumer": "demo-dev"},
    ),
    Example(
        "portal: demo-dev has no subscription to partner-catalog (yet: request one in the portal)",
        "GET",
        "/partner/catalog/items",
        headers={"x-api-key": DEV_KEY},
        expect_status=403,
    ),
]

WEIGHTED_PATH = "/api/search?q=shoes"


def weighted_curl(port: int) -> str:
    url = f"http://{LOOPBACK}:{port}{WEIGHTED_PATH}"
    return (
        f"for i in $(seq 20); do curl -s '{url}' | grep -o '\"backend\": \"[a-z]*\"'; done | sort | uniq -c"
    )


# --- the demo -----------------------------------------------------------------------------------


class Demo:
    def __init__(self, policies: Path, workdir: Path, out: TextIO) -> None:
        self.policies = policies.resolve()
        self.workdir = workdir.resolve()
        self.out = out
        self.plan = read_plan(self.policies)
        self.served = self.policies  # a git clone of a copy, once start() has made it
        self.echo: dict[str, EchoServer] = {}
        self.children: list[Child] = []

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    async def start(self) -> None:
        plan = self.plan
        try:
            envoy = find_envoy()
        except EnvoyNotFoundError as exc:
            raise DemoError(str(exc)) from None
        check_ports_free(
            [
                ("0.0.0.0", plan.gateway_port, f"Gateway {GATEWAY!r}, served by Envoy"),
                *[(host, port, f"echo backend {name!r}") for name, (host, port) in plan.backends.items()],
                (LOOPBACK, XDS_PORT, "waypost xDS"),
                (LOOPBACK, WAYPOST_ADMIN_PORT, "waypost admin"),
                (LOOPBACK, ENVOY_ADMIN_PORT, "Envoy admin"),
                (LOOPBACK, AUTHZ_PORT, "waypost ext_authz"),
                (LOOPBACK, RATELIMIT_PORT, "waypost rate limit"),
                (LOOPBACK, PORTAL_PORT, "waypost developer portal"),
                (LOOPBACK, ANALYTICS_PORT, "waypost analytics collector"),
            ]
        )
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self.served = await asyncio.to_thread(prepare_repo, self.policies, self.workdir)
        except RuntimeError as exc:
            raise DemoError(str(exc)) from None

        for name, (host, port) in plan.backends.items():
            self.echo[name] = await start_echo(name, host, port)
        self.say(f"echo backends: {', '.join(f'{n} on {s.url}' for n, s in self.echo.items())}")

        env = dict(os.environ)
        # Run waypost from the same source tree as this demo, installed or not.
        package_root = str(Path(waypost.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        self.children.append(
            spawn(
                "waypost",
                [
                    sys.executable,
                    "-m",
                    "waypost",
                    "serve",
                    "--policies",
                    str(self.served),
                    "--host",
                    LOOPBACK,
                    # policies/ sits in this repository's checkout: serve the files as edited
                    # (the quickstart's "edit a file"), not the last commit.
                    "--working-tree",
                    "--xds-port",
                    str(XDS_PORT),
                    "--admin-port",
                    str(WAYPOST_ADMIN_PORT),
                    "--git-pull",
                    PULL_INTERVAL,
                    "--portal-port",
                    str(PORTAL_PORT),
                    "--portal-workdir",
                    str(self.workdir / "portal-clone"),
                    "--analytics-port",
                    str(ANALYTICS_PORT),
                    "--data-dir",
                    str(self.workdir / "data"),
                ],
                self.workdir / "waypost.log",
                env,
            )
        )
        await self._wait(
            lambda: http_request(WAYPOST_ADMIN_PORT, "GET", "/readyz").status == 200,
            f"waypost to load {self.policies} (http://{LOOPBACK}:{WAYPOST_ADMIN_PORT}/readyz)",
        )
        await self._wait(
            lambda: http_request(PORTAL_PORT, "GET", "/api/apis").status == 200,
            f"the developer portal (http://{LOOPBACK}:{PORTAL_PORT}/)",
        )
        self.say(
            f"waypost: serving {self.served}, a git clone of {self.policies} (xDS {LOOPBACK}:{XDS_PORT})"
        )

        bootstrap = self.workdir / "bootstrap.yaml"
        bootstrap.write_text(
            render_bootstrap(
                node_id=NODE_ID,
                node_cluster=NODE_CLUSTER,
                xds_host=LOOPBACK,
                xds_port=XDS_PORT,
                admin_port=ENVOY_ADMIN_PORT,
            )
        )
        self.children.append(
            spawn(
                "envoy",
                [str(envoy), "-c", str(bootstrap), "--use-dynamic-base-id", "-l", "info"],
                self.workdir / "envoy.log",
            )
        )

        def through_gateway() -> bool:
            # Both Services answer: listener, routes and clusters (health-checked) are all in.
            for name in BACKENDS:
                path = "/api/orders/ready" if name == "orders" else "/api/catalog/ready"
                reply = http_request(plan.gateway_port, "GET", path)
                if reply.status != 200 or reply.json().get("backend") != name:
                    return False
            return True

        await self._wait(through_gateway, f"Envoy to route through the gateway on port {plan.gateway_port}")

        def limits_answered() -> bool:
            # Envoy's first calls open its connections to the decision services; until an answer
            # carries the rate-limit headers, a request could pass uncounted (filters fail open).
            reply = http_request(plan.gateway_port, "GET", "/partner/orders/ready", {"x-api-key": ACME_KEY})
            return reply.status == 200 and "ratelimit-limit" in reply.headers

        await self._wait(limits_answered, "Envoy to reach waypost's ext_authz and rate-limit services")
        self.say(
            f"envoy: node {NODE_ID!r} (cluster {NODE_CLUSTER!r}), admin http://{LOOPBACK}:{ENVOY_ADMIN_PORT}"
        )

    async def _wait(self, probe: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            for child in self.children:
                code = child.exited()
                if code is not None:
                    raise DemoError(
                        f"{child.name} exited with code {code}; its log ({child.log_path}):\n{child.tail()}"
                    )
            with contextlib.suppress(OSError, http.client.HTTPException):
                if await asyncio.to_thread(probe):
                    return
            if time.monotonic() > deadline:
                logs = "\n\n".join(f"--- {c.name} ({c.log_path}):\n{c.tail()}" for c in self.children)
                raise DemoError(
                    f"timed out after {STARTUP_TIMEOUT:g}s waiting for {what}\n{logs}\n\n"
                    f"What waypost sends this node: waypost render {self.policies} "
                    f"--node-id {NODE_ID} --node-cluster {NODE_CLUSTER}"
                )
            await asyncio.sleep(0.25)

    def print_examples(self) -> None:
        port = self.plan.gateway_port
        self.say()
        self.say(f"The gateway is up on http://{LOOPBACK}:{port}. Try the routes of {self.policies}/:")
        for example in EXAMPLES:
            self.say()
            self.say(f"  # {example.title}")
            self.say(f"  {example.curl(port)}")
        self.say()
        self.say("  # search: weighted 75/25 between orders and catalog")
        self.say(f"  {weighted_curl(port)}")
        self.say()
        self.say(
            f"Envoy admin: http://{LOOPBACK}:{ENVOY_ADMIN_PORT}/config_dump   "
            f"waypost dashboard: http://{LOOPBACK}:{WAYPOST_ADMIN_PORT}/   "
            f"call analytics: http://{LOOPBACK}:{WAYPOST_ADMIN_PORT}/analytics"
        )
        self.say(
            f"Developer portal: http://{LOOPBACK}:{PORTAL_PORT}/  (sign in with the key {ADMIN_KEY!r} as the"
            f" admin, or {DEV_KEY!r} as the consumer demo-dev; or sign up). Every change there is a"
            f" commit to {self.workdir}/upstream.git, which waypost pulls every {PULL_INTERVAL}."
        )
        self.say(
            f"Logs and bootstrap: {self.workdir}/. Edit a policy file in {self.served}/ and waypost"
            " reloads it live."
        )
        self.say("Press Ctrl-C to stop.")
        self.say()

    async def run_until_stopped(self) -> None:
        for server in self.echo.values():
            server.access_log = True  # show requests arriving, now that the help text is out
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        while not stop.is_set():
            for child in self.children:
                code = child.exited()
                if code is not None:
                    raise DemoError(
                        f"{child.name} exited with code {code}; its log ({child.log_path}):\n{child.tail()}"
                    )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
        self.say("\nstopping...")

    async def smoke(self) -> bool:
        port = self.plan.gateway_port
        passed = failed = 0
        for example in EXAMPLES:
            seen_before = (
                _count(self.echo[example.expect_backend], example.expect_path)
                if example.expect_backend and example.expect_path
                else 0
            )
            self.say(f"$ {example.curl(port)}")
            try:
                for _ in range(example.repeat):
                    reply = await asyncio.to_thread(
                        http_request, port, example.method, example.path, example.headers, example.body
                    )
            except (OSError, http.client.HTTPException) as exc:
                problems = [f"request failed: {exc}"]
            else:
                self.say(f"  -> {reply.status} {reply.body[:200].decode(errors='replace')}")
                problems = example.problems(reply, self.echo, seen_before)
            passed, failed = self._verdict(example.title, problems, passed, failed)

        self.say(f"$ {weighted_curl(port)}  (x{WEIGHTED_SAMPLES})")
        counts: dict[str, int] = {}
        problems = []
        for _ in range(WEIGHTED_SAMPLES):
            reply = await asyncio.to_thread(http_request, port, "GET", WEIGHTED_PATH)
            backend = str(reply.json().get("backend")) if reply.status == 200 else f"status {reply.status}"
            counts[backend] = counts.get(backend, 0) + 1
        self.say(f"  -> {counts}")
        # 75/25 over 40 requests: missing either backend by chance is a one-in-100,000 event.
        if set(counts) != {"orders", "catalog"}:
            problems.append(f"expected both orders and catalog, got {counts}")
        passed, failed = self._verdict("search: weighted split", problems, passed, failed)

        reply = await asyncio.to_thread(http_request, PORTAL_PORT, "GET", "/api/apis")
        names = sorted(api.get("name", "") for api in json.loads(reply.body)) if reply.status == 200 else []
        problems = [] if names == ["partner-catalog", "partner-orders"] else [f"portal lists {names}"]
        passed, failed = self._verdict("portal: the catalog lists both APIs", problems, passed, failed)

        self.say()
        self.say(f"smoke: {passed} passed, {failed} failed")
        return failed == 0

    def _verdict(self, title: str, problems: list[str], passed: int, failed: int) -> tuple[int, int]:
        if problems:
            self.say(f"  FAIL {title}: " + "; ".join(problems))
            return passed, failed + 1
        self.say(f"  ok   {title}")
        return passed + 1, failed

    async def close(self) -> None:
        # Envoy first, so it does not log reconnect errors for a control plane we stopped on purpose.
        for child in reversed(self.children):
            await asyncio.to_thread(child.stop)
        for server in self.echo.values():
            await server.close()


async def _main(args: argparse.Namespace) -> int:
    demo = Demo(args.policies, args.workdir, sys.stdout)
    try:
        await demo.start()
        if args.smoke:
            return 0 if await demo.smoke() else 1
        demo.print_examples()
        await demo.run_until_stopped()
        return 0
    finally:
        await demo.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m waypost.demo",
        description="Run echo backends, waypost and Envoy together on the example policies.",
    )
    parser.add_argument(
        "--policies", type=Path, default=Path("policies"), help="policy directory (default: policies)"
    )
    parser.add_argument(
        "--workdir", type=Path, default=Path(".demo"), help="bootstrap and logs (default: .demo)"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="send the example requests, check them, and exit"
    )
    args = parser.parse_args(argv)
    try:
        return asyncio.run(_main(args))
    except DemoError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C during start-up, before the signal handlers are in place
        return 130


if __name__ == "__main__":
    sys.exit(main())
