"""Where policy files are read from: only regular files inside the directory, capped, never
half-written; in a git checkout, the commit.

Loader-level cases check each hostile file (symlinks out, symlinked folders, a ``*.yaml`` link to
a secret, ``/dev/zero``, FIFOs, huge files) gives a clear ``file:line`` error and never its
content; the end-to-end cases run real waypost and Envoy processes: a FIFO does not stall
reloads, a checkout serves its commit, and a file rewritten in place in slow chunks (with SIGHUP
reloads fired all along) never reaches Envoy half-written.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from authz_support import key_hash
from support import EchoFactory, EnvoyProcess, WaypostProcess, async_wait_until, free_ports
from support.gitrepo import GitRepo
from support.pki import TestCA
from waypost.policies import PolicyError, load_policies
from waypost.policies.source import MAX_POLICY_FILE_BYTES, MAX_REFERENCED_FILE_BYTES, GitTreeSource
from waypost.server.gitinfo import git_info

SECRET = "TOP-SECRET-LINE do-not-print-me"
GATEWAY = "kind: Gateway\nname: public\nport: {port}\naddress: 127.0.0.1\n"
SERVICE = 'kind: Service\nname: echo\nendpoints: ["{endpoint}"]\n'


def _errors(directory: Path) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        load_policies(directory)
    return [str(d) for d in caught.value.diagnostics]


def _tls_policies(root: Path) -> Path:
    policies = root / "policies"
    ca = TestCA.create(root / "pki")
    issued = ca.issue("server", dns=["localhost"], directory=policies / "certs")
    assert issued.cert_path.name and issued.key_path.name
    (policies / "gateway.yaml").write_text(
        "kind: Gateway\nname: g\nport: 8443\n"
        f"tls: {{cert: certs/{issued.cert_path.name}, key: certs/{issued.key_path.name}}}\n"
    )
    return policies


def test_symlinked_key_and_folder_outside_are_refused(tmp_path: Path) -> None:
    policies = _tls_policies(tmp_path)
    key = next((policies / "certs").glob("*key*.pem"))
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / key.name).write_bytes(key.read_bytes())
    key.unlink()
    key.symlink_to(outside / key.name)
    errors = _errors(policies)
    assert any(
        "gateway.yaml:4: Gateway g: tls.key:" in e and "outside the policy directory" in e for e in errors
    )

    # The whole folder a symlink to one elsewhere: the certificate is refused too.
    certs = policies / "certs"
    for path in certs.iterdir():
        (outside / path.name).unlink(missing_ok=True)
        path.rename(outside / path.name)
    certs.rmdir()
    certs.symlink_to(outside)
    errors = _errors(policies)
    assert any("tls.cert:" in e and "outside the policy directory" in e for e in errors), errors
    assert any("tls.key:" in e and "outside the policy directory" in e for e in errors), errors


def test_yaml_symlinks_never_print_what_they_point_at(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (tmp_path / "passwd").write_text(f"{SECRET}\n")
    (policies / "a.yaml").symlink_to(tmp_path / "passwd")  # outside
    (policies / "secret.key").write_text(f"{SECRET}\n")
    (policies / "b.yaml").symlink_to("secret.key")  # inside, but not a policy file
    (policies / "c.yaml").symlink_to("/dev/zero")  # would grow memory without bound
    (policies / "d.yaml").write_text(f"{SECRET}\n")  # a plain scalar document
    errors = _errors(policies)
    text = "\n".join(errors)
    assert SECRET not in text and "TOP-SECRET" not in text
    assert (
        f"{policies}/a.yaml: 'a.yaml' is a symlink to a file outside the policy directory; not read" in errors
    )
    assert (
        f"{policies}/b.yaml: 'b.yaml' is a symlink to a file that is not a policy file (*.yaml); not read"
        in errors
    )
    assert any(e.startswith(f"{policies}/c.yaml:") and "outside" in e for e in errors)
    assert f"{policies}/d.yaml:1: a policy document is a mapping with kind and name, got a string" in errors


def test_configmap_layout_still_loads(tmp_path: Path) -> None:
    """A Kubernetes ConfigMap mount: visible files are symlinks into a hidden ``..data`` folder."""
    policies = tmp_path / "policies"
    data = policies / "..2026_01_01" / "nested"
    data.mkdir(parents=True)
    (data.parent / "gateway.yaml").write_text(GATEWAY.format(port=8080))
    (policies / "..data").symlink_to("..2026_01_01")
    (policies / "gateway.yaml").symlink_to("..data/gateway.yaml")
    assert list(load_policies(policies).gateways) == ["public"]


def test_fifo_is_refused_without_waiting(tmp_path: Path) -> None:
    policies = _tls_policies(tmp_path)
    os.mkfifo(policies / "x.yaml")
    key = next((policies / "certs").glob("*key*.pem"))
    key.unlink()
    os.mkfifo(key)
    result: list[list[str]] = []
    worker = threading.Thread(target=lambda: result.append(_errors(policies)), daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert result, "loading a directory with a FIFO hung"
    assert f"{policies}/x.yaml: 'x.yaml' is a FIFO, not a regular file; not read" in result[0]
    assert any("tls.key:" in e and "is a FIFO, not a regular file" in e for e in result[0])


def test_files_over_the_caps_are_refused_unread(tmp_path: Path) -> None:
    policies = _tls_policies(tmp_path)
    big = policies / "big.yaml"
    with big.open("wb") as handle:  # sparse: nothing is written, and nothing must be read
        handle.truncate(MAX_POLICY_FILE_BYTES + 1)
    cert = next(p for p in (policies / "certs").glob("*.pem") if "key" not in p.name)
    with cert.open("ab") as handle:
        handle.truncate(MAX_REFERENCED_FILE_BYTES + 1)
    errors = _errors(policies)
    assert f"{policies}/big.yaml: 'big.yaml' is larger than 1 MiB; not read" in errors
    assert any("tls.cert:" in e and "is larger than 8 MiB; not read" in e for e in errors)


def test_git_tree_source_reads_the_commit_not_the_working_files(tmp_path: Path) -> None:
    repo = GitRepo.init(tmp_path / "repo")
    repo.write("policies/gateway.yaml", GATEWAY.format(port=8080))
    repo.write("policies/link.yaml", "")
    (repo.path / "policies/link.yaml").unlink()
    (repo.path / "policies/link.yaml").symlink_to(".shared/other.yaml")
    repo.write("policies/.shared/other.yaml", SERVICE.format(endpoint="127.0.0.1:1"))
    repo.write("outside.key", f"{SECRET}\n")
    (repo.path / "policies/out.yaml").symlink_to("../outside.key")
    repo.git("add", "-A")
    repo.git("commit", "--quiet", "-m", "policies")
    policies = repo.path / "policies"
    info = git_info(policies, working_tree=False)
    assert info is not None
    with pytest.raises(PolicyError) as caught:
        load_policies(GitTreeSource(policies, toplevel=info.toplevel, commit=info.commit))
    assert [str(d) for d in caught.value.diagnostics] == [
        f"{policies}/out.yaml: 'out.yaml' is a symlink to a file outside the policy directory; not read"
    ]
    repo.git("rm", "--quiet", "policies/out.yaml")
    repo.git("commit", "--quiet", "-m", "drop the link")
    info = git_info(policies, working_tree=False)
    assert info is not None
    # Half a file in the working tree, uncommitted: the commit is what is read.
    (policies / "gateway.yaml").write_text("kind: Gatew")
    committed = load_policies(GitTreeSource(policies, toplevel=info.toplevel, commit=info.commit))
    assert list(committed.gateways) == ["public"] and list(committed.services) == ["echo"]
    assert committed.version == load_policies(_checkout(repo, tmp_path / "copy")).version
    assert git_info(policies, working_tree=False).describe == info.short  # type: ignore[union-attr]
    assert git_info(policies).describe == info.short + "-dirty"  # type: ignore[union-attr]


def _checkout(repo: GitRepo, into: Path) -> Path:
    GitRepo.clone(repo.path, into)
    return into / "policies"


# --- end to end ------------------------------------------------------------------------------------

ROUTES = """\
kind: Route
name: public
gateway: public
match: {{prefix: /public}}
backend: echo
request_headers: {{add: {{x-version: "{version}"}}}}
---
kind: Route
name: secure
gateway: public
match: {{prefix: /secure}}
backend: echo
request_headers: {{add: {{x-version: "{version}"}}}}
auth: keys
"""
AUTH = f"""\
kind: AuthPolicy
name: keys
identity: [{{api_key: {{header: x-api-key}}}}]
---
kind: Consumer
name: acme
api_keys: ["{key_hash("acme-key")}"]
"""


def _stack_files(port: int, endpoint: str) -> dict[str, str]:
    return {
        "gateway.yaml": GATEWAY.format(port=port) + "---\n" + SERVICE.format(endpoint=endpoint),
        "auth.yaml": AUTH,
        "routes.yaml": ROUTES.format(version="a"),
    }


async def start_stack(
    policies: Path,
    port: int,
    start_waypost: Callable[..., WaypostProcess],
    start_envoy: Callable[..., EnvoyProcess],
    args: list[str] | None = None,
) -> tuple[WaypostProcess, EnvoyProcess]:
    """waypost (running ext_authz itself, as routes need it) and an Envoy serving ``port``."""
    waypost = await asyncio.to_thread(start_waypost, policies, args=args or [])
    envoy = await asyncio.to_thread(start_envoy, xds_port=waypost.xds_port)
    await asyncio.to_thread(envoy.wait_for_listener, port)
    return waypost, envoy


@pytest.mark.e2e
async def test_a_fifo_does_not_stall_reloads_and_readyz_tells_the_truth(
    tmp_path: Path,
    echo_backend: EchoFactory,
    start_waypost: Callable[..., WaypostProcess],
    start_envoy: Callable[..., EnvoyProcess],
) -> None:
    backend = await echo_backend("echo")
    port = free_ports(1)[0]
    policies = tmp_path / "policies"
    policies.mkdir()
    for name, text in _stack_files(port, backend.address).items():
        (policies / name).write_text(text)
    waypost, _ = await start_stack(policies, port, start_waypost, start_envoy)
    os.mkfifo(policies / "stuck.yaml")
    status = await async_wait_until(
        lambda: (s := waypost.status()["policy"])["last_error"] and s, timeout=15, message="the FIFO refused"
    )
    assert any("stuck.yaml" in e and "FIFO" in e for e in status["last_error"]["errors"])
    assert await asyncio.to_thread(waypost.readyz) == 200  # the previous version serves, truly
    (policies / "stuck.yaml").unlink()
    (policies / "routes.yaml").write_text(ROUTES.format(version="b"))  # reloads still happen
    async with httpx.AsyncClient(trust_env=False, timeout=5) as client:

        async def applied() -> bool:
            response = await client.get(f"http://127.0.0.1:{port}/public")
            return response.status_code == 200 and response.json()["headers"].get("x-version") == "b"

        await async_wait_until(applied, timeout=15)


@pytest.mark.e2e
async def test_a_checkout_serves_its_commit(
    tmp_path: Path,
    echo_backend: EchoFactory,
    start_waypost: Callable[..., WaypostProcess],
    start_envoy: Callable[..., EnvoyProcess],
) -> None:
    backend = await echo_backend("echo")
    port = free_ports(1)[0]
    repo = GitRepo.init(tmp_path / "repo")
    for name, text in _stack_files(port, backend.address).items():
        repo.write(f"policies/{name}", text)
    first = repo.commit_all("policies")
    waypost, _ = await start_stack(repo.path / "policies", port, start_waypost, start_envoy)
    async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
        secure = f"http://127.0.0.1:{port}/secure"
        assert (await client.get(secure)).status_code == 401
        # An uncommitted edit that drops auth (or a half-written file) is not served.
        (repo.path / "policies/routes.yaml").write_text(
            ROUTES.format(version="b").replace("auth: keys\n", "")
        )
        await async_wait_until(lambda: waypost.status()["policy"]["git"]["dirty"], timeout=10)
        for _ in range(10):
            assert (await client.get(secure)).status_code == 401
            await asyncio.sleep(0.05)
        git = waypost.status()["policy"]["git"]
        assert git["commit"] == first and git["describe"] == first[:12] and not git["working_tree"]
        # Committed, it is served (and the version names the new commit).
        second = repo.commit_all("public secure route")

        async def open_now() -> bool:
            return (await client.get(secure)).status_code == 200

        await async_wait_until(open_now, timeout=15)
        assert waypost.status()["policy"]["git"]["describe"] == second[:12]


@pytest.mark.e2e
async def test_slow_in_place_rewrites_never_reach_envoy_half_written(
    tmp_path: Path,
    echo_backend: EchoFactory,
    start_waypost: Callable[..., WaypostProcess],
    start_envoy: Callable[..., EnvoyProcess],
) -> None:
    """routes.yaml is rewritten in place (truncate, then line by line, 40 ms apart), alternating
    two versions; SIGHUP asks for reloads all along. Each prefix of the file is valid YAML: no
    routes (public 404), or the secure route without its ``auth:`` line (200 without a key).
    Through Envoy, neither may ever be seen while the writer never pauses longer than the settle
    window (1 s here, so a loaded machine stalling the writer thread does not count as a bug)."""
    backend = await echo_backend("echo")
    port = free_ports(1)[0]
    policies = tmp_path / "policies"
    policies.mkdir()
    for name, text in _stack_files(port, backend.address).items():
        (policies / name).write_text(text)
    window = 1.0
    waypost, _ = await start_stack(
        policies, port, start_waypost, start_envoy, args=["--reload-debounce", f"{window}s"]
    )
    target = policies / "routes.yaml"
    done = threading.Event()
    gaps: list[float] = []  # between consecutive writes within a rewrite

    def write_slowly() -> None:
        for round_ in range(4):
            lines = ROUTES.format(version="b" if round_ % 2 == 0 else "a").splitlines(keepends=True)
            with target.open("r+") as handle:
                handle.truncate(0)
                handle.flush()
                last = time.monotonic()
                for line in lines:
                    time.sleep(0.04)
                    handle.write(line)
                    handle.flush()
                    gaps.append(time.monotonic() - last)
                    last = time.monotonic()
            time.sleep(2 * window)  # a complete version rests: it is applied
        done.set()

    async def hup() -> None:
        while not done.is_set():
            waypost.send_signal(signal.SIGHUP)
            await asyncio.sleep(0.1)

    seen_versions: set[str] = set()
    problems: list[str] = []
    writer = asyncio.create_task(asyncio.to_thread(write_slowly))
    hupper = asyncio.create_task(hup())
    probes = 0
    async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
        while not done.is_set():
            public = await client.get(f"http://127.0.0.1:{port}/public")
            secure = await client.get(f"http://127.0.0.1:{port}/secure")
            probes += 1
            if public.status_code != 200:
                problems.append(f"public answered {public.status_code}")
            else:
                seen_versions.add(public.json()["headers"].get("x-version", "?"))
            if secure.status_code != 401:
                problems.append(f"secure without a key answered {secure.status_code}")
    await writer
    await hupper
    if problems and max(gaps) >= window:
        pytest.skip(f"the machine stalled the writer {max(gaps):.2f}s, beyond the settle window")
    assert not problems, (problems[:10], f"longest writer pause {max(gaps):.3f}s")
    assert probes > 50 and seen_versions >= {"a", "b"}, (probes, seen_versions)
    assert waypost.running  # SIGHUP reloads, it does not end the process
    assert "SIGHUP: reloading the policy" in waypost.log_text()
