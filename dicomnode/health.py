"""`dicomnode health`: one line and an exit code for systemd, Docker HEALTHCHECK and monitoring.

Healthy means: the node answers C-ECHO on its own listener (over TLS when configured), the spool's
file system has room, the log database answers, and no destination has been failing (the head
of its queue not delivered) for longer than --max-failing-min. The line also says, per
destination, whether it answers C-ECHO, how many images wait and for how long.

Three states, one line each: `OK`, `DEGRADED` (working, with something an operator should look
at: images given up on in failed/, images a discard rule sent nowhere within the last
--discarded-window-min, a reload that needs a restart) and `FAIL`. Exit 0 for OK and DEGRADED
(a restart fixes none of those; Docker and systemd restart on non-zero), 1 for FAIL.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MiB = 1024 * 1024
GiB = 1024 * MiB
DEFAULT_MIN_FREE_BYTES = 512 * MiB
DEFAULT_MAX_FAILING_S = 600.0  # a destination failing this long makes the node unhealthy
DEFAULT_DISCARDED_WINDOW_S = 3600.0  # discards this recent make the node DEGRADED


@dataclass
class HealthReport:
    problems: list[str] = field(default_factory=list)
    facts: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # DEGRADED: look at it, still working

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def state(self) -> str:
        return "FAIL" if self.problems else "DEGRADED" if self.warnings else "OK"

    @property
    def line(self) -> str:
        return f"{self.state} " + "; ".join(self.problems + self.warnings + self.facts)


def _c_echo(calling_ae: str, host: str, port: int, called_ae: str, timeout: float,
            tls_args: Any) -> tuple[float | None, str | None]:
    """One C-ECHO as the node: (milliseconds, None) when it succeeds, else (None, why)."""
    from dicomnode.identity import node_ae

    ae = node_ae(calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context("1.2.840.10008.1.1")
    started = time.perf_counter()
    try:
        assoc = ae.associate(host, port, ae_title=called_ae, tls_args=tls_args)
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}"
    if assoc.is_rejected:
        rj = assoc.acceptor.primitive
        return None, (f"association rejected (result {rj.result}, source {rj.result_source}, "
                      f"reason {rj.diagnostic})")
    if not assoc.is_established:
        return None, "no association (not listening, or TLS refused)"
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    if "Status" not in status or int(status.Status) != 0:
        return None, "C-ECHO failed"
    return (time.perf_counter() - started) * 1000, None


def _echo(config: Any, timeout: float) -> tuple[str | None, str | None]:
    """(fact, problem) for a C-ECHO to the node's own listener."""
    from dicomnode.hardening import health_tls_args

    recv = config.receive
    host = "127.0.0.1" if recv.host in ("0.0.0.0", "", "::") else recv.host
    target = f"{recv.ae_title}@{host}:{recv.port}"
    try:
        tls_args = health_tls_args(recv) if getattr(recv, "tls", None) is not None else None
    except Exception as exc:
        return None, f"echo {target}: {type(exc).__name__}: {exc}"
    elapsed_ms, problem = _c_echo(recv.ae_title, host, recv.port, recv.ae_title, timeout,
                                  tls_args)  # fmt: skip
    if problem is not None:
        return None, f"echo {target}: {problem}"
    return f"echo {target} {elapsed_ms:.0f} ms", None


def _spool(config: Any, min_free_bytes: int,
           discarded_window_s: float = DEFAULT_DISCARDED_WINDOW_S) -> tuple[list[str], list[str],
                                                                       list[str]]:
    """(facts, problems, warnings) of the spool: free space, in flight, queued, failed/ and
    recent discards."""
    from dicomnode.spool import DISCARDED, FAILED, INCOMING, OUTGOING, PROCESSING, SENT, Spool

    root = Path(config.spool.path)
    probe = root if root.exists() else root.parent
    facts: list[str] = []
    problems: list[str] = []
    warnings: list[str] = []
    try:
        free = shutil.disk_usage(probe).free
    except OSError as exc:
        return facts, [f"spool {root}: {exc.strerror or exc}"], warnings
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
        facts.append(f"in flight {in_flight}; queued: {backlog}")
        if failed:
            where = ", ".join(k.split("/", 1)[1] for k, v in counts.items()
                              if k.startswith(FAILED + "/") and v)
            warnings.append(f"failed {failed} (given up on, in failed/{where}: see `dicomnode "
                            f"queue list`, then retry or purge)")
        else:
            facts.append("failed 0")
        recent = _recent(spool.dir(SENT, DISCARDED), time.time() - discarded_window_s)
        if recent:
            warnings.append(f"discarded {recent} in the last {discarded_window_s / 60:.0f} min "
                            f"(a discard rule sent them nowhere: sent/{DISCARDED}/, `dicomnode "
                            f"log query --delivery discarded`)")
    return facts, problems, warnings


