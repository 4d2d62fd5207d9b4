"""Forward stage: one forwarder thread per destination, each draining its outgoing/<dest>/ folder.

A slow or unreachable destination only delays its own queue. How one file is delivered (one
reused association, the instance's own syntax or a lossless re-encoding) is dicomnode.send's.

Failures come in three kinds:
- permanent (0xA9xx, 0xCxxx, SOP class not supported, ...): the image goes to failed/<dest>/ at
  once with its status and reason;
- of the link (association refused or rejected, peer unreachable, no presentation context
  accepted for SOP classes the peer took before, 0xA7xx out of resources): the destination
  waits, in order. The next attempt's time goes into the head's .json (`next_attempt_at`,
  exponential backoff with jitter from tenacity's wait function); after `max_attempts`
  (default: never) it goes to failed/;
- of one image on a working association (its file cannot be read, it cannot be encoded for the
  peer, the peer aborts or times out while it is in transfer): retried `image_attempts` times
  (default 3), then parked in failed/<dest>/ with the reason, and the queue goes on: one poisoned
  image never holds up the images behind it.
Each destination has its own thread, so one waiting destination never holds up another;
`dicomnode queue retry` puts a failed image back.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import datetime, timezone
from typing import Any, Protocol

from tenacity import RetryCallState, wait_exponential, wait_random

from dicomnode.config_routing import DicomDestination, FolderDestination, RetryPolicy
from dicomnode.send import Delivery, DicomSender, FolderSender
from dicomnode.spool import OUTGOING, Spool, write_atomic

log = logging.getLogger(__name__)


class ForwardLog(Protocol):
    def record_forward(
        self,
        instance_id: int | None,
        sop_instance_uid: str,
        destination: str,
        outcome: str,
        dimse_status: int | None,
        detail: str,
        attempt: int,
        at: datetime,
        decision_key: str | None = None,
    ) -> Any: ...


def backoff_s(policy: RetryPolicy, attempt: int) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based): tenacity's exponential
    wait (initial_s * multiplier**(attempt-1), capped at max_delay_s) plus uniform jitter."""
    wait = wait_exponential(
        multiplier=policy.initial_s, exp_base=policy.multiplier, max=policy.max_delay_s
    ) + wait_random(0, policy.jitter_s)
    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.attempt_number = attempt
    return float(wait(state))


POLL_S = 1.0  # an idle forwarder still looks at its folder this often (operator `queue retry`)


