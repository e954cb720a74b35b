"""Run the README's serve + bootstrap + envoy lines exactly as written, in a network namespace.

``unshare --net --mount --ipc python -m support.readme_run WORKDIR LINES.json``: inside a fresh network
namespace (its own loopback, so the README's fixed ports cannot collide with anything else on the
machine) it starts the example backends, runs each README line with ``sh -c`` in WORKDIR (which
holds a copy of ``policies/``), and prints one JSON object: the statuses of the API-key route
without a key, with the acme key, and three times with the trial key (plan: 2 a minute).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

GATEWAY = "http://127.0.0.1:8080/partner/orders/7"


def status(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str]]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers)


def main() -> int:
    workdir, lines_file = Path(sys.argv[1]), Path(sys.argv[2])
    lines = json.loads(lines_file.read_text())
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    # Envoy's hot-restart shared memory lives in /dev/shm: a private one (unshare --mount) keeps
    # this Envoy's base id 0 from meeting another Envoy's on the machine.
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", "/dev/shm"], check=True)
    children: list[subprocess.Popen[bytes]] = []
    log = open(workdir / "readme-run.log", "ab")  # noqa: SIM115 - lives as long as the children
    try:
        for name, port in (("orders", 9101), ("catalog", 9102)):
            children.append(
                subprocess.Popen(
                    [sys.executable, "-m", "waypost.demo.echo", "--name", name, "--port", str(port)],
                    stdout=log,
                    stderr=log,
                    start_new_session=True,
                )
            )
        # The lines, exactly: serve and envoy keep running, bootstrap writes its file.
        children.append(
            subprocess.Popen(
                ["sh", "-c", lines["serve"]], cwd=workdir, stdout=log, stderr=log, start_new_session=True
            )
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                if status("http://127.0.0.1:9902/readyz")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("waypost never became ready")
            time.sleep(0.2)
        subprocess.run(["sh", "-c", lines["bootstrap"]], cwd=workdir, check=True, stderr=log)
        children.append(
            subprocess.Popen(
                ["sh", "-c", lines["envoy"]], cwd=workdir, stdout=log, stderr=log, start_new_session=True
            )
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                code, headers = status(GATEWAY, {"x-api-key": "demo-acme-key"})
                if code == 200 and "ratelimit-limit" in headers:
                    break  # listener, clusters and both decision services answer
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("Envoy never answered through the gateway with limit headers")
            time.sleep(0.2)
        result = {
            "no_key": status(GATEWAY)[0],
            "acme": status(GATEWAY, {"x-api-key": "demo-acme-key"})[0],
            "trial": [status(GATEWAY, {"x-api-key": "demo-trial-key"})[0] for _ in range(3)],
        }
        print(json.dumps(result))
        return 0
    finally:
        for child in reversed(children):
            # Each child leads its own process group (sh may fork the line): end the group.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGTERM)
        for child in children:
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)
                child.wait()


if __name__ == "__main__":
    raise SystemExit(main())
