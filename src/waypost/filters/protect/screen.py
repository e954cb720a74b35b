"""Screen a request body with the ``core`` rule set (:mod:`waypost.policies.screening`).

The text screened is what a backend would interpret: a JSON body's string values and keys, a
form body's decoded names and values, any other body as UTF-8 text (undecodable bytes
replaced). All of a route's rules are one compiled alternation, so a body is scanned once.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl

from waypost.policies.screening import ScreenRule, plain_pattern, rules_for

__all__ = ["BodyScreen"]

_MAX_DEPTH = 64


class BodyScreen:
    """Compiled once per route and policy version; ``match`` is thread-safe."""

    def __init__(self, categories: tuple[str, ...]) -> None:
        self.rules: tuple[ScreenRule, ...] = rules_for(categories)
        self._regex = re.compile(
            "|".join(f"(?P<r{index}>{plain_pattern(rule)})" for index, rule in enumerate(self.rules)),
            re.IGNORECASE | re.DOTALL,
        )

    def match(self, body: bytes, content_type: str) -> str | None:
        """The id of the first rule matching the body's text, or None."""
        for text in _texts(body, content_type):
            found = self._regex.search(text)
            if found is not None and found.lastgroup is not None:
                return self.rules[int(found.lastgroup[1:])].id
        return None


def _texts(body: bytes, content_type: str) -> Iterator[str]:
    media = content_type.split(";", 1)[0].strip().lower()
    text = body.decode("utf-8", errors="replace")
    if media.endswith("json"):
        try:
            yield from _strings(json.loads(text), 0)
            return
        except (ValueError, RecursionError):
            pass  # not JSON after all: screened as text
    elif media == "application/x-www-form-urlencoded":
        for key, value in parse_qsl(text, keep_blank_values=True):
            yield key
            yield value
        return
    yield text


def _strings(value: Any, depth: int) -> Iterator[str]:
    if depth > _MAX_DEPTH:
        return
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _strings(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item, depth + 1)
