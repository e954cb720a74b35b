"""No CEL expression can crash waypost (issue 12, item 2).

The CEL library recurses natively and overflows its stack on deep trees: 20,000 `||` terms or a
long `+`, `[...]` or member chain crashed `waypost serve` at the first request, and a member chain
crashed `waypost validate` itself. Expressions are now bounded before they are compiled. Checked
here three ways: the bound on hostile shapes (pure, in-process), `waypost validate` as a real
process (a file:line error and exit 1, never a signal), and `waypost serve` answering real
requests through Envoy with expressions at the bounds, then refusing a hostile reload while it
keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from authz_support import KEYS, key_hash
from support import EchoFactory, EnvoyProcess, WaypostProcess, free_ports, wait_until
from support.procs import SRC_DIR
from waypost.policies.cel_env import (
    MAX_CHARS,
    MAX_TOKENS,
    compile_expression,
    expression_bounds_problem,
)

N = 20_000

HOSTILE = {
    "or-chain": " || ".join(['request.method == "x"'] * N),
    "and-chain": " && ".join(["true"] * N),
    "plus-chain": " + ".join(["1"] * N) + " == 0",
    "member-chain": "request" + ".a" * N,
    "index-chain": "request" + "['a']" * N,
    "parens": "(" * N + "true" + ")" * N,
    "brackets": "[" * N + "]" * N + " == []",
    "maps": "{'a': " * N + "1" + "}" * N + " == {}",
    "calls": "size(" * N + "request" + ")" * N + " > 0",
    "nots": "!" * N + "true",
    "negations": "-" * N + "1 == 1",
    "ternaries": "true ? " * N + "true" + " : false" * N,
    "nested-and": "(true && " * N + "true" + ")" * N,
    "under-chars-many-tokens": "+".join(["1"] * (MAX_CHARS // 2 - 10)) + "==0",
    "comprehensions": "request.headers.all(a, request.headers.all(b, request.headers.exists(c, true)))",
    "unterminated": '"' + "a" * 100,
}

AT_THE_BOUNDS = {
    "member": "request" + ".a" * (MAX_TOKENS // 2 - 6) + ' == "x"',
    "plus": " + ".join(["1"] * (MAX_TOKENS // 2 - 2)) + " > 0",
    "index": "request" + "['a']" * (MAX_TOKENS // 4 - 4) + ' == "x"',
    "nested": "(" * 60 + 'request.method == "GET"' + ")" * 60,
    "strings": '"' + ")" * 3000 + '" != request.path',
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_expressions_are_refused_before_compiling(name: str) -> None:
    problem = expression_bounds_problem(HOSTILE[name])
    assert problem is not None, name
    with pytest.raises(ValueError, match="CEL expression"):
        compile_expression(HOSTILE[name])


@pytest.mark.parametrize("name", sorted(AT_THE_BOUNDS))
def test_expressions_at_the_bounds_compile_and_run(name: str) -> None:
    program = compile_expression(AT_THE_BOUNDS[name])
    request = {"method": "GET", "path": "/", "host": "h", "headers": {"a": "1"}}
    # A missing key is an evaluation error, which is fine: no crash is the point.
    with contextlib.suppress(Exception):
        program.execute({"request": request, "identity": {}})


def test_bounds_ignore_what_strings_and_comments_hold() -> None:
    assert expression_bounds_problem('"((((" == request.path // a comment: don\'t ((((\n') is None
    assert expression_bounds_problem("r'\\' == request.path") is None
    assert expression_bounds_problem("'''a\n'b''' == request.path") is None
    assert expression_bounds_problem("b'\\x00' == b''") is None


def policy_with_when(when: str, port: int = 18080, backend: str = "127.0.0.1:9", prefix: str = "") -> str:
    """A Gateway, a Route and an AuthPolicy whose one rule is ``when`` (on line 18); ``prefix``
    names them apart when several such files share a directory."""
    escaped = when.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    p = prefix
    consumer = (
        f'kind: Consumer\nname: acme\napi_keys: ["{key_hash(KEYS["acme"])}"]'
        if not p
        else f'kind: Service\nname: {p}unused\nendpoints: ["127.0.0.1:9"]'
    )
    return f"""kind: Gateway