class Forwarder(threading.Thread):
    """Drains outgoing/<dest>/ in arrival order. A transient failure schedules the head of this
    queue for later (time in its .json); the thread waits for that time, this queue only."""

    def __init__(
        self,
        dest: DicomDestination | FolderDestination,
        spool: Spool,
        forward_log: ForwardLog | None,
        calling_ae: str,
        on_delivered: Any = None,
    ) -> None:
        super().__init__(name=f"forward-{dest.name}", daemon=True)
        self.dest = dest
        self.spool = spool
        self.forward_log = forward_log
        self.on_delivered = on_delivered  # callable(dest, meta, delivery) or None
        self.policy = dest.retry_policy
        if isinstance(dest, DicomDestination):
            self.sender: DicomSender | FolderSender = DicomSender(dest, calling_ae)
            self.idle_release_s = dest.idle_release_s
        else:
            self.sender = FolderSender(dest)
            self.idle_release_s = 0.0
        # Schedules written before this start are ignored once: a restarted node tries at once.
        self.started_at = time.time()
        self._last_send = time.monotonic()  # the association is released after idle_release_s
        self._wake = threading.Event()
        self._stopping = threading.Event()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self._wake.set()
        self.join(timeout)

    def run(self) -> None:
        try:
            while not self._stopping.is_set():
                self._wake.clear()
                try:
                    wait_s = self._drain()
                except Exception:  # e.g. ENOSPC writing a .json: keep the thread, try again
                    log.exception("forwarder %s: error; trying again shortly", self.dest.name)
                    self.sender.release()
                    wait_s = POLL_S
                if wait_s is None:  # nothing queued
                    if time.monotonic() - self._last_send >= self.idle_release_s:
                        self.sender.release()  # idle: give the peer its association back
                    self._wake.wait(POLL_S)
                else:  # the head waits for its next attempt
                    self._wake.wait(min(max(wait_s, 0.0), POLL_S))
        finally:
            self.sender.close()

    def _due_in(self, meta: dict) -> float:
        """Seconds until this image may be tried again (<= 0: now)."""
        due = meta.get("next_attempt_at")
        scheduled = float(meta.get("scheduled_at") or 0.0)
        if due is None or scheduled < self.started_at:
            return 0.0
        return float(due) - time.time()

    def _drain(self) -> float | None:
        """Send what is due, in order; None when the queue is empty, else seconds until the head
        is due again (0.0 when stopping)."""
        folder = self.spool.dir(OUTGOING, self.dest.name)
        for name in self.spool.names(OUTGOING, self.dest.name):
            if self._stopping.is_set():
                return 0.0
            path = folder / f"{name}.dcm"
            meta = self.spool.read_meta(path)
            wait_s = self._due_in(meta)
            if wait_s > 0:
                return wait_s  # in order: nothing behind the head goes first
            if not path.exists():  # an operator purged or moved it meanwhile
                continue
            sop_uid = str(meta.get("sop_instance_uid", ""))
            self._last_send = time.monotonic()
            if isinstance(self.sender, FolderSender):
                delivery = self.sender.send(path, sop_uid)
            else:
                delivery = self.sender.send(path)
            attempt = int(meta.get("attempts", 0)) + 1
            image_failures = int(meta.get("image_failures", 0))
            if delivery.outcome == "retry" and delivery.scope == "image":
                image_failures += 1
            meta = {**meta, "attempts": attempt, "image_failures": image_failures,
                    "last_outcome": delivery.outcome, "last_status": delivery.status,
                    "last_detail": delivery.detail, "last_attempt_at": time.time()}  # fmt: skip
            meta.pop("next_attempt_at", None)
            meta.pop("scheduled_at", None)
            delivery = self._give_up(delivery, attempt, image_failures)
            if delivery.outcome == "failed":
                meta["last_outcome"], meta["last_detail"] = "failed", delivery.detail
            self._record(meta, sop_uid, delivery, attempt)
            if delivery.outcome == "sent":
                self.spool.mark_sent(self.dest.name, name, meta)
            elif delivery.outcome == "failed":
                log.warning("%s: %s failed: %s", self.dest.name, sop_uid, delivery.detail)
                meta["failed_at"] = time.time()
                self.spool.mark_failed(self.dest.name, name, meta)
            else:
                meta.setdefault("failing_since", meta["last_attempt_at"])  # for `health`
                delay = backoff_s(self.policy,
                                  image_failures if delivery.scope == "image" else attempt)
                meta["next_attempt_at"] = time.time() + delay
                meta["scheduled_at"] = time.time()
                log.info("%s: %s attempt %d: %s; next in %.1f s", self.dest.name, sop_uid,
                         attempt, delivery.detail, delay)  # fmt: skip
                write_atomic(path.with_suffix(".json"), _json(meta), self.spool.dir("tmp"))
                return delay
            if self.on_delivered is not None:
                try:
                    self.on_delivered(self.dest.name, meta, delivery)
                except Exception:
                    log.exception("delivery callback failed")
        return None

    def _give_up(self, delivery: Delivery, attempt: int, image_failures: int) -> Delivery:
        """A retry past its bound becomes a failure (the image goes to failed/)."""
        if delivery.outcome != "retry":
            return delivery
        if delivery.scope == "image" and image_failures >= self.policy.image_attempts:
            return Delivery("failed", delivery.status,
                            f"gave up on this image after {image_failures} failed transfers "
                            f"(retry.image_attempts): {delivery.detail}")
        limit = self.policy.max_attempts
        if delivery.scope == "link" and limit is not None and attempt >= limit:
            return Delivery("failed", delivery.status,
                            f"gave up after {attempt} attempts: {delivery.detail}")
        return delivery

    def _record(self, meta: dict, sop_uid: str, delivery: Delivery, attempt: int) -> None:
        if self.forward_log is None:
            return
        try:
            self.forward_log.record_forward(
                meta.get("instance_id"), sop_uid, self.dest.name, delivery.outcome,
                delivery.status, delivery.detail, attempt, datetime.now(timezone.utc),
                decision_key=meta.get("name"),  # links the decision when it was journaled
            )  # fmt: skip
        except Exception:  # the image must still move on; the log error is visible in the node log
            log.exception("could not log the forward of %s to %s", sop_uid, self.dest.name)


def _json(meta: dict) -> bytes:
    return json.dumps(meta, sort_keys=True, default=str).encode()


def wait_idle(forwarders: list[Forwarder], spool: Spool, timeout: float) -> bool:
    """Test/CLI helper: True once no destination has anything outgoing (or False at timeout)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(spool.names(OUTGOING, f.dest.name) for f in forwarders):
            return True
        time.sleep(0.05)
    return False
