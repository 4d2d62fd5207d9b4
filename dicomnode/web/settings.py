"""What the web view is started with, and the rule for exposing it beyond loopback.

No web framework imported here: the node's config validation uses check_exposure.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from dicomnode.addresses import is_loopback
from dicomnode.security import MIN_SECRET_LENGTH
from dicomnode.web.passwords import parse_hash


class WebConfigError(ValueError):
    """The web view's settings would expose the log (a public address without auth or TLS)."""


def check_exposure(host: str, token: str | None, has_reviewers: bool, tls_cert: str | None,
                   tls_key: str | None) -> None:
    """Refuse settings that would serve patient data beyond this machine unauthenticated or in
    clear text; the message names the fix."""
    if bool(tls_cert) != bool(tls_key):
        raise WebConfigError("web.tls_cert and web.tls_key go together: set both (PEM files) or "
                             "neither")
    if is_loopback(host):
        return
    if token is None and not has_reviewers:
        raise WebConfigError(
            f"host {host!r} is not a loopback address: set web.token (read-only access) or "
            "web.reviewers to serve the log beyond this machine, or use 127.0.0.1"
        )
    if not tls_cert:
        raise WebConfigError(
            f"host {host!r} is not a loopback address: beyond this machine the view needs TLS; "
            "set web.tls_cert and web.tls_key (PEM certificate and key), or use 127.0.0.1"
        )


@dataclass
class WebSettings:
    host: str = "127.0.0.1"
    port: int = 8480
    token: str | None = None
    reviewers: dict[str, str] = field(default_factory=dict)  # name -> scrypt hash
    session_secret: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    patient_form: str = "plain"
    patient_salt: str = ""
    spool_root: str | None = None  # the node's spool: full images are served from it alone
    session_idle_min: float = 30.0  # a signed-in session ends after this long without a request
    secret_generated: bool = False

    def __post_init__(self) -> None:
        self.token = self.token or None
        if self.token is not None and len(self.token) < MIN_SECRET_LENGTH:
            raise WebConfigError(f"web view: the token must be at least {MIN_SECRET_LENGTH} "
                                 "characters (e.g. python -c 'import secrets; "
                                 "print(secrets.token_urlsafe(24))')")
        check_exposure(self.host, self.token, bool(self.reviewers), self.tls_cert, self.tls_key)
        for name, stored in self.reviewers.items():
            try:
                parse_hash(stored)
            except ValueError as exc:
                raise WebConfigError(f"web.reviewers {name}: {exc}") from None
        if self.session_idle_min <= 0:
            raise WebConfigError("web.session_idle_min: a positive number of minutes")
        if not self.session_secret:
            self.session_secret = secrets.token_urlsafe(32)
            self.secret_generated = True

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert)

    @property
    def open_to_loopback(self) -> bool:
        """Anyone on this machine may read (no token): the old default. Reviewers log in."""
        return self.token is None and is_loopback(self.host)
