"""Forward stage: one forwarder thread per destination, each draining its outgoing/<dest>/ folder.

A slow or unreachable destination only delays its own queue. DICOM destinations reuse one
association (TCP_NODELAY) across images, propose each instance's own transfer syntax, and if the
peer refuses it, decompress and send Explicit VR Little Endian. Folder destinations copy the
file atomically.

Failures: a permanent rejection (0xA9xx, 0xCxxx, SOP class not supported, ...) moves the image to
failed/<dest>/ at once with its status and reason. A transient one (association refused or
aborted, timeout, 0xA7xx) schedules the next attempt: the time goes into the image's .json
(`next_attempt_at`, exponential backoff with jitter from tenacity's wait function), and the queue
waits for it in order. Each destination has its own thread, so one waiting destination never
holds up another; after `max_attempts` the image goes to failed/ too (`dicomnode queue retry`
puts it back).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import pydicom
from pydicom.filereader import read_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from tenacity import RetryCallState, wait_exponential, wait_random

from dicomnode.config import DicomDestination, FolderDestination, RetryPolicy
from dicomnode.guard import decompress_isolated
from dicomnode.hardening import destination_tls_args
from dicomnode.receive import set_tcp_nodelay
from dicomnode.spool import OUTGOING, Spool, write_atomic

log = logging.getLogger(__name__)

# Send files from disk as stored (no decode/re-encode): what the node received, or tagged, goes out
# byte for byte, and files pydicom cannot parse can still be passed on untouched.
_config.STORE_SEND_CHUNKED_DATASET = True

WARNING_STATUSES = {0x0001, 0xB000, 0xB006, 0xB007}
MAX_CONTEXTS = 128  # DICOM limit on presentation contexts per association (odd IDs 1..255)


@dataclass(frozen=True)
class Delivery:
    outcome: str  # "sent" | "retry" | "failed"
    status: int | None = None
    detail: str = ""


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
    ) -> Any: ...


def classify_status(status: int) -> Delivery:
    """C-STORE response status -> sent / retry (transient) / failed (permanent)."""
    if status == 0x0000:
        return Delivery("sent", status, "success")
    if status in WARNING_STATUSES:
        return Delivery("sent", status, f"warning 0x{status:04X}")
    if 0xA700 <= status <= 0xA7FF:  # out of resources: transient
        return Delivery("retry", status, f"out of resources 0x{status:04X}")
    if 0xA900 <= status <= 0xA9FF:
        return Delivery("failed", status, f"permanent: data set does not match SOP class "
                                          f"0x{status:04X}")  # fmt: skip
    if 0xC000 <= status <= 0xCFFF:
        return Delivery("failed", status, f"permanent: cannot understand 0x{status:04X}")
    if status == 0x0122:
        return Delivery("failed", status, "permanent: SOP class not supported 0x0122")
    return Delivery("failed", status, f"permanent: refused 0x{status:04X}")


def backoff_s(policy: RetryPolicy, attempt: int) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based): tenacity's exponential
    wait (initial_s * multiplier**(attempt-1), capped at max_delay_s) plus uniform jitter."""
    wait = wait_exponential(
        multiplier=policy.initial_s, exp_base=policy.multiplier, max=policy.max_delay_s
    ) + wait_random(0, policy.jitter_s)
    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.attempt_number = attempt
    return float(wait(state))


def _pause_reactor(assoc: Association, timeout_s: float = 1.0) -> None:
    """Make sure the association's reactor thread is really blocked before a C-STORE.

    pynetdicom 3.0's send_c_store clears `_reactor_checkpoint` and waits for `_is_paused`, but
    the reactor sets `_is_paused = True` just *before* its wait(); if the clear lands between
    that wait() returning and `_is_paused = False`, the reactor can take the C-STORE response
    off the queue ("Received unexpected C-STORE service message"); the sender then waits out
    dimse_timeout and the image is sent twice. Seen about once per 400 images on a loaded
    2-core machine. A thread blocked in Event.wait() is in the condition's waiter list, which
    is the reliable sign; send_c_store's own pause then passes at once. Private attributes, so
    every step is optional: without them this is a no-op.
    """
    checkpoint = getattr(assoc, "_reactor_checkpoint", None)
    waiters = getattr(getattr(checkpoint, "_cond", None), "_waiters", None)
    if checkpoint is None or waiters is None or not assoc.is_established:
        return
    checkpoint.clear()
    deadline = time.monotonic() + timeout_s
    while not waiters and time.monotonic() < deadline and assoc.is_established:
        time.sleep(0.0002)


