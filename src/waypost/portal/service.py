"""What portal users can do, as operations on the policy repository; no HTTP here.

Each operation is one git commit authored as the user (:mod:`waypost.portal.repo`): on the served
branch when nothing needs an admin (a key, a plan with ``approval: false``, an open sign-up), else
on a review branch ``portal/review/<id>`` that an admin approves (the request re-applied on the
served branch, the review branch deleted, one push) or rejects (an empty commit saying so), or
that anyone merges by hand. The fleet sees a change once it is on the served branch, through
``waypost serve --git-pull`` like any commit.

Errors are :class:`PortalError` with the HTTP status the API answers; a push that fails is also
kept in :attr:`PortalService.failures`, shown to the user and the admins (never silently lost).
Keys are generated here, returned once, and never stored, logged or committed: only sha256.
"""

from __future__ import annotations

import asyncio
import datetime
import re
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Final

from waypost.filters.authz.identity_sources import hash_api_key
from waypost.filters.ratelimit.limiter import Limiter, consumer_usage
from waypost.filters.ratelimit.store import StoreUnavailable
from waypost.log import get_logger
from waypost.policies.diagnostics import PolicyError
from waypost.policies.model import Api, Consumer, PolicySet, Portal
from waypost.portal import consumers as edits
from waypost.portal.repo import (
    REVIEW_PREFIX,
    Author,
    CommitFailed,
    Edit,
    InvalidChange,
    PolicyRepo,
    PushFailed,
    Request,
    ReviewRequest,
)

__all__ = ["IssuedKey", "PortalError", "PortalService", "User", "new_key"]

log = get_logger("waypost.portal")

_REFRESH_S: Final = 1.0
_BRANCH_SAFE = re.compile(r"[^A-Za-z0-9._-]")
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9.-]{1,180}")


