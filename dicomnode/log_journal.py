"""Log stage: every decision, delivery attempt and answered association request reaches the log
database, outages included, written off the receive, classify and forward paths.

Each event is first written to `spool/journal/` (one JSON file, atomically: the durable record,
before the image is forwarded); the caller goes on at once. One writer thread inserts what the
journal holds in name order, up to BATCH events per transaction (many rows per commit, the
way a busy node keeps up), then removes their files. While the database does not answer,
events only accumulate in the journal, and the writer replays them in order once it answers
again. Events carry unique keys (a decision's spool name, an attempt's own key), so a replay
after a crash between the insert and the files' removal writes each event exactly once. An
outage is one ERROR line when it starts and one WARNING when it ends, not a traceback per image.
An event the database refuses as such (not an outage) is moved to `journal/rejected/` with an
ERROR line: kept, never silently dropped; the rest of its batch is written.
"""

from __future__ import annotations

import base64
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
BATCH = 500  # events per transaction at most
PREVIEW_KEY = "preview_png"  # in a decision's file: its preview PNG, base64 (web.previews)
# the writer waits this long after a wake-up, so a busy node's events go in as one batch (one
# commit for ~25 images, not ~2); rows lag the durable journal file by up to this much
LINGER_S = 0.5


class LogJournal:
    """The node's one writer of the log database (record_instance, record_forward,
    record_association): callers journal, the writer thread inserts in batches."""

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
    def record_instance(self, entry: InstanceLogEntry, preview: bytes | None = None) -> None:
        """Journal a decision; the writer thread inserts it (forward attempts find it by its
        decision_key, so nobody waits for its row id). A preview (the model input as a PNG,
        `web.previews`) travels in the same file, so it is as durable as the decision and goes
        into the database in the same transaction."""
        if not entry.decision_key:
            raise ValueError("a journaled decision needs its decision_key")
        values = asdict(entry)
        values["received_at"] = entry.received_at.isoformat()
        if preview is not None:
            values[PREVIEW_KEY] = base64.b64encode(preview).decode("ascii")
        self._journal(f"{entry.decision_key}{INSTANCE_SUFFIX}", values)

    def record_forward(self, instance_id: int | None, sop_instance_uid: str, destination: str,
                       outcome: str, dimse_status: int | None, detail: str, attempt: int,
                       at: datetime, decision_key: str | None = None) -> None:
        """Journal a delivery attempt for the writer thread."""
        key = ordered_name(self._sequence)
        self._journal(f"{key}{FORWARD_SUFFIX}", {
            "instance_id": instance_id, "sop_instance_uid": sop_instance_uid,
            "destination": destination, "outcome": outcome, "dimse_status": dimse_status,
            "detail": detail, "attempt": attempt, "at": at.isoformat(), "event_key": key,
            "decision_key": decision_key})  # fmt: skip

    def record_association(self, at: datetime, outcome: str, calling_ae: str, called_ae: str,
                           peer_address: str, reason: str | None = None) -> None:
        """Journal an association event for the writer thread."""
        key = ordered_name(self._sequence)
        self._journal(f"{key}{ASSOCIATION_SUFFIX}", {
            "at": at.isoformat(), "outcome": outcome, "calling_ae": calling_ae,
            "called_ae": called_ae, "peer_address": peer_address, "reason": reason,
            "event_key": key})  # fmt: skip

    def _journal(self, name: str, values: dict[str, Any]) -> None:
        """Write one event's file (durable before the caller goes on) and wake the writer."""
        write_atomic(self.folder / name, json.dumps(values, default=str).encode(), self.tmp)
        self._wake.set()

    def pending(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.name.endswith(".json"))

    @property
    def database_up(self) -> bool:
        return self._outage_since is None

    def idle(self) -> bool:
        """Nothing left to write, or nothing writable now (an outage: the journal keeps it)."""
        return not self.pending() or not self.database_up

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

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._outage_since is None:
                self._wake.wait(self.retry_s)
                # a batch gathers: one commit (one fsync) for many events, and the callers'
                # own fsyncs do not queue behind a commit per event
                self._stop.wait(LINGER_S)
            else:  # an outage: try again every retry_s, not once per event journaled
                self._stop.wait(self.retry_s)
            self._wake.clear()
            with self._lock:
                self._drain()

    def _drain(self, final: bool = False) -> None:
        pending = self.pending()
        for start in range(0, len(pending), BATCH):
            if self._stop.is_set() and not final:
                return
            if not self._write_batch(pending[start:start + BATCH]):
                return  # still down: try again in retry_s
        if self._outage_since is not None:
            self._outage_ended()
        self._notify()

    def _write_batch(self, paths: list[Path]) -> bool:
        """Insert these events in one transaction and remove their files; False (files kept)
        while the database is down. A batch the database refuses is written one event at a
        time, so only the refused event goes to rejected/."""
        try:
            events = [event for path in paths
                      for event in self._events(path, json.loads(path.read_bytes()))]
        except Exception:  # unreadable or malformed: one at a time finds and keeps it
            return self._one_at_a_time(paths)
        try:
            self.store.record_events(events)  # decisions first, so attempts find their rows
        except IntegrityError:  # an event, not the database: isolate it
            return self._one_at_a_time(paths)
        except (OperationalError, DBAPIError, OSError) as exc:
            self._outage_started(exc)
            return False
        except Exception:  # e.g. a value the store refuses: isolate it
            return self._one_at_a_time(paths)
        for path in paths:
            path.unlink(missing_ok=True)
        if self._outage_since is not None:
            self._replayed += len(paths)
        return True

    def _one_at_a_time(self, paths: list[Path]) -> bool:
        """Each event in its own transaction, in order, until the database is found down."""
        return all(self._apply(path) for path in paths)

    def _apply(self, path: Path) -> bool:
        """Write one journaled event and remove its file (or move a refused one to rejected/):
        True; False, and the file kept, while the database is down."""
        try:
            values = json.loads(path.read_bytes())
            self.store.record_events(self._events(path, values))
        except IntegrityError as exc:  # this event, not the database
            return self._reject(path, exc)
        except (OperationalError, DBAPIError, OSError) as exc:
            self._outage_started(exc)
            return False
        except Exception as exc:  # the database (or the file) refuses this event as such
            return self._reject(path, exc)
        path.unlink(missing_ok=True)
        if self._outage_since is not None:
            self._replayed += 1
        return True

    @staticmethod
    def _events(path: Path, values: dict[str, Any]) -> list[tuple[str, Any]]:
        """A journal file's events as LogStore.record_events takes them: a decision (and its
        preview, when it has one), a delivery attempt or an association."""
        if path.name.endswith(INSTANCE_SUFFIX):
            preview = values.pop(PREVIEW_KEY, None)
            values["received_at"] = datetime.fromisoformat(values["received_at"])
            entry = InstanceLogEntry(**values)
            events: list[tuple[str, Any]] = [("instance", entry)]
            if preview is not None:
                events.append(("preview", {"decision_key": entry.decision_key,
                                           "at": entry.received_at,
                                           "png": base64.b64decode(preview)}))
            return events
        values["at"] = datetime.fromisoformat(values["at"])
        return [("association" if path.name.endswith(ASSOCIATION_SUFFIX) else "forward",
                 values)]

    def _reject(self, path: Path, exc: Exception) -> bool:
        self.rejected.mkdir(exist_ok=True)
        path.replace(self.rejected / path.name)
        log.error("log database refused the event in %s (%s: %s); kept in %s", path.name,
                  type(exc).__name__, exc, self.rejected)  # fmt: skip
        return True  # handled: the journal goes on

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
