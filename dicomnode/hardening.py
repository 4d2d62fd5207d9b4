"""Config sections for access control, TLS, hostile-input limits and metrics, and the small
functions that apply them to the node's parts (receive, forward, pipeline, node).

Kept apart from config.py/receive.py/forward.py so those files need only one-line hooks.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from dicomnode.security import (
    AccessPolicy,
    SecurityConfigError,
    TLSSettings,
    access_control_handlers,
    client_ssl_context,
    server_ssl_context,
)

if TYPE_CHECKING:
    from dicomnode.guard import IsolatedDecoder, Limits

LOGGER = logging.getLogger(__name__)
MiB = 1024 * 1024


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TLSConfig(_Strict):
    """receive.tls and destinations[].tls. Paths to PEM files."""

    certificate: Path | None = None
    private_key: Path | None = None
    ca_certificates: Path | None = None
    require_client_certificate: bool = True  # receive only
    check_hostname: bool = False  # destinations only
    minimum_version: str = Field("TLSv1_2", pattern=r"^TLSv1_[23]$")

    def settings(self) -> TLSSettings:
        return TLSSettings(
            certificate=self.certificate,
            private_key=self.private_key,
            ca_certificates=self.ca_certificates,
            require_client_certificate=self.require_client_certificate,
            check_hostname=self.check_hostname,
            minimum_version=self.minimum_version,
        )


# allowed_callers: either [AE, ...] or {AE: [address or network, ...] | null}
AllowedCallers = dict[str, list[str] | None] | list[str] | None


def validate_allowed_callers(value: AllowedCallers) -> AllowedCallers:
    AccessPolicy.from_settings(None, value)  # raises SecurityConfigError (a ValueError)
    return value


class GuardConfig(_Strict):
    """Hostile-input limits for the classify stage (dicomnode.guard)."""

    max_pixel_mib: float = Field(512, gt=0)  # declared or codestream-declared decoded size
    timeout_s: float = Field(30.0, gt=0)  # per image at most; over it: unreadable, forwarded
    # Each image's deadline: min_timeout_s + timeout_per_mpixel_s per declared megapixel, at
    # most timeout_s (a small file that decodes for minutes must not hold the queue for long).
    min_timeout_s: float = Field(5.0, gt=0)
    timeout_per_mpixel_s: float = Field(1.0, ge=0)
    # Decode in a killable worker process (time limit, memory cap, survives decoder aborts).
    # false: decode in the worker thread (no time limit; a decoder abort kills the node).
    isolate: bool = True
    worker_memory_mib: float | None = Field(4096, gt=0)
    # The most one decode may hold the classify queue: a film that needs longer is retried in
    # the slow lane with its full deadline, so the films behind it go on. null: no slow lane.
    patience_s: float | None = Field(3.0, gt=0)
    # Images declaring more than this go to the slow lane at once (no patience spent on them).
    slow_lane_mpixel: float = Field(40.0, gt=0)

    def limits(self) -> Limits:
        from dicomnode.guard import Limits

        memory = int(self.worker_memory_mib * MiB) if self.worker_memory_mib else None
        return Limits(
            max_pixel_bytes=int(self.max_pixel_mib * MiB),
            timeout_s=self.timeout_s,
            min_timeout_s=self.min_timeout_s,
            timeout_per_mpixel_s=self.timeout_per_mpixel_s,
            worker_memory_bytes=memory,
            patience_s=self.patience_s,
            slow_lane_mpixel=self.slow_lane_mpixel,
        )


class MetricsConfig(_Strict):
    """Prometheus endpoint (dicomnode.metrics): off by default, loopback when on."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(9464, ge=0, le=65535)


# --- receive ------------------------------------------------------------------------------------

LOOPBACK_NETWORKS = ["127.0.0.0/8", "::1/128"]


def access_policy(receive_config: Any) -> AccessPolicy:
    """The node's own AE title is always the called AE checked. When an allow-list is set and
    `receive.admit_own_ae_from_loopback` is true (the default, documented), the node's own AE
    title calling from loopback is admitted too, so `dicomnode health` works; false: only what
    the list names."""
    callers = receive_config.allowed_callers
    if callers:
        if isinstance(callers, list):
            callers = {title: None for title in callers}
        callers = dict(callers)
        if getattr(receive_config, "admit_own_ae_from_loopback", True):
            callers.setdefault(receive_config.ae_title, LOOPBACK_NETWORKS)
    return AccessPolicy.from_settings(receive_config.ae_title, callers)


def receive_security(receive_config: Any, policy: Any = None
                     ) -> tuple[list[tuple], ssl.SSLContext | None]:  # fmt: skip
    """(evt handlers enforcing the access policy, server SSLContext or None) for start_server;
    `policy` may be a callable giving the current AccessPolicy (a reload changes it)."""
    handlers = access_control_handlers(policy or access_policy(receive_config))
    tls = receive_config.tls
    return handlers, server_ssl_context(tls.settings()) if tls is not None else None


def destination_tls_args(dest: Any) -> tuple[ssl.SSLContext, str | None] | None:
    """tls_args for AE.associate towards a DICOM destination, or None for plain TCP."""
    tls = getattr(dest, "tls", None)
    if tls is None:
        return None
    return client_ssl_context(tls.settings()), dest.host if tls.check_hostname else None


def health_tls_args(receive_config: Any) -> tuple[ssl.SSLContext, None] | None:
    """For `dicomnode health`: talk TLS to our own listener, presenting the node's certificate."""
    tls = receive_config.tls
    if tls is None:
        return None
    settings = tls.settings()
    if settings.ca_certificates is None:
        raise SecurityConfigError("receive.tls.ca_certificates: needed by `dicomnode health`")
    return client_ssl_context(settings), None


# --- classify -----------------------------------------------------------------------------------


def make_decoder(guard_config: GuardConfig) -> IsolatedDecoder | None:
    """One per pipeline worker thread (the decoder serialises its own calls)."""
    from dicomnode.guard import IsolatedDecoder

    return IsolatedDecoder(guard_config.limits()) if guard_config.isolate else None
