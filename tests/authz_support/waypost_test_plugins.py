"""Custom auth plugins the authz tests load by `module:function` (this directory is put on the
decision service's PYTHONPATH)."""

from __future__ import annotations

import asyncio
from typing import Any


def team_token(request: dict[str, Any]) -> dict[str, Any] | None:
    token = request["headers"].get("x-team-token")
    if token is None:
        return None
    if token != "let-me-in":
        return {"allow": False, "status": 401, "reason": "bad team token"}
    return {"allow": True, "consumer": "team-a", "headers": {"x-waypost-team": "a"}}


async def team_token_async(request: dict[str, Any]) -> dict[str, Any] | None:
    await asyncio.sleep(0)
    return team_token(request)


def crash(request: dict[str, Any]) -> None:
    raise RuntimeError("plugin bug")


async def slow(request: dict[str, Any]) -> None:
    await asyncio.sleep(10)
