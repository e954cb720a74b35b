"""The portal's edits to policy files: one Consumer per file under ``portal/consumers/``.

Each function returns an :data:`~waypost.portal.repo.Edit`: a change to the policy directory
as it is at the moment the edit runs (the tip of the branch, fetched just before), so a retried
commit re-applies the intent rather than a stale patch. The portal only writes the files it owns;
a Consumer written by hand elsewhere is read-only here (:class:`NotEditable`).

Keys never reach these files: only ``sha256:`` hashes, and the key's public prefix and date.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import yaml

from waypost.portal.repo import Edit

__all__ = [
    "CONSUMER_DIR",
    "NotEditable",
    "add_key",
    "consumer_file",
    "new_consumer",
    "remove_key",
    "set_subscription",
]

CONSUMER_DIR: Final = "portal/consumers"
_HEADER: Final = (
    "# yaml-language-server: $schema=../../../schema/waypost.schema.json\n"
    "# Written by the developer portal (waypost.portal): one Consumer per file.\n"
)


class NotEditable(ValueError):
    """The Consumer does not exist in the portal's folder (absent, or written by hand elsewhere)."""


def consumer_file(policy_dir: Path, name: str) -> Path:
    return policy_dir / CONSUMER_DIR / f"{name}.yaml"


def _read(policy_dir: Path, name: str) -> dict[str, Any]:
    path = consumer_file(policy_dir, name)
    try:
        document = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise NotEditable(f"Consumer {name} is not managed by the portal") from None
    if not isinstance(document, dict) or document.get("name") != name:
        raise NotEditable(f"{CONSUMER_DIR}/{name}.yaml does not hold Consumer {name}")
    return document


def _write(policy_dir: Path, name: str, document: dict[str, Any]) -> None:
    path = consumer_file(policy_dir, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_HEADER + yaml.safe_dump(document, sort_keys=False, default_flow_style=None))


def _change(name: str, change: Callable[[dict[str, Any]], None]) -> Edit:
    def edit(policy_dir: Path) -> None:
        document = _read(policy_dir, name)
        change(document)
        _write(policy_dir, name, document)

    return edit


def new_consumer(
    name: str, *, key_hash: str, prefix: str, email: str | None, subject: str | None, today: datetime.date
) -> Edit:
    """A new Consumer with one key and no subscriptions (so it may call nothing yet)."""

    def edit(policy_dir: Path) -> None:
        if consumer_file(policy_dir, name).exists():
            raise ValueError(f"Consumer {name} already exists")
        account: dict[str, Any] = {}
        if email:
            account["email"] = email
        if subject:
            account["subject"] = subject
        account["keys"] = {key_hash: {"prefix": prefix, "created": today.isoformat()}}
        document = {
            "kind": "Consumer",
            "name": name,
            "api_keys": [key_hash],
            "subscriptions": [],
            "account": account,
        }
        _write(policy_dir, name, document)

    return edit


def add_key(
    name: str, *, key_hash: str, prefix: str, today: datetime.date, replaces: str | None = None
) -> Edit:
    """Add a key (rotation: and drop ``replaces`` in the same commit)."""

    def change(document: dict[str, Any]) -> None:
        keys = [k for k in document.get("api_keys") or [] if k != replaces]
        document["api_keys"] = [*keys, key_hash]
        account = document.setdefault("account", {}) or {}
        info = account.setdefault("keys", {}) or {}
        info.pop(replaces, None)
        info[key_hash] = {"prefix": prefix, "created": today.isoformat()}
        account["keys"] = info
        document["account"] = account

    return _change(name, change)


def remove_key(name: str, key_hash: str) -> Edit:
    def change(document: dict[str, Any]) -> None:
        keys = list(document.get("api_keys") or [])
        if key_hash not in keys:
            raise ValueError("no such key")
        document["api_keys"] = [k for k in keys if k != key_hash]
        account = document.get("account") or {}
        (account.get("keys") or {}).pop(key_hash, None)

    return _change(name, change)


def set_subscription(name: str, *, api: str, plan: str | None, status: str) -> Edit:
    """Set the Consumer's subscription to ``api`` (replacing any earlier one to it)."""

    def change(document: dict[str, Any]) -> None:
        kept = [s for s in document.get("subscriptions") or [] if s.get("api") != api]
        entry: dict[str, Any] = {"api": api}
        if plan is not None:
            entry["plan"] = plan
        entry["status"] = status
        document["subscriptions"] = [*kept, entry]

    return _change(name, change)
