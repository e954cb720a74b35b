"""Who is signed in to the portal: signed-cookie sessions, CSRF tokens, sign-in limits, OIDC.

Sessions are Starlette's signed cookies (itsdangerous; ``--portal-secret`` makes replicas share
them). A session holds the Consumer's name and, for key sign-ins, the key's *hash*: a session
ends by itself when that key is revoked. Every state-changing API call must carry the session's
CSRF token in ``x-csrf-token`` (a synchronizer token: another site can send the cookie, but not
read the token). Sign-in attempts are counted per client address and in total with the same
counter store the rate-limit service uses (:class:`~waypost.filters.ratelimit.store.MemoryStore`).
OIDC is Authlib's Starlette client, authorization-code flow, configured from the Portal document.
"""

from __future__ import annotations

import hmac
import os
import secrets
import warnings
from typing import Any, Final

import authlib.deprecate
from starlette.requests import Request

from waypost.filters.authz.identity_sources import hash_api_key
from waypost.filters.ratelimit.store import MemoryStore
from waypost.policies.model import PortalOidc
from waypost.portal.service import PortalError, PortalService, User

with warnings.catch_warnings():
    # Authlib announces a future move to another HTTP client on import; nothing to act on here.
    warnings.simplefilter("ignore", authlib.deprecate.AuthlibDeprecationWarning)
    from authlib.integrations.starlette_client import OAuth

__all__ = ["SIGNIN_LIMIT", "Auth"]

SIGNIN_LIMIT: Final = 10
"""Sign-in attempts allowed per client address per minute (and 20 times that over all clients)."""
_WINDOW_S: Final = 60


class Auth:
    def __init__(self, service: PortalService) -> None:
        self.service = service
        self._attempts = MemoryStore()
        self._oauth: tuple[tuple[str, str], Any] | None = None

    # --- sessions -------------------------------------------------------------------------------

    @staticmethod
    def csrf_token(request: Request) -> str:
        token = request.session.get("csrf")
        if not isinstance(token, str):
            token = request.session["csrf"] = secrets.token_urlsafe(32)
        return token

    @staticmethod
    def check_csrf(request: Request) -> None:
        expected = request.session.get("csrf")
        given = request.headers.get("x-csrf-token", "")
        if not isinstance(expected, str) or not hmac.compare_digest(expected.encode(), given.encode()):
            raise PortalError(403, "missing or wrong CSRF token: send the x-csrf-token of GET /api/session")

    async def user(self, request: Request) -> User | None:
        """The signed-in user, or None; a session whose key was revoked is ended here."""
        session = request.session
        name, subject = session.get("consumer"), session.get("subject")
        key_hash = session.get("key_hash")
        if name is None and subject is None:
            return None
        if isinstance(key_hash, str):
            consumer = (await self.service.policy()).consumers.get(str(name))
            if consumer is not None and key_hash not in consumer.api_keys:
                self.sign_out(request)
                return None
        elif isinstance(subject, str):
            # An OIDC user who signed up since this session began becomes that Consumer.
            found = await self.service.consumer_by_subject(subject)
            if found is not None:
                name = session["consumer"] = found.name
        return User(
            consumer=name if isinstance(name, str) else None,
            subject=subject if isinstance(subject, str) else None,
            email=session.get("email") if isinstance(session.get("email"), str) else None,
        )

    async def require(self, request: Request) -> User:
        user = await self.user(request)
        if user is None:
            raise PortalError(401, "sign in first")
        return user

    async def require_admin(self, request: Request) -> User:
        user = await self.require(request)
        if not await self.service.is_admin(user):
            raise PortalError(403, "admins only")
        return user

    @staticmethod
    def sign_in(request: Request, user: User, *, key_hash: str | None = None) -> None:
        csrf = request.session.get("csrf")
        request.session.clear()  # a fresh session at sign-in: nothing carried over from before
        request.session.update(
            {"consumer": user.consumer, "subject": user.subject, "email": user.email, "key_hash": key_hash}
        )
        request.session["csrf"] = csrf if isinstance(csrf, str) else secrets.token_urlsafe(32)

    @staticmethod
    def sign_out(request: Request) -> None:
        request.session.clear()

    # --- sign-in with a key ---------------------------------------------------------------------

    def count_attempt(self, request: Request) -> None:
        client = request.client.host if request.client is not None else "unknown"
        per_client, overall = self._attempts.hit_sync(
            [(f"signin|{client}", _WINDOW_S), ("signin|*", _WINDOW_S)], 1
        )
        if per_client.used > SIGNIN_LIMIT or overall.used > SIGNIN_LIMIT * 20:
            raise PortalError(429, f"too many sign-in attempts: wait {int(per_client.reset) + 1} s")

    async def sign_in_with_key(self, request: Request, key: str) -> User:
        self.count_attempt(request)
        consumer = await self.service.consumer_by_key(key)
        if consumer is None:
            raise PortalError(401, "unknown API key")
        email = consumer.account.email if consumer.account is not None else None
        user = User(consumer=consumer.name, email=email)
        self.sign_in(request, user, key_hash=hash_api_key(key))
        return user

    # --- OIDC -----------------------------------------------------------------------------------

    async def oidc_client(self) -> Any:
        """Authlib's client for the Portal's ``oidc`` settings (re-made when they change)."""
        settings: PortalOidc | None = (await self.service.portal()).oidc
        if settings is None:
            raise PortalError(404, "this portal has no OIDC sign-in")
        ident = (settings.issuer, settings.client_id)
        if self._oauth is None or self._oauth[0] != ident:
            secret = os.environ.get(settings.client_secret_env)
            if not secret:
                raise PortalError(
                    503, f"OIDC sign-in is not configured: ${settings.client_secret_env} is empty"
                )
            oauth = OAuth()
            oauth.register(
                "oidc",
                client_id=settings.client_id,
                client_secret=secret,
                server_metadata_url=settings.issuer.rstrip("/") + "/.well-known/openid-configuration",
                client_kwargs={"scope": "openid email", "code_challenge_method": "S256"},
            )
            self._oauth = (ident, oauth.create_client("oidc"))
        return self._oauth[1]

    async def oidc_finish(self, request: Request) -> User:
        self.count_attempt(request)
        client = await self.oidc_client()
        try:
            token = await client.authorize_access_token(request)
        except Exception as exc:  # authlib raises its own errors and httpx's: all a failed sign-in
            raise PortalError(401, f"OIDC sign-in failed: {type(exc).__name__}") from None
        claims = token.get("userinfo") or {}
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise PortalError(401, "OIDC sign-in failed: no subject")
        email = claims.get("email") if isinstance(claims.get("email"), str) else None
        consumer = await self.service.consumer_by_subject(subject)
        user = User(consumer=consumer.name if consumer is not None else None, subject=subject, email=email)
        self.sign_in(request, user)
        return user