class DicomSender:
    """C-STORE SCU for one destination; keeps its association open between images."""

    def __init__(self, dest: DicomDestination, calling_ae: str) -> None:
        self.dest = dest
        self.ae = AE(ae_title=dest.calling_ae_title or calling_ae)
        self.ae.acse_timeout = dest.acse_timeout
        self.ae.dimse_timeout = dest.dimse_timeout
        self.ae.network_timeout = dest.network_timeout
        self.tls_args = destination_tls_args(dest)  # None: plain TCP
        self.assoc: Association | None = None
        # (SOP class, transfer syntax) pairs to propose, oldest first; each pair is its own context
        # so the peer can accept or refuse every transfer syntax separately.
        self._wanted: list[tuple[str, str]] = []
        self._refused_classes: set[str] = set()  # SOP classes the last association refused

    def _want(self, sop_class: str, transfer_syntax: str) -> bool:
        """Add the pairs this instance needs; True when the association must be renegotiated."""
        added = False
        for pair in (
            (sop_class, transfer_syntax),
            (sop_class, ExplicitVRLittleEndian),
            (sop_class, ImplicitVRLittleEndian),
        ):
            if pair not in self._wanted:
                self._wanted.append(pair)
                added = True
        while len(self._wanted) > MAX_CONTEXTS:
            self._wanted.pop(0)
        return added

    def _associate(self) -> Association | None:
        self.release()
        self.ae.requested_contexts = []
        for sop_class, ts in self._wanted:
            self.ae.add_requested_context(sop_class, [ts])
        assoc = self.ae.associate(
            self.dest.host,
            self.dest.port,
            ae_title=self.dest.ae_title,
            evt_handlers=[(evt.EVT_CONN_OPEN, set_tcp_nodelay)],
            tls_args=self.tls_args,
        )
        if not assoc.is_established:
            # Every context refused (pynetdicom then aborts): the peer supports none of these
            # SOP classes in any syntax we offer; permanent, unlike a refused association.
            if assoc.rejected_contexts and not assoc.accepted_contexts:
                self._refused_classes = {cx.abstract_syntax for cx in assoc.rejected_contexts}
            return None
        self._refused_classes = set()
        self.assoc = assoc
        return assoc

    def _accepted(self, sop_class: str, ts: str) -> bool:
        assert self.assoc is not None
        return any(
            cx.abstract_syntax == sop_class and cx.transfer_syntax[0] == ts
            for cx in self.assoc.accepted_contexts
        )

    def send(self, path: Path) -> Delivery:
        try:
            meta = read_file_meta_info(path)
            sop_class = str(meta.MediaStorageSOPClassUID)
            ts = str(meta.TransferSyntaxUID)
        except Exception as exc:  # our spool always writes file meta; be explicit if not
            return Delivery("failed", None, f"no usable file meta: {exc}")
        renegotiate = self._want(sop_class, ts)
        stale = self.assoc is None or not self.assoc.is_established or renegotiate
        if stale and self._associate() is None:
            if sop_class in self._refused_classes:
                self._refused_classes = set()
                return Delivery("failed", None, f"permanent: SOP class not supported by peer "
                                                f"({sop_class}): no context accepted")  # fmt: skip
            return Delivery("retry", None, "association rejected, aborted or peer unreachable")
        assert self.assoc is not None
        try:
            if self._accepted(sop_class, ts):
                status = self._store(self.assoc, path)
            else:
                fallback = self._fallback_dataset(path, sop_class, ts)
                if isinstance(fallback, Delivery):
                    return fallback
                status = self._store(self.assoc, fallback)
        except (OSError, RuntimeError, ValueError, AttributeError) as exc:
            self.release()
            return Delivery("retry", None, f"send failed: {exc}")
        if "Status" not in status:  # timeout, abort or invalid response
            self.release()
            return Delivery("retry", None, "no response (timeout or association aborted)")
        return classify_status(int(status.Status))

    @staticmethod
    def _store(assoc: Association, what: Path | pydicom.Dataset) -> pydicom.Dataset:
        _pause_reactor(assoc)
        try:
            return assoc.send_c_store(what)
        finally:  # send_c_store resumes the reactor itself; make sure of it on errors too
            checkpoint = getattr(assoc, "_reactor_checkpoint", None)
            if checkpoint is not None:
                checkpoint.set()

    def _fallback_dataset(self, path: Path, sop_class: str, ts: str) -> pydicom.Dataset | Delivery:
        """The peer refused the instance's own transfer syntax: decompress to Explicit VR LE."""
        explicit_ok = self._accepted(sop_class, ExplicitVRLittleEndian)
        implicit_ok = self._accepted(sop_class, ImplicitVRLittleEndian)
        if not (explicit_ok or implicit_ok):
            if not any(cx.abstract_syntax == sop_class for cx in self.assoc.accepted_contexts):
                return Delivery("failed", None,
                                f"permanent: SOP class not supported by peer ({sop_class})")
            return Delivery("failed", None,
                            f"permanent: peer accepts {sop_class} in no syntax we offer")
        try:
            # Compressed -> native pixels; same instance, so keep its SOP Instance UID. Decoded in
            # a separate process: GDCM aborts the process on some headers (security).
            ds = decompress_isolated(path) if UID(ts).is_compressed else pydicom.dcmread(path)
        except Exception as exc:
            return Delivery("failed", None, f"peer refused {ts}; cannot decompress: {exc}")
        target = ExplicitVRLittleEndian if explicit_ok else ImplicitVRLittleEndian
        ds.file_meta.TransferSyntaxUID = target
        # Re-encode, not relabel: pynetdicom writes the dataset in its original encoding, so
        # that must become the target's (an Explicit VR file sent as Implicit VR otherwise fails
        # to encode, and did, for every such image).
        ds.set_original_encoding(target.is_implicit_VR, target.is_little_endian,
                                 ds.original_character_set)
        return ds

    def release(self) -> None:
        if self.assoc is not None:
            try:
                if self.assoc.is_established:
                    self.assoc.release()
            finally:
                self.assoc = None

    def close(self) -> None:
        self.release()
        self.ae.shutdown()


