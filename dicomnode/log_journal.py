"""Log stage: every decision, delivery attempt and answered association request reaches the log
database, outages included.

Each event is first written to `spool/journal/` (one JSON file, atomically), then inserted, then
its file is removed. While the database does not answer, events only go to the journal, and a
writer thread replays the journal in order once it answers again. Events carry unique keys (a
decision's spool name, an attempt's own key), so a replay after a crash between the insert and the
file's removal writes each event exactly once. An outage is one ERROR line when it starts and one
WARNING when it ends, not a traceback per image. An event the database refuses as such (not an
outage) is moved to `journal/rejected/` with an ERROR line: kept, never silently dropped.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from dicomnode.logdb.entry import InstanceLogEntry
from dicomnode.spool import ordered_name, write_atomic

log = logging.getLogger(__name__)

INSTANCE_SUFFIX = ".decision.json"
FORWARD_SUFFIX = ".attempt.json"
ASSOCIATION_SUFFIX = ".association.json"
RETRY_S = 2.0  # how often the writer tries the database during an outage


class LogJournal:
    """The node's one writer of the log database (record_instance, record_forward)."""

    def __init__(self, store: Any, folder: Path, tmp: Path, retry_s: float = RETRY_S,
                 on_change: Callable[[int, bool], None] | None = None) -> None:
        self.store = store
        self.folder = Path(folder)
        self.tmp = Path(tmp)
        self.rejected = self.folder / "rejected"
        self.retry_s = retry_s
        self.on_change = on_change  # (events pending, database up) for the metrics
        self.folder.mkdir(parents=True, exist_ok=True)
        self._sequence = itertools.count()
        self._lock = threading.Lock()  # one writer: events go in in journal order
        self._outage_since: float | None = None
        self._replayed = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dicomnode-log-journal",
                                        daemon=True)  # fmt: skip

    # -- the writers' side ---------------------------------------------------------------------
    def record_instance(self, entry: InstanceLogEntry) -> int | None:
        """Journal a decision, then write it; its row id, or None while it waits."""
        if not entry.decision_key:
            raise ValueError("a journaled decision needs its decision_key")
        values = asdict(entry)
        values["received_at"] = entry.received_at.isoformat()
        return self._journal(f"{entry.decision_key}{INSTANCE_SUFFIX}", values)

    def record_forward(self, instance_id: int | None, sop_instance_uid: str, destination: str,
                       outcome: str, dimse_status: int | None, detail: str, attempt: int,
                       at: datetime, decision_key: str | None = None) -> None:
        """Journal a delivery attempt, then write it (or leave it for the writer thread)."""
        key = ordered_name(self._sequence)
        self._journal(f"{key}{FORWARD_SUFFIX}", {
            "instance_id": instance_id, "sop_instance_uid": sop_instance_uid,
            "destination": destination, "outcome": outcome, "dimse_status": dimse_status,
            "detail": detail, "attempt": attempt, "at": at.isoformat(), "event_key": key,
            "decision_key": decision_key})  # fmt: skip

    def record_association(self, at: datetime, outcome: str, calling_ae: str, called_ae: str,
                           peer_address: str, reason: str | None = None) -> None:
        """Journal an answered association request, then write it."""
        key = ordered_name(self._sequence)
        self._journal(f"{key}{ASSOCIATION_SUFFIX}", {
            "at": at.isoformat(), "outcome": outcome, "calling_ae": calling_ae,
            "called_ae": called_ae, "peer_address": peer_address, "reason": reason,
            "event_key": key})  # fmt: skip

    def _journal(self, name: str, values: dict[str, Any]) -> int | None:
        """Write one event's file, then the event itself (or leave it for the writer)."""
        path = self.folder / name
        write_atomic(path, json.dumps(values, default=str).encode(), self.tmp)
        return self._write_through(path)

    def pending(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.name.endswith(".json"))

    @property
    def database_up(self) -> bool:
        return self._outage_since is None

    # -- the writer thread ---------------------------------------------------------------------
    def start(self) -> LogJournal:
        self._wake.set()  # events a previous run left behind are written first
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the writer; what is still journaled is written now if the database answers,
        else it waits in the journal for the next start."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)
        with self._lock:
            self._drain(final=True)

    def _write_through(self, path: Path) -> int | None:
        with self._lock:
            pending = self.pending()
            if not pending or not path.exists():
                return None  # the writer thread wrote it already
            if self._outage_since is not None or pending[0] != path:
                self._wake.set()  # a backlog: the writer thread keeps the order
                return None
            return self._apply(path)[1]

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.retry_s)
            self._wake.clear()
            with self._lock:
                self._drain()

    def _drain(self, final: bool = False) -> None:
        for path in self.pending():
            if self._stop.is_set() and not final:
                return
            written, _ = self._apply(path)
            if not written:
                return  # still down: try again in retry_s
        if self._outage_since is not None:
            self._outage_ended()
        self._notify()

    def _apply(self, path: Path) -> tuple[bool, int | None]:
        """Write one journaled event and remove its file: (True, row id); (False, None) and the
        file kept while the database is down."""
        try:
            values = json.loads(path.read_bytes())
            row_id = self._insert(path, values)
        except IntegrityError as exc:  # this event, not the database
            return self._reject(path, exc)
        except (OperationalError, DBAPIError, OSError) as exc:
            self._outage_started(exc)
            return False, None
        except Exception as exc:  # the database (or the file) refuses this event as such
            return self._reject(path, exc)
        path.unlink(missing_ok=True)
        if self._outage_since is not None:
            self._replayed += 1
        return True, row_id

    def _insert(self, path: Path, values: dict[str, Any]) -> int | None:
        if path.name.endswith(INSTANCE_SUFFIX):
            values["received_at"] = datetime.fromisoformat(values["received_at"])
            return int(self.store.record_instance(InstanceLogEntry(**values)))
        values["at"] = datetime.fromisoformat(values["at"])
        if path.name.endswith(ASSOCIATION_SUFFIX):
            self.store.record_association(**values)
        else:
            self.store.record_forward(**values)
        return None

    def _reject(self, path: Path, exc: Exception) -> tuple[bool, None]:
        self.rejected.mkdir(exist_ok=True)
        path.replace(self.rejected / path.name)
        log.error("log database refused the event in %s (%s: %s); kept in %s", path.name,
                  type(exc).__name__, exc, self.rejected)  # fmt: skip
        return True, None  # handled: the journal goes on

    def _outage_started(self, exc: Exception) -> None:
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            self._replayed = 0
            log.error("log database unavailable (%s); decisions and delivery attempts wait in "
                      "%s and are written, in order, when it answers again",
                      type(exc).__name__, self.folder)  # fmt: skip
            self._notify()

    def _outage_ended(self) -> None:
        down_s = time.monotonic() - (self._outage_since or time.monotonic())
        log.warning("log database answers again after %.0f s: %d journaled events written",
                    down_s, self._replayed)  # fmt: skip
        self._outage_since = None
        self._replayed = 0
        self._notify()

    def _notify(self) -> None:
        if self.on_change is not None:
            try:
                self.on_change(len(self.pending()), self.database_up)
            except Exception:
                log.exception("log journal metrics callback failed")
