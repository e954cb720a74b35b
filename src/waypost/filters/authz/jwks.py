"""JSON Web Key Sets for the `jwt` identity source: from a policy file or an https:// URL.

Each key admits only the algorithms of its own type (RSA keys RS*/PS*, EC keys the ES algorithm
of their curve, OKP keys EdDSA), or just its ``alg`` when the JWK names one. Symmetric (``oct``)
keys are never loaded, so a token signed with HS256 over an RSA public key (the classic
algorithm-confusion attack) finds no key that admits HS256. ``none`` is never admitted.

URL key sets are fetched off the event loop, cached, refreshed every few minutes, and refetched
early (at most every :data:`MIN_REFETCH` seconds) when a token names an unknown ``kid``.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt

from waypost.log import get_logger

__all__ = ["JwkEntry", "KeySet", "RemoteKeySet", "parse_jwks"]

log = get_logger("waypost.authz.jwks")

REFRESH_EVERY = 300.0
MIN_REFETCH = 30.0
FETCH_TIMEOUT = 5.0

_ALGS_BY_KTY: Mapping[str, frozenset[str]] = {
    "RSA": frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}),
    "OKP": frozenset({"EdDSA"}),
}
_ALG_BY_CURVE: Mapping[str, str] = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}


@dataclass(frozen=True, slots=True)
class JwkEntry:
    kid: str | None
    key: Any
    algorithms: frozenset[str]


class KeySet:
    """An immutable set of verification keys, by kid."""

    def __init__(self, entries: tuple[JwkEntry, ...] = ()) -> None:
        self.entries = entries
        self.by_kid = {e.kid: e for e in entries if e.kid is not None}

    def find(self, kid: str | None) -> JwkEntry | None:
        if kid is not None:
            return self.by_kid.get(kid)
        # A token without kid is accepted only when the choice of key is unambiguous.
        return self.entries[0] if len(self.entries) == 1 else None

    @property
    def ready(self) -> bool:
        return True


def parse_jwks(data: bytes | str) -> KeySet:
    """Parse a JWKS document; keys of unsupported or symmetric types are skipped (and logged)."""
    document = json.loads(data)
    raw_keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(raw_keys, list):
        raise ValueError("a JWKS document is an object with a 'keys' list")
    entries = []
    for raw in raw_keys:
        if not isinstance(raw, dict):
            continue
        kty = raw.get("kty")
        if kty == "EC":
            allowed = (
                frozenset({_ALG_BY_CURVE[raw["crv"]]}) if raw.get("crv") in _ALG_BY_CURVE else frozenset()
            )
        else:
            allowed = _ALGS_BY_KTY.get(str(kty), frozenset())
        if raw.get("alg"):
            allowed &= {raw["alg"]}
        if not allowed:
            log.warning("jwks key skipped", kid=raw.get("kid"), kty=kty, alg=raw.get("alg"))
            continue
        try:
            key = jwt.PyJWK(raw, algorithm=sorted(allowed)[0]).key
        except (jwt.PyJWKError, jwt.InvalidKeyError, KeyError, ValueError) as exc:
            log.warning("jwks key skipped", kid=raw.get("kid"), error=str(exc))
            continue
        entries.append(JwkEntry(kid=raw.get("kid"), key=key, algorithms=allowed))
    return KeySet(tuple(entries))


class RemoteKeySet:
    """A key set behind an https:// URL. Shared by every policy version naming the same URL."""

    _instances: dict[str, RemoteKeySet] = {}
    _lock = threading.Lock()

    def __init__(self, url: str) -> None:
        self.url = url
        self._keys = KeySet()
        self._fetched_at = 0.0
        self._attempted_at = 0.0
        self._fetching = False
        self._ready = False

    @classmethod
    def get(cls, url: str) -> RemoteKeySet:
        with cls._lock:
            instance = cls._instances.get(url)
            if instance is None:
                instance = cls._instances[url] = RemoteKeySet(url)
            instance._maybe_refresh(force=False)
            return instance

    @property
    def ready(self) -> bool:
        return self._ready

    def find(self, kid: str | None) -> JwkEntry | None:
        self._maybe_refresh(force=False)
        entry = self._keys.find(kid)
        if entry is None and kid is not None:
            self._maybe_refresh(force=True)
        return entry

    def _maybe_refresh(self, *, force: bool) -> None:
        now = time.monotonic()
        due = now - self._fetched_at > REFRESH_EVERY or not self._ready
        if force:
            due = now - self._attempted_at > MIN_REFETCH
        elif not self._ready:
            due = now - self._attempted_at > 1.0
        if not due or self._fetching:
            return
        self._fetching = True
        self._attempted_at = now
        threading.Thread(target=self._fetch, name="jwks-fetch", daemon=True).start()

    def _fetch(self) -> None:
        try:
            if not self.url.startswith("https://"):
                raise ValueError("JWKS URLs must be https://")
            with urllib.request.urlopen(self.url, timeout=FETCH_TIMEOUT) as response:
                keys = parse_jwks(response.read())
            self._keys = keys
            self._fetched_at = time.monotonic()
            self._ready = True
            log.info("jwks fetched", url=self.url, keys=len(keys.entries))
        except Exception as exc:  # a flaky IdP must not take the decision service down
            log.warning("jwks fetch failed", url=self.url, error=str(exc))
        finally:
            self._fetching = False