_UNSAFE = re.compile(r"[^0-9A-Za-z._-]")


class FolderSender:
    """Folder destination: <path>/<SOP Instance UID>.dcm, written atomically."""

    def __init__(self, dest: FolderDestination) -> None:
        self.dest = dest
        self.path = Path(dest.path)

    def send(self, path: Path, sop_instance_uid: str = "") -> Delivery:
        name = _UNSAFE.sub("_", sop_instance_uid) or path.stem
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path / f"{name}.dcm", path.read_bytes())
        except OSError as exc:
            return Delivery("retry", None, f"cannot write to {self.path}: {exc.strerror or exc}")
        return Delivery("sent", None, str(self.path / f"{name}.dcm"))

    def release(self) -> None:
        pass

    def close(self) -> None:
        pass


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
            meta = {**meta, "attempts": attempt, "last_outcome": delivery.outcome,
                    "last_status": delivery.status, "last_detail": delivery.detail,
                    "last_attempt_at": time.time()}  # fmt: skip
            meta.pop("next_attempt_at", None)
            meta.pop("scheduled_at", None)
            gave_up = delivery.outcome == "retry" and (
                self.policy.max_attempts is not None and attempt >= self.policy.max_attempts
            )
            if gave_up:
                delivery = Delivery("failed", delivery.status,
                                    f"gave up after {attempt} attempts: {delivery.detail}")
                meta["last_outcome"], meta["last_detail"] = "failed", delivery.detail
            self._record(meta, sop_uid, delivery, attempt)
            if delivery.outcome == "sent":
                self.spool.mark_sent(self.dest.name, name, meta)
            elif delivery.outcome == "failed":
                log.warning("%s: %s failed: %s", self.dest.name, sop_uid, delivery.detail)
                meta["failed_at"] = time.time()
                self.spool.mark_failed(self.dest.name, name, meta)
            else:
                delay = backoff_s(self.policy, attempt)
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

    def _record(self, meta: dict, sop_uid: str, delivery: Delivery, attempt: int) -> None:
        if self.forward_log is None:
            return
        try:
            self.forward_log.record_forward(
                meta.get("instance_id"), sop_uid, self.dest.name, delivery.outcome,
                delivery.status, delivery.detail, attempt, datetime.now(timezone.utc),
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
