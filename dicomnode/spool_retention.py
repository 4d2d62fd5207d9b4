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
from dicomnode.spool import FAILED, SENT, Spool

log = logging.getLogger(__name__)
MIB = 1024 * 1024


@dataclass
class SentCopy:
    folder: Path
    name: str
    mtime: float
    size: int


@dataclass
class PurgeReport:
    by_reason: dict[str, int] = field(default_factory=dict)  # age | size | disk -> copies
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
    root = spool.dir(FAILED)
    report.failed_waiting = sum(
        len(spool.names(FAILED, p.name)) for p in root.glob("*") if p.is_dir())
    return report


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
