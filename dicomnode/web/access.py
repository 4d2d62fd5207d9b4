"""Who saw patient data: one INFO line per decision viewed, image or preview downloaded and
export made, on the `dicomnode.web.access` logger: the user (a reviewer's name or "reader"), the
route's template, the row id (or key, or the number of rows exported) and the peer address.
Never a UID, a patient ID or a query's values."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TypeVar

from starlette.requests import Request

from dicomnode.web.auth import peer_of
from dicomnode.web.errors import route_of

log = logging.getLogger("dicomnode.web.access")
T = TypeVar("T")


def _user(request: Request) -> str:
    user = getattr(request.state, "user", None)
    return user.label if user is not None else "nobody"


def record(request: Request, what: str) -> None:
    """One access line; `what` names the rows (e.g. "id 42"), never their contents."""
    log.info("web access: %s %s %s (%s) from %s", _user(request), request.method,
             route_of(request.scope), what, peer_of(request))


def counted(request: Request, rows: Iterator[T]) -> Iterator[T]:
    """A streamed export's rows; its line, with how many went out, once the stream ends (or the
    client went away)."""
    count = 0
    try:
        for row in rows:
            count += 1
            yield row
    finally:
        record(request, f"{count} rows")
