"""The portal's web application: the JSON API, the pages, Swagger UI's files, and the guards.

:func:`create_app` builds a FastAPI app around one :class:`~waypost.portal.service.PortalService`.
Guards, outermost first: a body-size limit (413 beyond :data:`MAX_BODY`, 411 for a body of unknown
length), signed-cookie sessions, and error handlers that turn every refusal into a JSON body
``{"error": ...}`` (pages too answer JSON errors: they are rendered by the same API calls).
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException
from starlette.middleware.sessions import SessionMiddleware
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send
from swagger_ui_bundle import swagger_ui_path

import waypost
from waypost.log import get_logger
from waypost.portal.api import build_api
from waypost.portal.auth import Auth
from waypost.portal.pages import build_pages
from waypost.portal.service import PortalError, PortalService

__all__ = ["MAX_BODY", "create_app"]

log = get_logger("waypost.portal")

MAX_BODY: Final = 256 * 1024
"""Largest request body accepted: the biggest legitimate one is a console request (64 KiB)."""
SESSION_MAX_AGE_S: Final = 8 * 3600
_STATIC = Path(__file__).parent / "static"


class BodyLimit:
    """413 for a declared body over ``limit``; 411 for a body without a length (chunked)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("POST", "PUT", "PATCH", "DELETE"):
            headers = dict(scope["headers"])
            length = headers.get(b"content-length")
            refusal: tuple[int, str] | None = None
            if length is None and headers.get(b"transfer-encoding"):
                refusal = (411, "a request body needs a content-length")
            elif length is not None and (not length.isdigit() or int(length) > self.limit):
                refusal = (413, f"request body over {self.limit} bytes")
            if refusal is not None:
                await JSONResponse({"error": refusal[1]}, status_code=refusal[0])(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(service: PortalService, *, secret: str | None = None, https_only: bool = False) -> FastAPI:
    """The portal app. ``secret`` signs session cookies: give every replica the same one."""
    app = FastAPI(
        title="waypost developer portal",
        version=waypost.__version__,
        openapi_url="/api/openapi.json",
        docs_url=None,
        redoc_url=None,
        description="The catalog, self-service keys and subscriptions. Every change is a git commit.",
    )
    auth = Auth(service)
    app.include_router(build_api(service, auth))
    app.include_router(build_pages(service, auth))
    app.mount("/static/swagger-ui", StaticFiles(directory=swagger_ui_path), name="swagger-ui")
    app.mount("/static/portal", StaticFiles(directory=_STATIC), name="portal-static")

    @app.get("/api/docs", include_in_schema=False)
    async def api_docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/api/openapi.json",
            title="waypost portal API",
            swagger_js_url="/static/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url="/static/swagger-ui/swagger-ui.css",
            swagger_favicon_url="/static/swagger-ui/favicon-32x32.png",
        )

    @app.exception_handler(PortalError)
    async def portal_error(request: Request, exc: PortalError) -> JSONResponse:
        headers = {"retry-after": "60"} if exc.status == 429 else None
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # Never echo the input back: a pasted key may be in it.
        detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
        return JSONResponse({"error": "invalid request", "detail": detail}, status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        log.exception("portal request failed", path=request.url.path)
        return JSONResponse({"error": "internal error"}, status_code=500)

    app.add_middleware(
        SessionMiddleware,
        secret_key=secret or secrets.token_urlsafe(32),
        session_cookie="waypost_portal",
        max_age=SESSION_MAX_AGE_S,
        same_site="lax",
        https_only=https_only,
    )
    app.add_middleware(BodyLimit, limit=MAX_BODY)
    return app
