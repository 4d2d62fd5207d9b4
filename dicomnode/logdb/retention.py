"""Scheduled retention for the node: purge rows older than `log.retention_days` periodically."""

from __future__ import annotations

import logging
import threading

from dicomnode.logdb.store import LogStore

LOGGER = logging.getLogger(__name__)
DEFAULT_INTERVAL_S = 3600.0


class RetentionWorker:
    """A daemon thread that purges once at start and then every interval; stop() ends it."""

    def __init__(self, store: LogStore, older_than_days: float, interval_s: float) -> None:
        if older_than_days < 0:
            raise ValueError("log.retention_days must be zero or more")
        self.store = store
        self.older_than_days = older_than_days
        self.interval_s = interval_s
        self.purges = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dicomnode-log-retention",
                                        daemon=True)  # fmt: skip

    def start(self) -> RetentionWorker:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                result = self.store.purge(self.older_than_days, requested_by="retention")
                self.purges += 1
                if result.instances_deleted:
                    LOGGER.info("log retention: purged %d instances older than %s",
                                result.instances_deleted, result.cutoff.isoformat())  # fmt: skip
            except Exception:  # a failed purge is retried next interval; the node keeps running
                LOGGER.exception("log retention purge failed")
            self._stop.wait(self.interval_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def start_retention(
    store: LogStore, log_config: object, interval_s: float = DEFAULT_INTERVAL_S
) -> RetentionWorker | None:
    """For the node: start purging if `log.retention_days` is set; None when retention is off."""
    days = getattr(log_config, "retention_days", None)
    if days is None:
        return None
    return RetentionWorker(store, float(days), interval_s).start()
