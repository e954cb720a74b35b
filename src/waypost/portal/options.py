"""How the portal is run: plain options, importable without the web stack (the CLI builds them)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["SECRET_ENV", "PortalOptions"]

SECRET_ENV = "WAYPOST_PORTAL_SECRET"


@dataclass(frozen=True, kw_only=True)
class PortalOptions:
    port: int
    host: str = "0.0.0.0"
    repo: str | None = None
    """Git URL or path of the upstream; None: the upstream of ``policies``' checkout."""
    branch: str | None = None
    """The served branch; None: the checkout's upstream branch, else ``main``."""
    subdir: str | None = None
    """The policy directory inside the repository; None: where ``policies`` is in its checkout."""
    policies: Path | None = None
    workdir: Path | None = None
    https_only: bool = False
    """Session cookies are sent over HTTPS only (set it when the portal is behind TLS)."""
    secret: str | None = None
    """Signs session cookies (the same on every replica); None: ``$WAYPOST_PORTAL_SECRET`` or random."""
