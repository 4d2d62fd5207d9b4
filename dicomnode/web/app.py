"""The Starlette application: routes, middleware (security headers, signed session, auth)."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from dicomnode.logdb.store import LogStore
from dicomnode.web import auth, export, pages, review
from dicomnode.web.csrf import Forbidden
from dicomnode.web.errors import error_handler
from dicomnode.web.headers import SecurityHeadersMiddleware
from dicomnode.web.render import STATIC_DIR, message
from dicomnode.web.sessions import SESSION_S, SessionRegistry
from dicomnode.web.settings import WebSettings
from dicomnode.web.throttle import LoginThrottle

SESSION_COOKIE = "dicomnode_session"


async def forbidden(request: Request, exc: Exception) -> Response:
    return message(request, 403, "Forbidden", str(exc))


def build_app(store: LogStore, settings: WebSettings) -> Starlette:
    sessions = SessionRegistry(settings)
    routes = [
        Route("/", pages.search),
        Route("/summary", pages.summary),
        Route("/study/{uid:path}", pages.study),
        Route("/decision/{id:int}", pages.decision),
        Route("/decision/{id:int}/image", pages.image),
        Route("/decision/{id:int}/verdict", review.record_verdict, methods=["POST"]),
        Route("/preview/{key}", pages.preview),
        Route("/review", review.queue),
        Route("/review/summary", review.summary),
        Route("/export.{kind:str}", export.export),
        Route("/login", auth.login, methods=["GET", "POST"]),
        Route("/logout", auth.logout, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    middleware = [
        Middleware(SecurityHeadersMiddleware, tls=settings.tls),
        Middleware(SessionMiddleware, secret_key=settings.session_secret,
                   session_cookie=SESSION_COOKIE, max_age=SESSION_S, same_site="strict",
                   https_only=settings.tls),
        Middleware(auth.AuthMiddleware, settings=settings, sessions=sessions),
    ]
    app = Starlette(routes=routes, middleware=middleware,
                    exception_handlers={Forbidden: forbidden,
                                        Exception: error_handler(settings.tls)})  # fmt: skip
    app.state.store = store
    app.state.settings = settings
    app.state.sessions = sessions
    app.state.throttle = LoginThrottle()
    return app
