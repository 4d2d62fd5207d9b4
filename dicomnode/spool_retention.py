"""Spool retention: sent/ copies purged by age, total size and disk pressure; failed/ counted.

One pass at start and then every `spool.retention_interval_s`. Each purge is a log line and a
metric (`dicomnode_spool_purged_total{reason}`); images waiting in failed/ are a WARNING on every
pass (they stay until an operator retries or purges them: `dicomnode queue`).
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dicomnode.config import NodeConfig
from dicomnode.spool import FAILED, SENT, TMP, Spool

log = logging.getLogger(__name__)
MIB = 1024 * 1024
# A file in tmp/ untouched this long belongs to no live transfer: pynetdicom writes every
# fragment as it arrives, and receive.network_timeout (60 s) ends an association gone quiet.
STALE_TMP_S = 600.0


@dataclass
class SentCopy:
    folder: Path
    name: str
    mtime: float
    size: int


@dataclass
class PurgeReport:
    # age | size | disk -> sent/ copies; stale_tmp -> abandoned files in tmp/
    by_reason: dict[str, int] = field(default_factory=dict)
    bytes_freed: int = 0
    failed_waiting: int = 0


def sent_retention_s(config: NodeConfig) -> float:
    """The age limit of sent/ copies: the spool's, or the log's retention if that is shorter
    (patient images must not outlive the audit rows about them)."""
    days = config.spool.sent_retention_days
    if config.log.retention_days is not None:
        days = min(days, config.log.retention_days)
    return days * 86400.0


def sent_copies(spool: Spool) -> list[SentCopy]:
    """Every image in sent/<dest>/, oldest first."""
    copies = []
    root = spool.dir(SENT)
    for folder in sorted(p for p in root.glob("*") if p.is_dir()):
        for dcm in folder.glob("*.dcm"):
            try:
                stat = dcm.stat()
            except FileNotFoundError:
                continue
            copies.append(SentCopy(folder, dcm.stem, stat.st_mtime, stat.st_size))
    return sorted(copies, key=lambda c: c.mtime)


def purge_pass(spool: Spool, config: NodeConfig, now: float | None = None,
               free_bytes: Callable[[], int] | None = None) -> PurgeReport:
    now = time.time() if now is None else now
    free_bytes = free_bytes or (lambda: shutil.disk_usage(spool.root).free)
    report = PurgeReport()
    copies = sent_copies(spool)
    max_age = sent_retention_s(config)
    total = sum(c.size for c in copies)
    max_total = config.spool.sent_max_mb * MIB
    floor = 2 * config.disk.min_free_mb * MIB
    kept = []
    for copy in copies:  # oldest first
        if now - copy.mtime > max_age:
            reason = "age"
        elif total > max_total:
            reason = "size"
        elif floor and free_bytes() < floor:
            reason = "disk"
        else:
            kept.append(copy)
            continue
        (copy.folder / f"{copy.name}.dcm").unlink(missing_ok=True)
        (copy.folder / f"{copy.name}.json").unlink(missing_ok=True)
        total -= copy.size
        report.bytes_freed += copy.size
        report.by_reason[reason] = report.by_reason.get(reason, 0) + 1
    for leftover in stale_received(spool, now):
        size = leftover.stat().st_size
        leftover.unlink(missing_ok=True)
        report.bytes_freed += size
        report.by_reason["stale_tmp"] = report.by_reason.get("stale_tmp", 0) + 1
    root = spool.dir(FAILED)
    report.failed_waiting = sum(
        len(spool.names(FAILED, p.name)) for p in root.glob("*") if p.is_dir())
    return report


def stale_received(spool: Spool, now: float) -> list[Path]:
    """Files in tmp/ not written to for STALE_TMP_S: datasets of transfers that were aborted
    midway (pynetdicom removes the file of a completed C-STORE, not of an abandoned one) and
    partial writes; emptied at start as well, these would otherwise fill the disk until then."""
    folder = spool.dir(TMP)
    if not folder.is_dir():
        return []
    stale = []
    for path in folder.iterdir():
        try:
            if now - path.stat().st_mtime > STALE_TMP_S:
                stale.append(path)
        except FileNotFoundError:  # finished and moved meanwhile
            continue
    return stale


class SpoolRetention:
    """The daemon thread running purge_pass; `on_purged(reason, count)` feeds the metrics."""

    def __init__(self, spool: Spool, config: Callable[[], NodeConfig],
                 on_purged: Callable[[str, int], None] | None = None) -> None:
        self.spool = spool
        self.config = config  # a callable: a reload changes the limits for the next pass
        self.on_purged = on_purged
        self.passes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dicomnode-spool-retention",
                                        daemon=True)  # fmt: skip

    def start(self) -> SpoolRetention:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            config = self.config()
            try:
                self._report(purge_pass(self.spool, config))
            except Exception:  # retried next pass; the node keeps running
                log.exception("spool retention pass failed")
            self.passes += 1
            self._stop.wait(config.spool.retention_interval_s)

    def _report(self, report: PurgeReport) -> None:
        for reason, count in sorted(report.by_reason.items()):
            if reason == "stale_tmp":
                log.warning("spool retention: removed %d unfinished file(s) from tmp/, untouched "
                            "for %.0f s (aborted transfers)", count, STALE_TMP_S)
            else:
                what = {"age": "older than the retention", "size": "over spool.sent_max_mb",
                        "disk": "free space under twice disk.min_free_mb"}[reason]
                log.info("spool retention: purged %d sent/ copies (%s)", count, what)
            if self.on_purged is not None:
                self.on_purged(reason, count)
        if report.failed_waiting:
            log.warning("spool: %d image(s) in failed/ wait for an operator (dicomnode queue "
                        "list --state failed; queue retry or purge)", report.failed_waiting)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
