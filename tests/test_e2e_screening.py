"""End to end: injection screening through a real Envoy and decision service.

Samples of a public attack corpus (tests/data/threat/, PayloadsAllTheThings) go as query, header,
path and JSON body to a route with ``screen: {body: true}``: each is refused (403) and never
reaches the backend; every refusal is counted once (Envoy's per-rule RBAC stats, waypost's
``waypost_screen_matches_total``) and logged once (Envoy's screen log line, waypost's
``request screened``). Benign real-world traffic (search queries, result URLs and search-result
JSON from the Archive Query Log) passes in every place. A ``mode: log`` route lets attacks through,
counted and logged.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from support import EchoFactory, EnvoyProcess, WaypostProcess, async_wait_until
from threat_support import start_stack
from threat_support.corpus import (
    attacks,
    benign_json,
    benign_queries,
    benign_urls,
    encode_component,
    flagged_in_body,
    flagged_in_header,
    flagged_in_query,
    header_safe,
    json_body,
)
from waypost.policies.screening import RULES

pytestmark = pytest.mark.e2e

PER_CATEGORY = 12


def _attack_samples() -> dict[str, list[str]]:
    """Per category, payloads the rules catch in every place they can travel (the measured rates
    are in docs/threat-protection.md; here Envoy must agree with them)."""
    return {
        category: list(
            itertools.islice(
                (
                    p
                    for p in payloads
                    if header_safe(p)
                    and flagged_in_query(p)
                    and flagged_in_header(p)
                    and flagged_in_body(json_body(p))
                ),
                PER_CATEGORY,
            )
        )
        for category, payloads in attacks().items()
    }


def _screen_log_lines(envoy: EnvoyProcess) -> list[dict[str, str]]:
    lines = []
    for line in envoy.log_text().splitlines():
        if line.startswith("{") and '"event":"screen"' in line.replace(" ", ""):
            lines.append(json.loads(line))
    return lines


async def test_screening_blocks_attacks_and_passes_benign_traffic(
    tmp_path: Path,
    echo_backend: EchoFactory,
    start_waypost: Callable[..., WaypostProcess],
    start_envoy: Callable[..., EnvoyProcess],
) -> None:
    stack = await start_stack(tmp_path, echo_backend, start_waypost, start_envoy)
    backend, envoy, waypost = stack.backend, stack.envoy, stack.waypost
    samples = _attack_samples()
    assert all(len(s) == PER_CATEGORY for s in samples.values()), {k: len(v) for k, v in samples.items()}
    native_blocks = body_blocks = 0
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{stack.port}", trust_env=False, timeout=5
        ) as client:
            # --- attacks: refused everywhere, the backend never sees one ----------------------
            for payload in itertools.chain.from_iterable(samples.values()):
                query = await client.get(f"/screened?q={encode_component(payload)}")
                assert query.status_code == 403, ("query", payload, query.status_code)
                header = await client.get("/screened", headers={"x-search": payload})
                assert header.status_code == 403, ("header", payload, header.status_code)
                path = await client.get("/screened/" + encode_component(payload))
                # Envoy normalizes paths first: an encoded slash is redirected, dot segments are
                # resolved; what is left of the payload is screened.
                assert path.status_code != 200, ("path", payload)
                native_blocks += 2 + (path.status_code == 403)
                body = await client.post(
                    "/screened", content=json_body(payload), headers={"content-type": "application/json"}
                )
                assert body.status_code == 403, ("body", payload, body.status_code)
                assert body.json()["rule"] == flagged_in_body(json_body(payload))
                body_blocks += 1
            assert backend.requests == [], [r.path for r in backend.requests[:3]]

            # --- benign real-world traffic passes in every place -------------------------------
            for query_text in benign_queries()[:150]:
                encoded = encode_component(query_text)
                assert (await client.get(f"/screened?q={encoded}")).status_code == 200, query_text
                if header_safe(query_text):
                    response = await client.get("/screened", headers={"x-search": query_text})
                    assert response.status_code == 200, query_text
                response = await client.post(
                    "/screened", content=json_body(query_text), headers={"content-type": "application/json"}
                )
                assert response.status_code == 200, query_text
            for url in benign_urls()[:150]:
                assert (await client.get("/screened" + url)).status_code == 200, url
            for document in benign_json()[:30]:
                response = await client.post(
                    "/screened", content=document, headers={"content-type": "application/json"}
                )
                assert response.status_code == 200, document[:200]

            # --- log mode: let through, counted and logged -------------------------------------
            before = len(backend.requests)
            sqli = samples["sqli"][0]
            watched = await client.get(f"/watched?q={encode_component(sqli)}")
            assert watched.status_code == 200
            watched_body = await client.post(
                "/watched", content=json_body(sqli), headers={"content-type": "application/json"}
            )
            assert watched_body.status_code == 200
            assert len(backend.requests) == before + 2

        # --- every block counted once, logged once --------------------------------------------
        stats = envoy.stats(filter=r"rbac\.screen\.")
        denied = sum(v for k, v in stats.items() if k.endswith(".denied") and ".policy." in k)
        assert denied == native_blocks, stats
        shadow = sum(v for k, v in stats.items() if k.endswith(".shadow_denied") and ".policy." in k)
        assert shadow == 1, stats

        def logged() -> bool:
            return len(_screen_log_lines(envoy)) == native_blocks + 1

        await async_wait_until(logged, 10, message=lambda: f"{len(_screen_log_lines(envoy))} screen lines")
        lines = _screen_log_lines(envoy)
        assert sum(1 for line in lines if line["blocked_rule"] not in ("", "-", None)) == native_blocks
        assert [line["route"] for line in lines if line["logged_rule"] not in ("", "-", None)] == ["watched"]

        blocked = sum(
            waypost.metric("waypost_screen_matches_total", route="screened", rule=rule.id, mode="block") or 0
            for rule in RULES
        )
        assert blocked == body_blocks
        assert waypost.log_text().count("request screened") == body_blocks + 1
    finally:
        await stack.close()