class PortalError(Exception):
    """An operation refused: ``status`` is the HTTP answer, ``message`` is safe to show."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class User:
    """Who is signed in: a Consumer (by key or OIDC), or an OIDC subject not yet signed up."""

    consumer: str | None
    subject: str | None = None
    email: str | None = None

    @property
    def author(self) -> Author:
        # Both end up in a git author line: only characters that cannot break it out.
        name = _BRANCH_SAFE.sub("-", self.consumer or self.subject or "anonymous")[:100]
        email = self.email if self.email and _EMAIL.fullmatch(self.email) else f"{name}@portal.invalid"
        return Author(name, email)


@dataclass(frozen=True, slots=True)
class IssuedKey:
    key: str
    """Shown once; never stored."""
    key_hash: str
    prefix: str


def new_key() -> IssuedKey:
    prefix = "wpk_" + secrets.token_hex(4)
    key = f"{prefix}_{secrets.token_urlsafe(32)}"
    return IssuedKey(key, hash_api_key(key), prefix)


@dataclass
class _State:
    policy: PolicySet
    commit: str
    at: float


@dataclass
class PortalService:
    repo: PolicyRepo
    limiter: Limiter | None = None
    """Where usage is read. Inside ``waypost serve`` it is the fleet's own (its table follows the
    served policy); a limiter of the portal's own (``waypost portal --redis``) sets
    ``owns_limiter`` and gets each policy the portal reads."""
    owns_limiter: bool = False
    failures: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=200))
    _state: _State | None = None
    _refreshing: asyncio.Lock = field(default_factory=asyncio.Lock)

    # --- reading --------------------------------------------------------------------------------

    async def policy(self, *, fresh: bool = False) -> PolicySet:
        async with self._refreshing:
            state = self._state
            if state is None or fresh or time.monotonic() - state.at > _REFRESH_S:
                try:
                    policy, commit = await asyncio.to_thread(self.repo.load)
                except (CommitFailed, PolicyError) as exc:
                    if state is None:
                        raise PortalError(503, f"policy repository unavailable: {exc}") from None
                    log.error("portal cannot refresh the policy repository", error=str(exc))
                    return state.policy
                state = self._state = _State(policy, commit, time.monotonic())
                if self.owns_limiter and self.limiter is not None:
                    self.limiter.apply(policy)
            return state.policy

    async def portal(self) -> Portal:
        return (await self.policy()).portal or Portal(name="portal")

    async def consumer_by_key(self, key: str) -> Consumer | None:
        digest = hash_api_key(key)
        for consumer in (await self.policy()).consumers.values():
            if digest in consumer.api_keys:
                return consumer
        return None

    async def consumer_by_subject(self, subject: str) -> Consumer | None:
        for consumer in (await self.policy()).consumers.values():
            if consumer.account is not None and consumer.account.subject == subject:
                return consumer
        return None

    async def is_admin(self, user: User) -> bool:
        portal = (await self.policy()).portal
        return portal is not None and portal.is_admin(consumer=user.consumer, subject=user.subject)

    async def reviews(self) -> list[ReviewRequest]:
        return await asyncio.to_thread(self.repo.reviews)

    async def history(self) -> list[dict[str, str]]:
        return await asyncio.to_thread(self.repo.log)

    async def api(self, name: str) -> Api:
        api = (await self.policy()).apis.get(name)
        if api is None:
            raise PortalError(404, f"no Api {name}")
        return api

    async def usage(self, consumer: Consumer) -> list[dict[str, Any]]:
        """Each subscription with its status and, per route, the quota used and remaining."""
        policy = await self.policy()
        out = []
        for subscription in consumer.subscriptions or ():
            kind, target = subscription.target
            plan = subscription.plan or consumer.plan
            routes = []
            for route in policy.subscribed_routes(subscription):
                routes.append({"route": route, "limits": await self._limits(route, consumer.name, plan)})
            out.append(
                {kind: target, "plan": subscription.plan, "status": subscription.status, "routes": routes}
            )
        return out

    async def _limits(self, route: str, consumer: str, plan: str | None) -> list[dict[str, Any]] | None:
        if self.limiter is None:
            return None  # no counters to read in this process: the page says so
        try:
            results = await consumer_usage(self.limiter, route, consumer, plan)
        except StoreUnavailable:
            return None
        return [
            {
                "limit": r.limit,
                "per": r.unit,
                "used": r.limit - r.remaining,
                "remaining": r.remaining,
                "reset_s": round(r.reset, 1),
            }
            for r in results
        ]

    # --- changing -------------------------------------------------------------------------------

    async def _commit(
        self,
        user: User,
        edit: Edit,
        message: str,
        request: Request,
        *,
        review: str | None = None,
        closes: str | None = None,
    ) -> str:
        try:
            commit = await asyncio.to_thread(
                self.repo.commit,
                edit,
                author=user.author,
                message=message,
                request=request,
                branch=review,
                delete_branch=closes,
            )
        except InvalidChange as exc:
            raise PortalError(409, f"the change would not validate: {exc}") from None
        except edits.NotEditable as exc:
            raise PortalError(409, str(exc)) from None
        except ValueError as exc:
            raise PortalError(409, str(exc)) from None
        except CommitFailed as exc:
            # Kept for the user and the admins to see: a request is never silently dropped.
            self.failures.append(
                {"at": time.time(), "by": user.author.name, "action": message, "error": str(exc)}
            )
            log.error(
                "portal change failed", action=request.get("action"), by=user.author.name, error=str(exc)
            )
            status = 502 if isinstance(exc, PushFailed) else 500
            raise PortalError(status, f"the change was not saved: {exc}") from None
        await self.policy(fresh=True)
        return commit

    async def signup(self, user: User, name: str, email: str | None) -> tuple[IssuedKey, str]:
        portal = await self.portal()
        if portal.signup == "closed":
            raise PortalError(403, "sign-up is closed on this portal")
        policy = await self.policy()
        if name in policy.consumers:
            raise PortalError(409, f"the name {name} is taken")
        if user.subject is not None and await self.consumer_by_subject(user.subject) is not None:
            raise PortalError(409, "you have signed up already")
        issued = new_key()
        request: Request = {
            "action": "signup",
            "consumer": name,
            "email": email,
            "subject": user.subject,
            "key_hash": issued.key_hash,
            "prefix": issued.prefix,
            "created": datetime.date.today().isoformat(),
        }
        signed = User(consumer=name, subject=user.subject, email=email or user.email)
        pending = portal.signup == "approval"
        review = f"{REVIEW_PREFIX}signup-{name}" if pending else None
        if any(r.branch == f"{REVIEW_PREFIX}signup-{name}" for r in await self.reviews()):
            raise PortalError(409, f"a sign-up as {name} is waiting for approval")
        await self._commit(signed, _edit_for(request), f"Sign up {name}", request, review=review)
        return issued, "pending" if pending else "active"

    async def create_key(self, user: User, *, replaces: str | None = None) -> IssuedKey:
        consumer = self._own(user)
        issued = new_key()
        today = datetime.date.today()
        if replaces is not None:
            await self._check_key(consumer, replaces)
        edit = edits.add_key(
            consumer, key_hash=issued.key_hash, prefix=issued.prefix, today=today, replaces=replaces
        )
        action = "rotate key" if replaces else "create key"
        request: Request = {"action": action, "consumer": consumer, "key_hash": issued.key_hash}
        verb = f"Rotate key of {consumer}" if replaces else f"New key for {consumer}"
        await self._commit(user, edit, f"{verb} ({issued.prefix})", request)
        return issued

    async def revoke_key(self, user: User, consumer: str, key_hash: str) -> None:
        await self._check_key(consumer, key_hash)
        request: Request = {"action": "revoke key", "consumer": consumer, "key_hash": key_hash}
        await self._commit(user, edits.remove_key(consumer, key_hash), f"Revoke a key of {consumer}", request)

    async def _check_key(self, consumer: str, key_hash: str) -> None:
        found = (await self.policy()).consumers.get(consumer)
        if found is None or key_hash not in found.api_keys:
            raise PortalError(404, "no such key")

    async def subscribe(self, user: User, api_name: str, plan: str | None) -> str:
        consumer = self._own(user)
        api = await self.api(api_name)
        if api.plans and plan not in api.plans:
            raise PortalError(422, f"Api {api_name} offers the plans: {', '.join(api.plans)}")
        if not api.plans and plan is not None:
            raise PortalError(422, f"Api {api_name} has no plans")
        request: Request = {"action": "subscribe", "consumer": consumer, "api": api_name, "plan": plan}
        message = f"Subscribe {consumer} to {api_name}" + (f" on plan {plan}" if plan else "")
        if api.needs_approval(plan):
            # A Team's Api is `<team>~<name>`; `~` may not appear in a git branch name.
            branch_api = api_name.replace("~", ".")
            review = f"{REVIEW_PREFIX}sub-{consumer}-{branch_api}-{secrets.token_hex(3)}"
            await self._commit(user, _edit_for(request), message, request, review=review)
            return "pending"
        await self._commit(user, _edit_for(request), message, request)
        return "approved"

    async def revoke_subscription(self, user: User, consumer: str, api_name: str) -> None:
        found = (await self.policy()).consumers.get(consumer)
        if found is None or not any(s.api == api_name for s in found.subscriptions or ()):
            raise PortalError(404, f"{consumer} has no subscription to {api_name}")
        plan = next((s.plan for s in found.subscriptions or () if s.api == api_name), None)
        edit = edits.set_subscription(consumer, api=api_name, plan=plan, status="revoked")
        request: Request = {"action": "revoke subscription", "consumer": consumer, "api": api_name}
        await self._commit(user, edit, f"Revoke {consumer}'s subscription to {api_name}", request)

    async def decide(self, admin: User, branch: str, *, approve: bool) -> None:
        review = next((r for r in await self.reviews() if r.branch == branch), None)
        if review is None:
            raise PortalError(404, "no such request (decided already, or merged by hand)")
        request = review.request
        what = f"{review.subject} (requested by {review.author})"
        if approve:
            await self._commit(admin, _edit_for(request), f"Approve: {what}", request, closes=branch)
        else:
            await self._commit(
                admin, _nothing, f"Reject: {what}", {"action": "reject", **request}, closes=branch
            )

    def _own(self, user: User) -> str:
        if user.consumer is None:
            raise PortalError(403, "sign up first")
        return user.consumer


def _nothing(policy_dir: object) -> None:
    return None


def _edit_for(request: Request) -> Edit:
    """The edit a recorded request stands for: how an approval re-applies it on today's tip."""
    action = request.get("action")
    consumer = str(request.get("consumer"))
    if action == "signup":
        return edits.new_consumer(
            consumer,
            key_hash=str(request["key_hash"]),
            prefix=str(request["prefix"]),
            email=request.get("email"),
            subject=request.get("subject"),
            today=datetime.date.fromisoformat(str(request["created"])),
        )
    if action == "subscribe":
        plan = request.get("plan")
        return edits.set_subscription(
            consumer, api=str(request["api"]), plan=str(plan) if plan else None, status="approved"
        )
    raise PortalError(422, f"cannot replay a request of kind {action!r}")
