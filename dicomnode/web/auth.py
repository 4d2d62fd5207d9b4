"""Who is asking: reviewers (name + password, a signed session), read-only users (the token as
Bearer, or ?token= once, which starts a session; or anyone on loopback when no token is set);
login (throttled, off the event loop) and logout (the session revoked)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from urllib.parse import urlencode

from starlette.concurrency import run_in_threadpool
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.types import ASGIApp

from dicomnode.addresses import is_loopback
from dicomnode.web.csrf import checked_form, csrf_token, same
from dicomnode.web.passwords import dummy_verify, verify_password
from dicomnode.web.render import message, render
from dicomnode.web.sessions import SessionRegistry, fingerprint
from dicomnode.web.settings import WebSettings
from dicomnode.web.throttle import LoginThrottle

log = logging.getLogger("dicomnode.web")
PUBLIC_PATHS = ("/login", "/static/")


@dataclass(frozen=True)
class User:
    name: str | None  # the reviewer's name; None for a read-only user
    reviewer: bool

    @property
    def label(self) -> str:
        """Who, in the access log: the reviewer's name or "reader"."""
        return self.name if self.reviewer and self.name else "reader"


READER = User(None, False)


def peer_of(request: Request) -> str:
    return request.client.host if request.client else "?"


def _offered_token(request: Request) -> tuple[str | None, bool]:
    header = request.headers.get("authorization", "")
    if header.startswith("Bearer "):
        return header.removeprefix("Bearer ").strip(), False
    query = request.query_params.get("token")
    return (query, True) if query else (None, False)


def resolve_user(request: Request, settings: WebSettings, sessions: SessionRegistry) -> User | None:
    session = request.session
    if sessions.check(session):
        name = session.get("reviewer")
        stored = settings.reviewers.get(name) if isinstance(name, str) else None
        if stored is not None and same(session.get("fp", ""),
                                       fingerprint(settings, "reviewer", stored)):
            return User(name, True)
        reader = session.get("reader")
        if (settings.token is not None and isinstance(reader, str)
                and same(reader, fingerprint(settings, "reader", settings.token))):
            return READER
        sessions.revoke(session)  # a changed password or token: the session ends
    if settings.token is not None:
        offered, from_query = _offered_token(request)
        if offered is not None and same(offered, settings.token):
            if from_query:  # the browser keeps a signed session, never the token itself
                sessions.start(session, reader=fingerprint(settings, "reader", settings.token))
            return READER
    if settings.open_to_loopback:
        return READER
    return None


def loopback_host_header(request: Request) -> bool:
    host = request.headers.get("host", "")
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return is_loopback(name.strip("[]"))


def wants_html(request: Request) -> bool:
    """A browser's request (a page or a form), not a script's."""
    return "text/html" in request.headers.get("accept", "")


def to_login(next_path: str) -> Response:
    """A browser whose session ended goes to the login page, and back to next_path after."""
    return RedirectResponse("/login?" + urlencode({"next": next_path}), status_code=303)


def next_after_login(request: Request) -> str:
    """Where a browser sent to log in returns: the page it asked for (a verdict's form: its
    decision page), never with a token in the address."""
    path = request.url.path
    if request.method != "GET":
        return path.removesuffix("/verdict") if path.endswith("/verdict") else "/review"
    query = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "token"])
    return f"{path}?{query}" if query else path


class AuthMiddleware(BaseHTTPMiddleware):
    def __init__(self, app: ASGIApp, settings: WebSettings, sessions: SessionRegistry) -> None:
        super().__init__(app)
        self.settings = settings
        self.sessions = sessions

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        request.state.user = None
        if self.settings.token is None and self.settings.open_to_loopback and not (
            loopback_host_header(request)
        ):
            # why: without a token, loopback is the only protection; a page on another site
            # could reach it by DNS rebinding, which shows up as a foreign Host header
            return message(request, 403, "Forbidden", "Use http://127.0.0.1 or localhost.")
        user = resolve_user(request, self.settings, self.sessions)
        request.state.user = user
        if user is None and not request.url.path.startswith(PUBLIC_PATHS):
            if self.settings.reviewers and wants_html(request):
                return to_login(next_after_login(request))
            hint = " or log in as a reviewer" if self.settings.reviewers else ""
            return message(request, 401, "Sign-in required", f"This view needs the token{hint}.")
        return await call_next(request)


def safe_next(target: str | None, default: str = "/review") -> str:
    if target and target.startswith("/") and not target.startswith(("//", "/\\")):
        return target
    return default


def login_page(request: Request, settings: WebSettings, status: int = 200,
               error: str = "") -> Response:
    return render(request, "login.html", status=status, title="Reviewer login", error=error,
                  csrf=csrf_token(request), next=safe_next(request.query_params.get("next")),
                  has_reviewers=bool(settings.reviewers))  # fmt: skip


async def login(request: Request) -> Response:
    settings: WebSettings = request.app.state.settings
    throttle: LoginThrottle = request.app.state.throttle
    if request.method == "GET":
        return login_page(request, settings)
    form = await checked_form(request, reviewer=False)
    name, password, peer = form.get("name", "")[:64], form.get("password", ""), peer_of(request)
    wait = throttle.retry_after(name, peer)
    if wait > 0:
        log.warning("web view: login refused for %r from %s: locked out for a while", name, peer)
        response = login_page(request, settings, 429, f"Too many failed logins: try again in "
                                                      f"{int(wait) + 1} seconds.")
        response.headers["Retry-After"] = str(int(wait) + 1)
        return response
    stored = settings.reviewers.get(name)
    if stored is None:  # the same time for an unknown name
        await run_in_threadpool(dummy_verify, password)
        ok = False
    else:  # scrypt takes tens of milliseconds: off the event loop, which serves everyone
        ok = await run_in_threadpool(verify_password, password, stored)
    if not ok or stored is None:  # (stored is None: ok is False)
        throttle.failed(name, peer)
        log.warning("web view: failed login for %r from %s", name, peer)
        return login_page(request, settings, 401, "Wrong name or password.")
    throttle.succeeded(name)
    request.app.state.sessions.start(request.session, reviewer=name,
                                     fp=fingerprint(settings, "reviewer", stored))
    csrf_token(request)
    return RedirectResponse(safe_next(form.get("next")), status_code=303)


async def logout(request: Request) -> Response:
    await checked_form(request, reviewer=False)
    request.app.state.sessions.revoke(request.session)
    return RedirectResponse("/login", status_code=303)
