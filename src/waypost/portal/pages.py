"""The portal's pages: server-rendered HTML (Jinja2, autoescaped) over the same data as the API.

Pages only read; every change is a call to the JSON API made by ``static/portal.js`` with the
session's CSRF token, so the API is the one way in. The OIDC redirects live here because they are
browser navigations, not API calls.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from markdown_it import MarkdownIt

from waypost.portal.api import api_summary, catalog
from waypost.portal.auth import Auth
from waypost.portal.service import PortalService

__all__ = ["build_pages"]

_TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
# Raw HTML in a description is shown as text, and markdown-it refuses javascript: links.
_MARKDOWN = MarkdownIt("commonmark", {"html": False})


def build_pages(service: PortalService, auth: Auth) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    async def render(request: Request, template: str, **context: Any) -> HTMLResponse:
        user = await auth.user(request)
        portal = await service.portal()
        return _TEMPLATES.TemplateResponse(
            request,
            template,
            {
                "portal": portal,
                "user": user,
                "admin": user is not None and await service.is_admin(user),
                "csrf": auth.csrf_token(request),
                **context,
            },
        )

    @router.get("/", response_class=HTMLResponse)
    async def catalog_page(request: Request, team: str | None = None) -> HTMLResponse:
        policy = await service.policy()
        apis = catalog(policy, team or None)
        return await render(request, "catalog.html", apis=apis, teams=sorted(policy.teams), team=team or "")

    @router.get("/apis/{name}", response_class=HTMLResponse)
    async def api_page(request: Request, name: str) -> HTMLResponse:
        api = await service.api(name)
        summary = api_summary(api, await service.policy())
        return await render(request, "api.html", api=summary, description=_MARKDOWN.render(api.description))

    @router.get("/apis/{name}/reference", response_class=HTMLResponse)
    async def reference(request: Request, name: str) -> HTMLResponse:
        api = await service.api(name)
        return await render(request, "reference.html", api=api)

    @router.get("/signin", response_class=HTMLResponse)
    async def signin(request: Request) -> HTMLResponse:
        return await render(request, "signin.html")

    @router.get("/signup", response_class=HTMLResponse)
    async def signup(request: Request) -> HTMLResponse:
        return await render(request, "signup.html")

    @router.get("/account", response_class=HTMLResponse)
    async def account(request: Request) -> Response:
        user = await auth.user(request)
        if user is None:
            return RedirectResponse("/signin", status_code=303)
        consumer = (await service.policy()).consumers.get(user.consumer or "")
        if consumer is None and user.consumer is None:
            return RedirectResponse("/signup", status_code=303)
        return await render(request, "account.html", consumer=consumer)

    @router.get("/admin", response_class=HTMLResponse)
    async def admin(request: Request) -> HTMLResponse:
        await auth.require_admin(request)
        return await render(request, "admin.html")

    @router.get("/signin/oidc")
    async def oidc_start(request: Request) -> Response:
        auth.count_attempt(request)
        client = await auth.oidc_client()
        redirect: Response = await client.authorize_redirect(request, str(request.url_for("oidc_callback")))
        return redirect

    @router.get("/signin/oidc/callback", name="oidc_callback")
    async def oidc_callback(request: Request) -> Response:
        user = await auth.oidc_finish(request)
        return RedirectResponse("/account" if user.consumer else "/signup", status_code=303)

    return router
