"""The portal's JSON API (``/api/...``, documented at ``/api/openapi.json``); the pages use it.

Request bodies are pydantic models with bounds on every field, so missing, oversized and
malformed input is a 4xx with a JSON body before anything runs; every error is
``{"error": message}`` (validation errors add ``detail``). State-changing calls need the
session's CSRF token (``x-csrf-token``; ``GET /api/session`` returns it).
"""

from typing import Annotated, Any, Literal

import httpx
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from waypost.policies.model import Api, Consumer, PolicySet
from waypost.policies.teams import team_of_name, unknown_team
from waypost.policies.types import NAME_PATTERN, SCOPED_NAME_PATTERN
from waypost.portal.auth import Auth
from waypost.portal.service import PortalError, PortalService, User

__all__ = ["build_api"]

HashHex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
ApiName = Annotated[str, Field(pattern=NAME_PATTERN, max_length=63)]
ScopedApiName = Annotated[str, Field(pattern=SCOPED_NAME_PATTERN, max_length=127)]
"""An Api's name: a Team's Api is ``<team>~<name>``."""


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class KeySignIn(_Body):
    key: str = Field(min_length=1, max_length=200, description="An API key of a Consumer.")


class SignUp(_Body):
    name: str = Field(pattern=NAME_PATTERN, max_length=63, description="The new Consumer's name.")
    email: str | None = Field(default=None, max_length=254, pattern=r"^[^@\s<>]{1,64}@[^@\s<>]{1,180}$")


class SubscriptionRequest(_Body):
    api: str = Field(pattern=SCOPED_NAME_PATTERN, max_length=127)
    plan: str | None = Field(default=None, min_length=1, max_length=63)


class ConsoleRequest(_Body):
    api: str = Field(pattern=SCOPED_NAME_PATTERN, max_length=127)
    method: Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    path: str = Field(pattern=r"^/[^\s]*$", max_length=2000)
    key: str | None = Field(default=None, max_length=200, description="Sent as the Api's key header.")
    body: str | None = Field(default=None, max_length=65_536)


class IssuedKeyOut(BaseModel):
    key: str = Field(description="Shown once: the portal keeps only its sha256.")
    prefix: str
    status: str = "active"


def api_summary(api: Api, policy: PolicySet) -> dict[str, Any]:
    """An Api as the catalog shows it, with each plan's limits read from the RateLimitPolicies."""
    plans = []
    for name, plan in api.plans.items():
        limits = [
            {"policy": rlp.name, "requests": rlp.plans[name].requests, "per": rlp.plans[name].per}
            for rlp in _policies_of(api, policy)
            if name in rlp.plans
        ]
        plans.append(
            {"name": name, "approval": plan.approval, "description": plan.description, "limits": limits}
        )
    return {
        "name": api.name,
        "team": team_of_name(api.name),
        "title": api.title,
        "version": api.version,
        "summary": api.summary,
        "description": api.description,
        "lifecycle": api.lifecycle,
        "sunset": api.sunset.isoformat() if api.sunset else None,
        "routes": list(api.routes),
        "plans": plans,
        "approval": api.approval,
        "has_openapi": api.openapi is not None,
    }


def catalog(policy: PolicySet, team: str | None) -> list[dict[str, Any]]:
    """The catalog, or one team's part of it (its Apis, named ``<team>~<name>``); an unknown team
    is a 400, not an empty catalog."""
    if team is not None and (problem := unknown_team(team, policy.teams)) is not None:
        raise PortalError(400, problem)
    return [
        api_summary(api, policy)
        for api in policy.apis.values()
        if team is None or team_of_name(api.name) == team
    ]


def _policies_of(api: Api, policy: PolicySet) -> list[Any]:
    names = dict.fromkeys(
        p for r in api.routes if r in policy.routes for p in policy.routes[r].rate_limit_policies
    )
    return [policy.rate_limit_policies[n] for n in names if n in policy.rate_limit_policies]


def _keys_of(consumer: Consumer) -> list[dict[str, Any]]:
    info = consumer.account.keys if consumer.account is not None else {}
    return [
        {
            "id": key_hash.removeprefix("sha256:"),
            "prefix": info[key_hash].prefix if key_hash in info else None,
            "created": info[key_hash].created.isoformat() if key_hash in info else None,
        }
        for key_hash in consumer.api_keys
    ]


