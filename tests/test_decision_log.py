"""The per-decision JSON log line: the same line structlog would write, one write per loop turn."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest

from waypost.filters.authz.decision_log import DecisionLog
from waypost.log import configure_logging


@pytest.fixture(autouse=True)
def json_logs() -> Iterator[None]:
    configure_logging("info", json=True)
    yield
    configure_logging("info")


def _lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    return [json.loads(line) for line in capsys.readouterr().err.splitlines()]


def test_outside_a_loop_each_line_is_written_at_once(capsys: pytest.CaptureFixture[str]) -> None:
    log = DecisionLog()
    log("orders", "acme", "allow", 200, "allowed", False, 12)
    (line,) = _lines(capsys)
    assert line["route"] == "orders" and line["consumer"] == "acme" and line["status"] == 200
    assert line["event"] == "authz decision" and line["level"] == "info"
    assert str(line["timestamp"]).endswith("Z")


async def test_on_a_loop_the_lines_of_one_turn_leave_together_in_order(
    capsys: pytest.CaptureFixture[str],
) -> None:
    log = DecisionLog()
    for index in range(3):
        log("orders", f"c{index}", "deny", 401, 'say "no"', False, index)
    assert capsys.readouterr().err == ""  # not yet: at the end of this turn
    await asyncio.sleep(0)
    lines = _lines(capsys)
    assert [line["consumer"] for line in lines] == ["c0", "c1", "c2"]
    assert lines[0]["reason"] == 'say "no"'
    log("orders", "c3", "allow", 200, "allowed", True, 1)
    await asyncio.sleep(0)
    (line,) = _lines(capsys)
    assert line["consumer"] == "c3" and line["dry_run"] is True


async def test_a_new_logging_setup_takes_the_lines_of_the_old_one_first(
    capsys: pytest.CaptureFixture[str],
) -> None:
    log = DecisionLog()
    log("orders", "c0", "allow", 200, "allowed", False, 1)
    configure_logging("warning", json=True)  # decisions are info: nothing more is written
    log("orders", "c1", "allow", 200, "allowed", False, 1)
    await asyncio.sleep(0)
    assert [line["consumer"] for line in _lines(capsys)] == ["c0"]
