"""Signed-in sessions (reviewers', and readers' opened with ?token=): what the signed cookie
holds, and the checks on every request.

The cookie (Starlette's SessionMiddleware: signed with the server secret, not encrypted) holds a
random `sid`, `started` and `seen` times, and for a reviewer the name and a fingerprint of the
stored password hash (a changed password ends the session), for a reader a keyed fingerprint of
the token (a rotated token ends it). Neither the token nor the hash is readable from it.

A session ends at logout (its sid is revoked, in memory, until any copy of its cookie would have
expired: a copy taken before logout no longer works), after `web.session_idle_min` without a
request, and SESSION_S after it started, however busy.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

from dicomnode.web.settings import WebSettings

SESSION_S = 12 * 3600  # a signed-in browser session lasts a working day at most


def fingerprint(settings: WebSettings, kind: str, secret_value: str) -> str:
    """A keyed digest of a token or a stored hash: binds a session to it without revealing it."""
    key = (settings.session_secret or "").encode()
    message = f"dicomnode-web-{kind}:{secret_value}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()[:32]


class SessionRegistry:
    """The server's side of the sessions: revoked sids, until their cookies expire anyway."""

    def __init__(self, settings: WebSettings, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self._revoked: dict[str, float] = {}  # sid -> when forgetting it is safe
        self._lock = threading.Lock()

    @property
    def idle_s(self) -> float:
        return self.settings.session_idle_min * 60

    def start(self, session: dict[str, Any], **values: str) -> None:
        """A fresh session (nothing from before carries over) with a new sid."""
        session.clear()
        now = int(self.clock())
        session.update(sid=secrets.token_urlsafe(16), started=now, seen=now, **values)

    def revoke(self, session: dict[str, Any]) -> None:
        sid = session.get("sid")
        now = self.clock()
        with self._lock:
            if isinstance(sid, str):
                self._revoked[sid] = now + SESSION_S + self.idle_s
            for old in [s for s, until in self._revoked.items() if until <= now]:
                del self._revoked[old]
        session.clear()

    def check(self, session: dict[str, Any]) -> bool:
        """Whether the session is live (touching it: now is its last use); a dead one is
        revoked and emptied."""
        if "sid" not in session:  # nobody signed in (a login form's CSRF token at most)
            return False
        sid, started, seen = session.get("sid"), session.get("started"), session.get("seen")
        now = self.clock()
        with self._lock:
            revoked = sid in self._revoked
        live = (isinstance(sid, str) and not revoked and isinstance(started, int)
                and isinstance(seen, int) and now - seen <= self.idle_s
                and now - started <= SESSION_S)  # fmt: skip
        if not live:
            self.revoke(session)
            return False
        session["seen"] = int(now)
        return True
