"""`dicomnode health`: one line and an exit code for systemd, Docker HEALTHCHECK and monitoring.

Healthy means: the node answers C-ECHO on its own listener (over TLS when configured), the spool's
file system has room, and the log database answers. The line also says what is queued and
failed, so a glance shows a stuck destination without failing the check for it.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MiB = 1024 * 1024
GiB = 1024 * MiB
DEFAULT_MIN_FREE_BYTES = 512 * MiB


@dataclass
class HealthReport:
    problems: list[str] = field(default_factory=list)
    facts: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def line(self) -> str:
        if self.ok:
            return "OK " + "; ".join(self.facts)
        return "FAIL " + "; ".join(self.problems + self.facts)


def _echo(config: Any, timeout: float) -> tuple[str | None, str | None]:
    """(fact, problem) for a C-ECHO to the node's own listener."""
    from dicomnode.hardening import health_tls_args
    from dicomnode.identity import node_ae

    recv = config.receive
    host = "127.0.0.1" if recv.host in ("0.0.0.0", "", "::") else recv.host
    target = f"{recv.ae_title}@{host}:{recv.port}"
    ae = node_ae(recv.ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context("1.2.840.10008.1.1")
    started = time.perf_counter()
    try:
        tls_args = health_tls_args(recv) if getattr(recv, "tls", None) is not None else None
        assoc = ae.associate(host, recv.port, ae_title=recv.ae_title, tls_args=tls_args)
    except Exception as exc:
        return None, f"echo {target}: {type(exc).__name__}: {exc}"
    if assoc.is_rejected:
        rj = assoc.acceptor.primitive
        return None, (
            f"echo {target}: association rejected (result {rj.result}, source "
            f"{rj.result_source}, reason {rj.diagnostic})"
        )
    if not assoc.is_established:
        return None, f"echo {target}: no association (not listening, or TLS refused)"
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    elapsed_ms = (time.perf_counter() - started) * 1000
    if "Status" not in status or int(status.Status) != 0:
        return None, f"echo {target}: C-ECHO failed"
    return f"echo {target} {elapsed_ms:.0f} ms", None


def _spool(config: Any, min_free_bytes: int) -> tuple[list[str], list[str]]:
    from dicomnode.spool import FAILED, INCOMING, OUTGOING, PROCESSING, Spool

    root = Path(config.spool.path)
    probe = root if root.exists() else root.parent
    facts: list[str] = []
    problems: list[str] = []
    try:
        free = shutil.disk_usage(probe).free
    except OSError as exc:
        return facts, [f"spool {root}: {exc.strerror or exc}"]
    disk = f"disk {free / GiB:.1f} GiB free"
    if free < min_free_bytes:
        problems.append(f"{disk} (< {min_free_bytes / MiB:.0f} MiB)")
    else:
        facts.append(disk)
    if root.is_dir():
        spool = Spool(root)
        counts = spool.counts()
        in_flight = counts.get(INCOMING, 0) + counts.get(PROCESSING, 0)
        queued = {k.split("/", 1)[1]: v for k, v in counts.items() if k.startswith(OUTGOING + "/")}
        failed = sum(v for k, v in counts.items() if k.startswith(FAILED + "/"))
        backlog = ", ".join(f"{name} {n}" for name, n in queued.items() if n) or "none"
        facts.append(f"in flight {in_flight}; queued: {backlog}; failed {failed}")
    return facts, problems


def _log_database(config: Any, timeout: float) -> tuple[str | None, str | None]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from dicomnode.logdb.store import normalise_url, sqlite_file

    url = normalise_url(config.log.url)
    backend = make_url(url).get_backend_name()
    path = sqlite_file(url)
    if path is not None and not path.exists():
        return None, f"log {path}: missing (the node creates it on start)"
    connect_args = {"connect_timeout": int(timeout)} if backend == "postgresql" else {}
    engine = create_engine(url, connect_args=connect_args)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:
        return None, f"log {backend}: {type(exc).__name__}"
    finally:
        engine.dispose()
    return f"log {backend} ok", None


def check_health(
    config: Any, timeout: float = 10.0, min_free_bytes: int = DEFAULT_MIN_FREE_BYTES
) -> HealthReport:
    report = HealthReport()
    for fact, problem in (_echo(config, timeout), _log_database(config, timeout)):
        if fact:
            report.facts.append(fact)
        if problem:
            report.problems.append(problem)
    facts, problems = _spool(config, min_free_bytes)
    report.facts.extend(facts)
    report.problems.extend(problems)
    return report
