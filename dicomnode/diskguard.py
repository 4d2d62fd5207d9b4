"""Disk guard: below a free-space floor the node refuses new images (0xA700, out of resources)
instead of writing files it may not finish. Checked on every C-STORE (one statvfs call), so the
node recovers by itself as soon as space returns. Entering and leaving the low state is logged
once each, and counted in the metrics (refusals by reason, and a 0/1 gauge)."""

from __future__ import annotations

import logging
import shutil
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MB = 1024 * 1024


class DiskGuard:
    def __init__(self, path: Path | str, min_free_mb: float, metrics: Any = None) -> None:
        self.path = Path(path)
        self.min_free_bytes = int(min_free_mb * MB)
        self.metrics = metrics  # a dicomnode.metrics.NodeMetrics, or None
        self.low = False
        self.refused = 0
        self._lock = threading.Lock()

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.path).free

    def refusal(self, incoming_bytes: int = 0) -> str | None:
        """None when there is room for `incoming_bytes` above the floor; else why not."""
        try:
            free = self.free_bytes()
        except OSError as exc:
            return self._refuse(f"cannot check free space: {exc.strerror or exc}")
        if free - incoming_bytes < self.min_free_bytes:
            return self._refuse(
                f"disk low: {free // MB} MB free, floor {self.min_free_bytes // MB} MB"
            )
        with self._lock:
            if self.low:
                self.low = False
                log.warning("disk guard: space is back (%d MB free); accepting images", free // MB)
                self._gauge(0)
        return None

    def _refuse(self, reason: str) -> str:
        with self._lock:
            self.refused += 1
            if not self.low:
                self.low = True
                log.error("disk guard: %s; refusing images with 0xA700 until space returns",
                          reason)  # fmt: skip
                self._gauge(1)
        if self.metrics is not None:
            self.metrics.image_refused("disk_low")
        return reason

    def _gauge(self, value: int) -> None:
        if self.metrics is not None:
            self.metrics.set_disk_low(value)
