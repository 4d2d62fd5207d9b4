"""Senders: deliver one spooled file to one destination and say how it went (a Delivery).

DICOM destinations reuse one association (TCP_NODELAY) across images, propose each instance's own
transfer syntax beside the ones the node can re-encode it into (dicomnode.transcode), and send
the file as stored when the peer takes its syntax. Folder destinations copy the file atomically.
What a failure means for the queue (permanent, the link's, or this image's) is decided here; what
the queue does about it, in dicomnode.forward.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.filereader import read_file_meta_info
from pynetdicom import _config, evt
from pynetdicom.association import Association

from dicomnode.config_routing import DicomDestination, FolderDestination
from dicomnode.hardening import destination_tls_args
from dicomnode.identity import node_ae
from dicomnode.reactor_wait import make_waiting
from dicomnode.receive import set_tcp_nodelay
from dicomnode.spool import write_atomic
from dicomnode.transcode import FALLBACK_SYNTAXES, NoTargetSyntax, fallback_target, reencode

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
    # For a retry: "link" (the destination waits, in order) or "image" (this image failed on a
    # working association; bounded by retry.image_attempts).
    scope: str = "link"


def image_retry(detail: str, status: int | None = None) -> Delivery:
    return Delivery("retry", status, detail, scope="image")


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


def send_c_store_guarded(assoc: Association, what: Path | pydicom.Dataset) -> pydicom.Dataset:
    """`assoc.send_c_store(what)` with its reactor surely paused first (_pause_reactor): what
    the forwarder, bench/relay.py and the tests' modality send through."""
    _pause_reactor(assoc)
    try:
        return assoc.send_c_store(what)
    finally:  # send_c_store resumes the reactor itself; make sure of it on errors too
        checkpoint = getattr(assoc, "_reactor_checkpoint", None)
        if checkpoint is not None:
            checkpoint.set()


def _dul_waits(event: evt.Event) -> None:
    # the DUL waits for the peer or for what the forwarder sends; the association thread polls:
    # pynetdicom pauses it around every request (dicomnode.reactor_wait)
    make_waiting(event.assoc, association_thread=False)


class DicomSender:
    """C-STORE SCU for one destination; keeps its association open between images."""

    def __init__(self, dest: DicomDestination, calling_ae: str) -> None:
        self.dest = dest
        self.ae = node_ae(dest.calling_ae_title or calling_ae)
        self.ae.acse_timeout = dest.acse_timeout
        self.ae.dimse_timeout = dest.dimse_timeout
        self.ae.network_timeout = dest.network_timeout
        self.tls_args = destination_tls_args(dest)  # None: plain TCP
        self.assoc: Association | None = None
        # (SOP class, transfer syntax) pairs to propose, oldest first; each pair is its own context
        # so the peer can accept or refuse every transfer syntax separately.
        self._wanted: list[tuple[str, str]] = []
        self._refused_classes: set[str] = set()  # SOP classes the last association refused
        self._accepted_classes: set[str] = set()  # SOP classes this peer has ever accepted

    def _want(self, sop_class: str, transfer_syntax: str) -> bool:
        """Add the pairs this instance needs (its own syntax, then the ones the node can
        re-encode it into); True when the association must be renegotiated."""
        added = False
        for pair in [(sop_class, transfer_syntax)] + [(sop_class, ts) for ts in FALLBACK_SYNTAXES]:
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
            evt_handlers=[(evt.EVT_CONN_OPEN, set_tcp_nodelay), (evt.EVT_CONN_OPEN, _dul_waits)],
            tls_args=self.tls_args,
        )
        if not assoc.is_established:
            # Every context refused (pynetdicom then aborts): the peer supports none of these
            # SOP classes in any syntax we offer; permanent, unlike a refused association.
            if assoc.rejected_contexts and not assoc.accepted_contexts:
                self._refused_classes = {cx.abstract_syntax for cx in assoc.rejected_contexts}
            return None
        self._refused_classes = set()
        self._accepted_classes |= {cx.abstract_syntax for cx in assoc.accepted_contexts}
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
            return image_retry(f"cannot read the file meta: {exc}")
        renegotiate = self._want(sop_class, ts)
        stale = self.assoc is None or not self.assoc.is_established or renegotiate
        if stale and self._associate() is None:
            refused, self._refused_classes = self._refused_classes, set()
            if refused & self._accepted_classes:
                # It took these before: the peer is misconfigured or changed, not this image.
                return Delivery("retry", None, "peer accepted no presentation context, "
                                               "not even for SOP classes it took before")
            if sop_class in refused:
                return Delivery("failed", None, f"permanent: SOP class not supported by peer "
                                                f"({sop_class}): no context accepted")  # fmt: skip
            return Delivery("retry", None, "association rejected, aborted or peer unreachable")
        assert self.assoc is not None
        try:
            if self._accepted(sop_class, ts):
                status = send_c_store_guarded(self.assoc, path)
            else:
                fallback = self._fallback_dataset(path, sop_class, ts)
                if isinstance(fallback, Delivery):
                    return fallback
                status = send_c_store_guarded(self.assoc, fallback)
        except Exception as exc:  # this image, on an association that was working
            self.release()
            return image_retry(f"cannot send this image: {type(exc).__name__}: {exc}")
        if "Status" not in status:  # timeout, abort or invalid response during this image
            self.release()
            return image_retry("no response while this image was in transfer "
                               "(timeout or association aborted)")
        return classify_status(int(status.Status))

    def _fallback_dataset(self, path: Path, sop_class: str, ts: str) -> pydicom.Dataset | Delivery:
        """The peer refused the instance's own transfer syntax: re-encode it into one it took."""
        assert self.assoc is not None
        accepted = {cx.transfer_syntax[0] for cx in self.assoc.accepted_contexts
                    if cx.abstract_syntax == sop_class}
        if not accepted:
            return Delivery("failed", None,
                            f"permanent: SOP class not supported by peer ({sop_class})")
        no_syntax = Delivery("failed", None, f"permanent: peer accepts {sop_class} only in "
                                             f"{sorted(accepted)}, none of which the node can "
                                             f"produce from {ts}")  # fmt: skip
        target = fallback_target(accepted)
        if target is None:
            return no_syntax
        try:
            return reencode(path, ts, target)
        except NoTargetSyntax:  # no pixel data to compress, and no native syntax accepted
            return no_syntax
        except Exception as exc:
            return image_retry(f"peer refused {ts}; cannot re-encode to {target.name}: "
                               f"{type(exc).__name__}: {exc}")

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
