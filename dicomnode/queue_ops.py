"""Operator queue operations on the spool folders (`dicomnode queue list | retry | purge`).

They work on the files alone, so they are safe while the node runs: every move writes the .json
first and moves the .dcm last (the forwarders key on *.dcm), exactly as the node itself does.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dicomnode.spool import (
    FAILED,
    INCOMING,
    OUTGOING,
    PIPELINE_FAILED,
    PROCESSING,
    SENT,
    Spool,
    write_atomic,
)

STATES = (INCOMING, PROCESSING, OUTGOING, SENT, FAILED)
# What a retry clears, so the image is tried at once with a fresh attempt count.
RETRY_KEYS = ("next_attempt_at", "scheduled_at", "failed_at", "error")


@dataclass
class QueueItem:
    state: str
    destination: str | None
    name: str
    meta: dict[str, Any]

    @property
    def sop_instance_uid(self) -> str:
        return str(self.meta.get("sop_instance_uid", ""))

    def as_row(self) -> dict[str, Any]:
        due = self.meta.get("next_attempt_at")
        return {
            "state": self.state,
            "destination": self.destination,
            "name": self.name,
            "sop_instance_uid": self.sop_instance_uid,
            "attempts": self.meta.get("attempts", 0),
            "last_status": _hex(self.meta.get("last_status")),
            "last_detail": self.meta.get("last_detail") or self.meta.get("error") or "",
            "next_attempt_in_s": round(float(due) - time.time(), 1) if due else None,
        }


def _hex(status: Any) -> str | None:
    return f"0x{int(status):04X}" if isinstance(status, int) else None


def _destinations(spool: Spool, state: str) -> list[str]:
    base = spool.dir(state)
    return sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []


def items(
    spool: Spool, states: tuple[str, ...] = STATES, destination: str | None = None
) -> list[QueueItem]:
    found: list[QueueItem] = []
    for state in states:
        if state in (INCOMING, PROCESSING):
            if destination is None:
                found += [
                    QueueItem(state, None, n, spool.read_meta(spool.dir(state) / f"{n}.dcm"))
                    for n in spool.names(state)
                ]
            continue
        for dest in _destinations(spool, state):
            if destination is not None and dest != destination:
                continue
            found += [
                QueueItem(state, dest, n, spool.read_meta(spool.dir(state, dest) / f"{n}.dcm"))
                for n in spool.names(state, dest)
            ]
    return found


def _move(spool: Spool, item: QueueItem, state: str, dest: str | None, meta: dict) -> None:
    src, dst = spool.dir(item.state, item.destination), spool.dir(state, dest)
    dst.mkdir(parents=True, exist_ok=True)
    write_atomic(dst / f"{item.name}.json", _dumps(meta), spool.dir("tmp"))
    os.replace(src / f"{item.name}.dcm", dst / f"{item.name}.dcm")
    (src / f"{item.name}.json").unlink(missing_ok=True)


def retry(
    spool: Spool, destination: str | None = None, names: list[str] | None = None
) -> list[QueueItem]:
    """failed/<dest>/ -> outgoing/<dest>/ (fresh attempts), failed/_pipeline/ -> incoming/, and
    waiting outgoing images -> due now. Returns what was touched."""
    touched = []
    for item in items(spool, (FAILED, OUTGOING), destination):
        if names and item.name not in names and item.sop_instance_uid not in names:
            continue
        meta = {k: v for k, v in item.meta.items() if k not in RETRY_KEYS}
        if item.state == FAILED:
            meta["attempts"] = 0
            meta["retried_by_operator_at"] = time.time()
            if item.destination == PIPELINE_FAILED:
                _move(spool, item, INCOMING, None, meta)
            else:
                _move(spool, item, OUTGOING, item.destination, meta)
        elif "next_attempt_at" in item.meta:
            path = spool.dir(OUTGOING, item.destination) / f"{item.name}.json"
            write_atomic(path, _dumps(meta), spool.dir("tmp"))
        else:
            continue
        touched.append(item)
    return touched


def purge(
    spool: Spool,
    state: str,
    destination: str | None = None,
    older_than_s: float | None = None,
    names: list[str] | None = None,
) -> list[QueueItem]:
    """Delete images (and their .json) from sent/ or failed/; outgoing/ only by name."""
    if state not in (SENT, FAILED, OUTGOING):
        raise ValueError(f"purge works on sent, failed or outgoing, not {state!r}")
    if state == OUTGOING and not names:
        raise ValueError("purging outgoing/ needs explicit names (undelivered images)")
    now = time.time()
    removed = []
    for item in items(spool, (state,), destination):
        if names and item.name not in names and item.sop_instance_uid not in names:
            continue
        folder = spool.dir(state, item.destination)
        dcm = folder / f"{item.name}.dcm"
        if older_than_s is not None:
            with contextlib.suppress(FileNotFoundError):
                if now - dcm.stat().st_mtime < older_than_s:
                    continue
        dcm.unlink(missing_ok=True)
        (folder / f"{item.name}.json").unlink(missing_ok=True)
        removed.append(item)
    return removed


def _dumps(meta: dict[str, Any]) -> bytes:
    return json.dumps(meta, sort_keys=True, default=str).encode()


def spool_of(path: Path | str) -> Spool:
    return Spool(path)
