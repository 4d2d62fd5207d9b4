"""Who is asking: reviewers (name + password, a signed session), read-only users (the token as
Bearer, or ?token= once, which starts a session; or anyone on loopback when no token is set).

POSTs need a reviewer (403 otherwise, login and logout aside) and the session's CSRF token in
the form's `csrf` field (403 otherwise): the synchronizer token pattern, the token living in the
session that SessionMiddleware signs with the server secret.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from dicomnode.addresses import is_loopback
from dicomnode.web.passwords import dummy_verify, verify_password
from dicomnode.web.render import csrf_token, message, render
from dicomnode.web.settings import WebSettings

PUBLIC_PATHS = ("/login", "/static/")
SESSION_S = 12 * 3600  # a signed-in browser session lasts a working day


@dataclass(frozen=True)
class User:
    name: str | None  # the reviewer's name; None for a read-only user
    reviewer: bool


READER = User(None, False)


class Forbidden(Exception):
    """A POST by someone who may not make it, or with a missing or forged CSRF token."""


def _offered_token(request: Request) -> tuple[str | None, bool]:
    header = request.headers.get("authorization", "")
    if header.startswith("Bearer "):
        return header.removeprefix("Bearer ").strip(), False
    query = request.query_params.get("token")
    return (query, True) if query else (None, False)


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def _fingerprint(token: str) -> str:
    """Marks a reader's session with the token it was opened with (a rotated token ends it)."""
    return hashlib.sha256(b"dicomnode-web-reader:" + token.encode()).hexdigest()[:24]


def resolve_user(request: Request, settings: WebSettings) -> User | None:
    session = request.session
    name = session.get("reviewer")
    if isinstance(name, str) and name in settings.reviewers:
        return User(name, True)
    if settings.token is not None:
        offered, from_query = _offered_token(request)
        if offered is not None and _same(offered, settings.token):
            if from_query:  # the browser keeps a signed session, never the token itself
                session["reader"] = _fingerprint(settings.token)
            return READER
        reader = session.get("reader")
        if isinstance(reader, str) and _same(reader, _fingerprint(settings.token)):
            return READER
    if settings.open_to_loopback:
        return READER
    return None


def loopback_host_header(request: Request) -> bool:
    host = request.headers.get("host", "")
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return is_loopback(name.strip("[]"))


class AuthMiddleware(BaseHTTPMiddleware):
    def __init__(self, app, settings: WebSettings) -> None:
        super().__init__(app)
        self.settings = settings

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        request.state.user = None
        if self.settings.token is None and self.settings.open_to_loopback and not (
            loopback_host_header(request)
        ):
            # why: without a token, loopback is the only protection; a page on another site
            # could reach it by DNS rebinding, which shows up as a foreign Host header
            return message(request, 403, "Forbidden", "Use http://127.0.0.1 or localhost.")
        user = resolve_user(request, self.settings)
        request.state.user = user
        if user is None and not request.url.path.startswith(PUBLIC_PATHS):
            hint = " or log in as a reviewer" if self.settings.reviewers else ""
            return message(request, 401, "Sign-in required", f"This view needs the token{hint}.")
        return await call_next(request)


async def checked_form(request: Request, reviewer: bool = True) -> dict[str, str]:
    """The POSTed form, after the role and CSRF checks (Forbidden -> 403)."""
    user = request.state.user
    if reviewer and not (user and user.reviewer):
        raise Forbidden("only reviewers may change anything here")
    form = await request.form()
    offered = form.get("csrf")
    expected = request.session.get("csrf")
    if not (isinstance(offered, str) and expected and _same(offered, expected)):
        raise Forbidden("the form's CSRF token is missing or wrong: reload the page")
    return {k: v for k, v in form.items() if isinstance(v, str)}


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
    if request.method == "GET":
        return login_page(request, settings)
    form = await checked_form(request, reviewer=False)
    name, password = form.get("name", ""), form.get("password", "")
    stored = settings.reviewers.get(name)
    if stored is None:
        dummy_verify(password)  # the same time for an unknown name
        ok = False
    else:
        ok = verify_password(password, stored)
    if not ok:
        return login_page(request, settings, 401, "Wrong name or password.")
    request.session.clear()  # a fresh session: nothing from before the login carries over
    request.session["reviewer"] = name
    csrf_token(request)
    return RedirectResponse(safe_next(form.get("next")), status_code=303)


async def logout(request: Request) -> Response:
    await checked_form(request, reviewer=False)
    request.session.clear()
    return RedirectResponse("/login", status_code=303)
