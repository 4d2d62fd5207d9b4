"""Failures of a request: one log line (exception type and route), never the message or the
traceback, which may carry patient data (a query's values, a UID in a path)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from dicomnode.web.headers import security_headers

log = logging.getLogger("dicomnode.web")
PAGE = ("<!doctype html><title>Error</title><h1>Error</h1>"
        "<p class=error>The log query failed.</p>")  # fmt: skip


def route_of(scope: Scope) -> str:
    """The matched route's template (/decision/{id:int}), not the path: no UIDs in logs."""
    endpoint = scope.get("endpoint")
    for route in getattr(scope.get("app"), "routes", ()):
        if endpoint is not None and getattr(route, "endpoint", None) is endpoint:
            return route.path
    return "(no route)"


def error_handler(tls: bool) -> Callable[[Request, Exception], Awaitable[Response]]:
    async def server_error(request: Request, exc: Exception) -> Response:
        # the page says so; the server stays up for the next request
        log.error("web view: %s %s failed: %s", request.method, route_of(request.scope),
                  type(exc).__name__)
        return HTMLResponse(PAGE, status_code=500, headers=security_headers(request.url.path, tls))

    return server_error


class QuietErrors:
    """The outermost ASGI layer given to uvicorn: Starlette re-raises an error after its 500
    page (so servers can log it) and uvicorn would log the full traceback with the exception's
    text. server_error has logged its line already; the exception ends here."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        except Exception:  # logged by server_error, without its text
            return