name: {p}edge
port: {port}
address: 127.0.0.1
---
kind: Service
name: {p}echo
endpoints: ["{backend}"]
---
{consumer}
---
kind: AuthPolicy
name: {p}keys
identity: [{{api_key: {{}}}}]
rules:
  - allow: {{when: "{escaped}"}}
---
kind: Route
name: {p}r
gateway: {p}edge
match: {{prefix: /}}
backend: {p}echo
auth: {p}keys
"""


def run_validate(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "waypost", "validate", str(directory)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(SRC_DIR)},
        timeout=120,
        check=False,
    )


def test_validate_refuses_every_hostile_expression_with_file_line(tmp_path: Path) -> None:
    # One directory per expression, one process for all: each file fails on its own line.
    for index, (name, when) in enumerate(HOSTILE.items()):
        (tmp_path / f"{name}.yaml").write_text(policy_with_when(when, port=18080 + index, prefix=f"{name}-"))
    result = run_validate(tmp_path)
    assert result.returncode == 1, (result.returncode, result.stderr[-2000:])
    for name in HOSTILE:
        assert f"{name}.yaml:18: AuthPolicy {name}-keys: rules[0].allow.when:" in result.stderr, (
            name,
            result.stderr[-3000:],
        )
    # Each error is one short line, not the expression echoed back.
    assert max(len(line) for line in result.stderr.splitlines()) < 400


def test_validate_accepts_expressions_at_the_bounds(tmp_path: Path) -> None:
    for index, (name, when) in enumerate(AT_THE_BOUNDS.items()):
        (tmp_path / f"{name}.yaml").write_text(policy_with_when(when, port=18080 + index, prefix=f"{name}-"))
    result = run_validate(tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.e2e
async def test_serve_evaluates_bounded_expressions_and_refuses_hostile_reloads(
    tmp_path: Path,
    echo_backend: EchoFactory,
    start_waypost: Callable[..., WaypostProcess],
    start_envoy: Callable[..., EnvoyProcess],
) -> None:
    backend = await echo_backend("echo")
    (port,) = free_ports(1)
    policies = tmp_path / "policies"
    policies.mkdir()
    policy = policies / "policy.yaml"
    # The deepest allowed expression, evaluated on every request (it is true for GET).
    deepest = " + ".join(["1"] * (MAX_TOKENS // 2 - 6)) + ' > 0 && request.method == "GET"'
    policy.write_text(policy_with_when(deepest, port, backend.address))
    waypost = await asyncio.to_thread(start_waypost, policies)
    envoy = await asyncio.to_thread(start_envoy, xds_port=waypost.xds_port)
    await asyncio.to_thread(envoy.wait_for_listener, port)
    import httpx

    async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
        url = f"http://127.0.0.1:{port}/x"
        for _ in range(20):
            assert (await client.get(url, headers={"x-api-key": KEYS["acme"]})).status_code == 200
        assert (await client.post(url, headers={"x-api-key": KEYS["acme"]})).status_code == 403
        version = (await asyncio.to_thread(waypost.status))["policy"]["version"]
        for name, when in HOSTILE.items():
            policy.write_text(policy_with_when(when, port, backend.address))

            def refused() -> bool:
                waypost.ensure_running()
                error = waypost.status()["policy"]["last_error"]
                return error is not None and "CEL expression" in " ".join(error["errors"])

            await asyncio.to_thread(wait_until, refused, 20, 0.1, message=f"{name} refused")
            assert (await asyncio.to_thread(waypost.status))["policy"]["version"] == version
            assert (await client.get(url, headers={"x-api-key": KEYS["acme"]})).status_code == 200, name
            # Reset the error, so the next hostile file is seen as a new refusal.
            policy.write_text(policy_with_when(deepest, port, backend.address))
            await asyncio.to_thread(
                wait_until,
                lambda: waypost.status()["policy"]["last_error"] is None,
                20,
                0.1,
                message="good policy back",
            )
    assert waypost.running