def _recent(folder: Path, since: float) -> int:
    """Instances (.json beside each .dcm) written to folder at or after `since`."""
    if not folder.is_dir():
        return 0
    count = 0
    for meta in folder.glob("*.json"):
        with contextlib.suppress(OSError):  # purged meanwhile
            count += meta.stat().st_mtime >= since
    return count


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


def _destinations(config: Any, timeout: float, max_failing_s: float,
                  now: float | None = None) -> tuple[list[str], list[str]]:
    """Per destination: reachable (C-ECHO, DICOM only), queue depth, oldest waiting; a problem
    when the head of its queue has been failing for longer than max_failing_s."""
    from dicomnode.hardening import destination_tls_args
    from dicomnode.spool import OUTGOING, Spool

    now = time.time() if now is None else now
    spool = Spool(config.spool.path)
    facts, problems = [], []
    for dest in config.destinations:
        names = spool.names(OUTGOING, dest.name) if spool.root.is_dir() else []
        parts = []
        if getattr(dest, "type", "") == "dicom":
            try:
                tls_args = destination_tls_args(dest)
            except Exception as exc:  # unusable TLS files: the peer cannot be reached
                problem: str | None = str(exc)
            else:
                _, problem = _c_echo(dest.calling_ae_title or config.receive.ae_title, dest.host,
                                     dest.port, dest.ae_title, min(timeout, 5.0), tls_args)
            parts.append("unreachable" if problem else "reachable")
        parts.append(f"queue {len(names)}")
        head = spool.read_meta(spool.dir(OUTGOING, dest.name) / f"{names[0]}.dcm") if names \
            else {}  # fmt: skip
        if names:
            try:
                oldest = (spool.dir(OUTGOING, dest.name) / f"{names[0]}.dcm").stat().st_mtime
                parts.append(f"oldest waiting {now - oldest:.0f} s")
            except OSError:
                pass
        facts.append(f"{dest.name}: " + ", ".join(parts))
        since = head.get("failing_since")
        if since is not None and now - float(since) > max_failing_s:
            problems.append(f"destination {dest.name} failing for {now - float(since):.0f} s "
                            f"(> {max_failing_s:.0f} s): {head.get('last_detail', '')}")
    return facts, problems


def _oldest_age(paths: list[Path]) -> float | None:
    """Seconds since the oldest of these files still there was written; None when none is. The
    log writer removes each event as the database takes it, so one listed may be gone."""
    for path in paths:
        try:
            return time.time() - path.stat().st_mtime
        except FileNotFoundError:
            continue
    return None


def _journal(config: Any, max_failing_s: float) -> tuple[list[str], list[str], list[str]]:
    """Log events waiting in the spool for the database (an outage, or its catch-up), and a
    reload that needs a restart to apply."""
    from dicomnode.spool import JOURNAL, RESTART_NEEDED

    folder = Path(config.spool.path) / JOURNAL
    waiting = sorted(folder.glob("*.json")) if folder.is_dir() else []
    rejected = list((folder / "rejected").glob("*.json")) if folder.is_dir() else []
    facts, problems, warnings = [], [], []
    restart = Path(config.spool.path) / RESTART_NEEDED
    if restart.is_file():
        warnings.append(f"restart needed: {restart.read_text().strip()}")
    age = _oldest_age(waiting)
    if age is not None:
        line = f"log journal: {len(waiting)} events not yet in the database (oldest {age:.0f} s)"
        (problems if age > max_failing_s else facts).append(line)
    if rejected:
        problems.append(f"log journal: {len(rejected)} events refused by the database, kept in "
                        f"{folder / 'rejected'}")
    return facts, problems, warnings


def check_health(
    config: Any, timeout: float = 10.0, min_free_bytes: int = DEFAULT_MIN_FREE_BYTES,
    max_failing_s: float = DEFAULT_MAX_FAILING_S,
    discarded_window_s: float = DEFAULT_DISCARDED_WINDOW_S,
) -> HealthReport:
    report = HealthReport()
    for fact, problem in (_echo(config, timeout), _log_database(config, timeout)):
        if fact:
            report.facts.append(fact)
        if problem:
            report.problems.append(problem)
    for facts, problems, warnings in (_spool(config, min_free_bytes, discarded_window_s),
                                      (*_destinations(config, timeout, max_failing_s), []),
                                      _journal(config, max_failing_s)):
        report.facts.extend(facts)
        report.problems.extend(problems)
        report.warnings.extend(warnings)
    return report
