"""CSRF protection of the POSTs: the synchronizer token pattern. The token lives in the session
(which SessionMiddleware signs with the server secret); every form sends it back in its `csrf`
field. POSTs also need a reviewer, login and logout aside."""

from __future__ import annotations

import hmac
import secrets

from starlette.requests import Request


class Forbidden(Exception):
    """A POST by someone who may not make it, or with a missing or forged CSRF token."""


def csrf_token(request: Request) -> str:
    """The session's CSRF token (made on first use); forms send it back in the `csrf` field."""
    token = request.session.get("csrf")
    if not token:
        token = request.session["csrf"] = secrets.token_urlsafe(32)
    return token


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


async def checked_form(request: Request, reviewer: bool = True) -> dict[str, str]:
    """The POSTed form, after the role and CSRF checks (Forbidden -> 403)."""
    user = request.state.user
    if reviewer and not (user and user.reviewer):
        raise Forbidden("only reviewers may change anything here")
    form = await request.form()
    offered = form.get("csrf")
    expected = request.session.get("csrf")
    if not (isinstance(offered, str) and expected and same(offered, expected)):
        raise Forbidden("the form's CSRF token is missing or wrong: reload the page")
    return {k: v for k, v in form.items() if isinstance(v, str)}