def build_api(service: PortalService, auth: Auth) -> APIRouter:
    router = APIRouter(prefix="/api")

    async def csrf(request: Request) -> None:
        auth.check_csrf(request)

    async def user(request: Request) -> User:
        return await auth.require(request)

    async def admin(request: Request) -> User:
        return await auth.require_admin(request)

    Csrf = Depends(csrf)
    SignedIn = Annotated[User, Depends(user)]
    Admin = Annotated[User, Depends(admin)]

    @router.get("/apis", tags=["catalog"], summary="The published APIs (or one team's: ?team=)")
    async def list_apis(team: ApiName | None = None) -> list[dict[str, Any]]:
        return catalog(await service.policy(), team)

    @router.get("/apis/{name}", tags=["catalog"], summary="One API, with its plans and limits")
    async def get_api(name: ScopedApiName) -> dict[str, Any]:
        return api_summary(await service.api(name), await service.policy())

    @router.get("/apis/{name}/openapi", tags=["catalog"], summary="The API's OpenAPI document")
    async def get_openapi(name: ScopedApiName) -> Any:
        import yaml

        api = await service.api(name)
        if api.openapi is None:
            raise PortalError(404, f"Api {name} has no OpenAPI document")
        data = (await service.policy()).files.get(api.openapi)
        if data is None:
            raise PortalError(404, "OpenAPI document not loaded")
        return yaml.safe_load(bytes(data))

    @router.get("/session", tags=["session"], summary="Who is signed in, and the CSRF token")
    async def get_session(request: Request) -> dict[str, Any]:
        found = await auth.user(request)
        portal = await service.portal()
        return {
            "csrf": auth.csrf_token(request),
            "user": None if found is None else {"consumer": found.consumer, "subject": found.subject},
            "admin": found is not None and await service.is_admin(found),
            "oidc": portal.oidc is not None,
            "signup": portal.signup,
        }

    @router.post("/session", tags=["session"], summary="Sign in with an API key", dependencies=[Csrf])
    async def sign_in(request: Request, body: KeySignIn) -> dict[str, Any]:
        signed = await auth.sign_in_with_key(request, body.key)
        return {"consumer": signed.consumer, "csrf": auth.csrf_token(request)}

    @router.delete("/session", tags=["session"], summary="Sign out", dependencies=[Csrf])
    async def sign_out(request: Request) -> dict[str, Any]:
        auth.sign_out(request)
        return {"ok": True}

    @router.post("/signup", tags=["account"], summary="Become a Consumer; returns a first key, once")
    async def sign_up(request: Request, body: SignUp, _: None = Csrf) -> IssuedKeyOut:
        current = await auth.user(request) or User(consumer=None)
        if current.consumer is not None:
            raise PortalError(409, "you are signed in as a Consumer already")
        issued, status = await service.signup(current, body.name, body.email or current.email)
        auth.sign_in(
            request,
            User(consumer=body.name, subject=current.subject, email=body.email or current.email),
            key_hash=issued.key_hash if current.subject is None else None,
        )
        return IssuedKeyOut(key=issued.key, prefix=issued.prefix, status=status)

    @router.get("/me", tags=["account"], summary="My keys, subscriptions with usage, failed requests")
    async def me(signed: SignedIn) -> dict[str, Any]:
        consumer = (await service.policy()).consumers.get(signed.consumer or "")
        pending = [
            {"id": r.branch.rsplit("/", 1)[-1], "subject": r.subject, "date": r.date}
            for r in await service.reviews()
            if r.request.get("consumer") == signed.consumer
        ]
        failures = [f for f in service.failures if f["by"] == signed.author.name]
        return {
            "consumer": signed.consumer,
            "subject": signed.subject,
            "status": "active" if consumer is not None else ("pending" if signed.consumer else "new"),
            "keys": _keys_of(consumer) if consumer is not None else [],
            "subscriptions": await service.usage(consumer) if consumer is not None else [],
            "pending": pending,
            "failed": failures,
        }

    @router.post("/keys", tags=["account"], summary="A new API key, shown once", dependencies=[Csrf])
    async def create_key(signed: SignedIn) -> IssuedKeyOut:
        issued = await service.create_key(signed)
        return IssuedKeyOut(key=issued.key, prefix=issued.prefix)

    @router.post("/keys/{key_id}/rotate", tags=["account"], summary="Replace a key", dependencies=[Csrf])
    async def rotate_key(request: Request, key_id: HashHex, signed: SignedIn) -> IssuedKeyOut:
        issued = await service.create_key(signed, replaces=f"sha256:{key_id}")
        if request.session.get("key_hash") == f"sha256:{key_id}":
            request.session["key_hash"] = issued.key_hash  # rotating the key you signed in with
        return IssuedKeyOut(key=issued.key, prefix=issued.prefix)

    @router.delete("/keys/{key_id}", tags=["account"], summary="Revoke one of my keys", dependencies=[Csrf])
    async def revoke_key(key_id: HashHex, signed: SignedIn) -> dict[str, Any]:
        await service.revoke_key(signed, signed.consumer or "", f"sha256:{key_id}")
        return {"ok": True}

    @router.post("/subscriptions", tags=["account"], summary="Subscribe to an API", dependencies=[Csrf])
    async def subscribe(body: SubscriptionRequest, signed: SignedIn) -> dict[str, Any]:
        status = await service.subscribe(signed, body.api, body.plan)
        return {"api": body.api, "plan": body.plan, "status": status}

    @router.post(
        "/console", tags=["catalog"], summary="Send a request through the gateway", dependencies=[Csrf]
    )
    async def console(body: ConsoleRequest, signed: SignedIn) -> dict[str, Any]:
        portal = await service.portal()
        await service.api(body.api)
        if portal.gateway_url is None:
            raise PortalError(404, "this portal has no gateway_url: the console is off")
        headers = {"x-api-key": body.key} if body.key else {}
        try:
            async with httpx.AsyncClient(timeout=10.0) as client:
                answer = await client.request(
                    body.method,
                    portal.gateway_url.rstrip("/") + body.path,
                    headers=headers,
                    content=body.body,
                )
        except httpx.HTTPError as exc:
            raise PortalError(502, f"the gateway did not answer: {type(exc).__name__}") from None
        return {"status": answer.status_code, "headers": dict(answer.headers), "body": answer.text[:65_536]}

    @router.get("/admin/requests", tags=["admin"], summary="Pending sign-ups and subscriptions")
    async def requests(_: Admin) -> dict[str, Any]:
        return {
            "pending": [
                {
                    "id": r.branch.rsplit("/", 1)[-1],
                    "author": r.author,
                    "date": r.date,
                    "subject": r.subject,
                    "request": {k: v for k, v in r.request.items() if k != "key_hash"},
                }
                for r in await service.reviews()
            ],
            "failed": list(service.failures),
        }

    @router.post(
        "/admin/requests/{request_id}/{verdict}",
        tags=["admin"],
        dependencies=[Csrf],
        summary="Approve or reject a request",
    )
    async def decide(
        request_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,200}$")],
        verdict: Literal["approve", "reject"],
        signed: Admin,
    ) -> dict[str, Any]:
        await service.decide(signed, f"portal/review/{request_id}", approve=verdict == "approve")
        return {"ok": True}

    @router.delete(
        "/admin/consumers/{consumer}/keys/{key_id}",
        tags=["admin"],
        dependencies=[Csrf],
        summary="Revoke a Consumer's key",
    )
    async def admin_revoke_key(consumer: ApiName, key_id: HashHex, signed: Admin) -> dict[str, Any]:
        await service.revoke_key(signed, consumer, f"sha256:{key_id}")
        return {"ok": True}

    @router.delete(
        "/admin/consumers/{consumer}/subscriptions/{api}",
        tags=["admin"],
        dependencies=[Csrf],
        summary="Revoke a Consumer's subscription",
    )
    async def admin_revoke_subscription(
        consumer: ApiName, api: ScopedApiName, signed: Admin
    ) -> dict[str, Any]:
        await service.revoke_subscription(signed, consumer, api)
        return {"ok": True}

    @router.get("/admin/log", tags=["admin"], summary="Who did what: the policy directory's git log")
    async def history(_: Admin) -> list[dict[str, str]]:
        return await service.history()

    @router.get("/admin/consumers", tags=["admin"], summary="Every Consumer, keys and subscriptions")
    async def consumers(_: Admin) -> list[dict[str, Any]]:
        policy = await service.policy()
        return [
            {
                "name": c.name,
                "keys": _keys_of(c),
                "subscriptions": [s.model_dump(exclude_none=True) for s in c.subscriptions or ()],
            }
            for c in policy.consumers.values()
        ]

    return router
