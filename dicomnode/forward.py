"""Forward stage: one forwarder thread per destination, each draining its outgoing/<dest>/ folder.

A slow or unreachable destination only delays its own queue. DICOM destinations reuse one
association (TCP_NODELAY) across images, propose each instance's own transfer syntax, and if the
peer refuses it, decompress and send Explicit VR Little Endian. Folder destinations copy the
file atomically.
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

from dicomnode.config import DicomDestination, FolderDestination
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
    if status == 0x0000:
        return Delivery("sent", status, "success")
    if status in WARNING_STATUSES:
        return Delivery("sent", status, f"warning 0x{status:04X}")
    if 0xA700 <= status <= 0xA7FF:  # out of resources: transient
        return Delivery("retry", status, f"out of resources 0x{status:04X}")
    return Delivery("failed", status, f"refused 0x{status:04X}")


class DicomSender:
    """C-STORE SCU for one destination; keeps its association open between images."""

    def __init__(self, dest: DicomDestination, calling_ae: str) -> None:
        self.dest = dest
        self.ae = AE(ae_title=dest.calling_ae_title or calling_ae)
        self.ae.acse_timeout = dest.acse_timeout
        self.ae.dimse_timeout = dest.dimse_timeout
        self.ae.network_timeout = dest.network_timeout
        self.assoc: Association | None = None
        # (SOP class, transfer syntax) pairs to propose, oldest first; each pair is its own context
        # so the peer can accept or refuse every transfer syntax separately.
        self._wanted: list[tuple[str, str]] = []

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
        )
        if not assoc.is_established:
            return None
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
            return Delivery("retry", None, "association rejected, aborted or peer unreachable")
        assert self.assoc is not None
        try:
            if self._accepted(sop_class, ts):
                status = self.assoc.send_c_store(path)
            else:
                fallback = self._fallback_dataset(path, sop_class, ts)
                if isinstance(fallback, Delivery):
                    return fallback
                status = self.assoc.send_c_store(fallback)
        except (OSError, RuntimeError, ValueError, AttributeError) as exc:
            self.release()
            return Delivery("retry", None, f"send failed: {exc}")
        if "Status" not in status:  # timeout, abort or invalid response
            self.release()
            return Delivery("retry", None, "no response (timeout or association aborted)")
        return classify_status(int(status.Status))

    def _fallback_dataset(self, path: Path, sop_class: str, ts: str) -> pydicom.Dataset | Delivery:
        """The peer refused the instance's own transfer syntax: decompress to Explicit VR LE."""
        explicit_ok = self._accepted(sop_class, ExplicitVRLittleEndian)
        implicit_ok = self._accepted(sop_class, ImplicitVRLittleEndian)
        if not (explicit_ok or implicit_ok):
            return Delivery("failed", None, f"peer accepts {sop_class} in no syntax we offer")
        try:
            ds = pydicom.dcmread(path)
            if UID(ts).is_compressed:
                # -> Explicit VR LE, native pixels; same instance, so keep its SOP Instance UID
                ds.decompress(generate_instance_uid=False)
            elif UID(ts) != ExplicitVRLittleEndian or not explicit_ok:
                target = ExplicitVRLittleEndian if explicit_ok else ImplicitVRLittleEndian
                ds.file_meta.TransferSyntaxUID = target
        except Exception as exc:
            return Delivery("failed", None, f"peer refused {ts}; cannot decompress: {exc}")
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


class Forwarder(threading.Thread):
    """Drains outgoing/<dest>/ in arrival order. Transient failures pause this queue only."""

    def __init__(
        self,
        dest: DicomDestination | FolderDestination,
        spool: Spool,
        forward_log: ForwardLog | None,
        calling_ae: str,
    ) -> None:
        super().__init__(name=f"forward-{dest.name}", daemon=True)
        self.dest = dest
        self.spool = spool
        self.forward_log = forward_log
        if isinstance(dest, DicomDestination):
            self.sender: DicomSender | FolderSender = DicomSender(dest, calling_ae)
            self.retry_delay_s = dest.retry_delay_s
            self.idle_release_s = dest.idle_release_s
        else:
            self.sender = FolderSender(dest)
            self.retry_delay_s = 5.0
            self.idle_release_s = 0.0
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
                if self._drain():  # a transient failure: wait before trying again
                    self._wake.wait(self.retry_delay_s)
                elif not self._wake.wait(self.idle_release_s or None):
                    self.sender.release()  # idle: give the peer its association back
                    self._wake.wait()
        finally:
            self.sender.close()

    def _drain(self) -> bool:
        """Send everything queued; True if stopped by a transient failure."""
        for name in self.spool.names(OUTGOING, self.dest.name):
            if self._stopping.is_set():
                return False
            path = self.spool.dir(OUTGOING, self.dest.name) / f"{name}.dcm"
            meta = self.spool.read_meta(path)
            sop_uid = str(meta.get("sop_instance_uid", ""))
            if isinstance(self.sender, FolderSender):
                delivery = self.sender.send(path, sop_uid)
            else:
                delivery = self.sender.send(path)
            attempt = int(meta.get("attempts", 0)) + 1
            meta = {**meta, "attempts": attempt, "last_outcome": delivery.outcome,
                    "last_status": delivery.status, "last_detail": delivery.detail}  # fmt: skip
            self._record(meta, sop_uid, delivery, attempt)
            if delivery.outcome == "sent":
                self.spool.mark_sent(self.dest.name, name, meta)
            elif delivery.outcome == "failed":
                log.warning("%s: %s failed: %s", self.dest.name, sop_uid, delivery.detail)
                self.spool.mark_failed(self.dest.name, name, meta)
            else:
                log.info("%s: %s will be retried: %s", self.dest.name, sop_uid, delivery.detail)
                write_atomic(path.with_suffix(".json"), _json(meta), self.spool.dir("tmp"))
                return True
        return False

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
