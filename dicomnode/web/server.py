"""Serve the web view with uvicorn in a background thread (the node's, or `dicomnode log web`'s).

The listening socket is bound here, before the thread starts, so a port in use fails at once with
a message naming the listener, and port 0 reports the port it got.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from typing import Any

import uvicorn

from dicomnode.logdb.store import LogStore
from dicomnode.web.app import build_app
from dicomnode.web.errors import QuietErrors
from dicomnode.web.settings import WebConfigError, WebSettings

log = logging.getLogger(__name__)
START_TIMEOUT_S = 30.0
GRACEFUL_S = 5
# Forward-secret AEAD suites only, whatever the installed uvicorn's default (older ones offered
# "TLSv1"): TLS 1.0 and 1.1 have none of them, so TLS 1.2 is the floor; TLS 1.3's own suites
# are all AEAD and stay on.
TLS_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


class WebServer:
    """A running web view; stop() shuts it down (open connections get GRACEFUL_S to finish)
    and frees the port."""

    def __init__(self, store: LogStore, settings: WebSettings, sock: socket.socket) -> None:
        self.settings = settings
        self.socket = sock
        config = uvicorn.Config(
            QuietErrors(build_app(store, settings)),
            lifespan="off",
            access_log=False,  # why: request lines carry UIDs and patient IDs
            log_config=None,  # the node's logging stays as configured
            log_level="warning",
            server_header=False,
            timeout_graceful_shutdown=GRACEFUL_S,
            ssl_certfile=settings.tls_cert,
            ssl_keyfile=settings.tls_key,
            ssl_ciphers=TLS_CIPHERS,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._run, name="dicomnode-web", daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            self.server.run(sockets=[self.socket])
        except BaseException as exc:  # reported by start(); the thread ends
            self.error = exc

    def start(self) -> WebServer:
        self.thread.start()
        deadline = threading.Event()
        waited = 0.0
        while not self.server.started and self.thread.is_alive() and waited < START_TIMEOUT_S:
            deadline.wait(0.02)
            waited += 0.02
        if not self.server.started:
            self.stop()
            raise WebConfigError(f"web view did not start: {self.error or 'timed out'}")
        return self

    @property
    def port(self) -> int:
        return self.socket.getsockname()[1]

    @property
    def url(self) -> str:
        host = self.socket.getsockname()[0]
        scheme = "https" if self.settings.tls else "http"
        return f"{scheme}://{f'[{host}]' if ':' in host else host}:{self.port}/"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=GRACEFUL_S + 10)
        if self.thread.is_alive():  # a connection that would not close: drop it
            self.server.force_exit = True
            self.thread.join(timeout=10)
        self.socket.close()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:  # name the listener: the node has several
        sock.close()
        raise OSError(f"web view listener (web.host/port) cannot bind {host}:{port}: "
                      f"{exc.strerror or exc}") from None
    return sock


def _check_tls(settings: WebSettings) -> None:
    if not settings.tls:
        return
    try:  # the files are read now, so a bad path or key fails the start with a clear message
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.set_ciphers(TLS_CIPHERS)
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise WebConfigError(f"web.tls_cert/web.tls_key: cannot load {settings.tls_cert} with "
                             f"{settings.tls_key}: {exc}") from None


def start_web(store: LogStore, host: str = "127.0.0.1", port: int = 8480,
              token: str | None = None, patient_form: str = "plain", patient_salt: str = "",
              reviewers: dict[str, str] | None = None, session_secret: str | None = None,
              tls_cert: str | None = None, tls_key: str | None = None,
              spool_root: str | None = None, session_idle_min: float = 30.0) -> WebServer:
    """Serve the view on host:port (port 0: any free port) in a background thread; full images
    come from the spool at spool_root only (none without one)."""
    settings = WebSettings(host=host, port=port, token=token, reviewers=dict(reviewers or {}),
                           session_secret=session_secret, tls_cert=tls_cert, tls_key=tls_key,
                           patient_form=patient_form, patient_salt=patient_salt,
                           spool_root=spool_root, session_idle_min=session_idle_min)  # fmt: skip
    _check_tls(settings)
    if settings.secret_generated and settings.reviewers:
        log.warning("web view: no web.session_secret configured; a random one signs sessions "
                    "until this process stops (reviewers log in again after a restart)")
    return WebServer(store, settings, _bind(host, port)).start()


def settings_from_config(web_config: Any, log_config: Any,
                         spool_path: Any = None) -> dict[str, Any]:
    return {
        "host": web_config.host, "port": web_config.port, "token": web_config.token,
        "reviewers": {r.name: r.password_hash for r in getattr(web_config, "reviewers", [])},
        "session_secret": getattr(web_config, "session_secret", None),
        "tls_cert": getattr(web_config, "tls_cert", None),
        "tls_key": getattr(web_config, "tls_key", None),
        "patient_form": getattr(log_config, "patient_id", "plain"),
        "patient_salt": getattr(log_config, "patient_id_salt", ""),
        "spool_root": str(spool_path) if spool_path is not None else None,
        "session_idle_min": getattr(web_config, "session_idle_min", 30.0),
    }  # fmt: skip


def start_web_from_config(store: LogStore, web_config: Any, log_config: Any,
                          spool_path: Any = None) -> WebServer | None:
    """For the node: start the view if `web.enabled`, with the log's patient ID form and the
    node's spool (where full images are served from)."""
    if not getattr(web_config, "enabled", False):
        return None
    return start_web(store, **settings_from_config(web_config, log_config, spool_path))
