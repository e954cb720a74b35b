"""Who may reach waypost's ports: loopback unless told otherwise, and guarded when told.

- Every port binds to ``127.0.0.1`` unless ``--host`` (or ``--admin-host``) says otherwise.
- The admin port (dashboard, ``/status``, ``/metrics``) requires authentication whenever it is
  not on loopback: a bearer token (``--admin-token-file`` or ``WAYPOST_ADMIN_TOKEN``; browsers
  send it as the Basic-auth password) or client certificates (``--admin-ca``, with
  ``--admin-cert``/``--admin-key``). ``/healthz`` and ``/readyz`` stay open for probes. Without
  either, waypost refuses to start.
- Decision ports (ext_authz gRPC and HTTP, rate limits) answer only the client networks of
  ``--decision-allow`` when not on loopback: anyone else could spend a consumer's quota with
  ``hits_addend`` or guess API keys. Without an allow-list, waypost refuses to start.
"""

from __future__ import annotations

import base64
import hmac
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from waypost.peers import PeerFilter, is_loopback

__all__ = ["ADMIN_TOKEN_ENV", "AdminAuth", "exposure_problems", "read_admin_token"]

ADMIN_TOKEN_ENV = "WAYPOST_ADMIN_TOKEN"


def read_admin_token(path: Path | None, environ: Mapping[str, str] = os.environ) -> str | None:
    """The admin token from ``path`` (first line, stripped) or the environment; ValueError when
    the file is unreadable or the token is too short to resist guessing."""
    if path is not None:
        try:
            text = path.read_text().strip()
        except OSError as exc:
            raise ValueError(f"--admin-token-file {path}: {exc.strerror}") from None
        token = text.split("\n", 1)[0].strip()
    else:
        token = environ.get(ADMIN_TOKEN_ENV, "").strip()
        if not token:
            return None
    if len(token) < 16:
        raise ValueError("the admin token must be at least 16 characters (try: openssl rand -hex 24)")
    return token


@dataclass(frozen=True)
class AdminAuth:
    """How admin requests authenticate: a token, and/or client certificates on TLS."""

    token: str | None = None
    cert: Path | None = None
    key: Path | None = None
    client_ca: Path | None = None

    @property
    def required(self) -> bool:
        return self.token is not None or self.client_ca is not None

    def ssl_context(self) -> ssl.SSLContext | None:
        """TLS for the admin port (``--admin-cert``); with a client CA, certificates are required."""
        if self.cert is None or self.key is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        if self.client_ca is not None:
            context.load_verify_locations(self.client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    def allows(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header value carries the token (Bearer, or Basic with the
        token as password). Always true without a token: TLS already checked the certificate."""
        if self.token is None:
            return True
        if not authorization:
            return False
        scheme, _, value = authorization.strip().partition(" ")
        presented = value.strip()
        if scheme.lower() == "basic":
            try:
                presented = base64.b64decode(presented, validate=True).decode().partition(":")[2]
            except (ValueError, UnicodeDecodeError):
                return False
        elif scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(presented.encode(), self.token.encode())


def exposure_problems(
    *,
    admin_host: str | None,
    admin_auth: AdminAuth,
    decision_host: str | None,
    decision_allow: PeerFilter | None,
) -> list[str]:
    """Why this combination must not start (empty: fine). ``None`` hosts: that port is off."""
    problems = []
    if admin_host is not None and not is_loopback(admin_host) and not admin_auth.required:
        problems.append(
            f"the admin port would listen on {admin_host} without authentication: set "
            f"{ADMIN_TOKEN_ENV} or --admin-token-file (or --admin-ca for client certificates), "
            "or keep it on loopback (--admin-host 127.0.0.1)"
        )
    if decision_host is not None and not is_loopback(decision_host) and decision_allow is None:
        problems.append(
            f"the decision ports (ext_authz, rate limits) would answer anyone on {decision_host}: "
            "name the Envoys' networks with --decision-allow CIDR, or keep them on loopback"
        )
    return problems
