"""Receive stage: the pynetdicom AE (C-ECHO, C-STORE for every storage SOP class), TCP_NODELAY.

The C-STORE handler only spools: the encoded dataset exactly as the peer sent it (no decode, no
re-encode; pynetdicom wrote it to a file as it arrived, dicomnode.receive_files) goes to the spool
atomically, and only then is Success returned. What is read off the wire first is checked by
dicomnode.wire_guard, and what a C-STORE must agree with by dicomnode.store_checks.
Classification happens on the pipeline's worker threads, so a modality never waits on the AI.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import socket
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydicom._uid_dict import UID_dictionary
from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt, register_uid, sop_class
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import Verification

from dicomnode.association_audit import AssociationAudit, AssociationEvent
from dicomnode.config import ReceiveConfig
from dicomnode.hardening import access_policy, receive_security
from dicomnode.identity import node_ae
from dicomnode.reactor_wait import make_waiting
from dicomnode.receive_files import ReceivedDataset, ReceiveToFiles, file_header
from dicomnode.repeat_limiter import RepeatLimiter, held_note
from dicomnode.spool import TMP, Spool
from dicomnode.store_checks import Refusal, check_store
from dicomnode.wire_guard import (
    ANSWER_TEXT,
    Cut,
    PduReader,
    WireLimits,
    accept_deferring_tls_handshake,
    closed_by_peer,
    tls_handshake,
)

log = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
TLS_HANDSHAKE_S = 10.0  # when receive.read_timeout_s is 0 (no read deadline): still bounded
MiB = 1024 * 1024


def set_tcp_nodelay(event: evt.Event) -> None:
    """EVT_CONN_OPEN handler: switch Nagle off (about 40 ms per C-STORE on loopback otherwise)."""
    sock = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:  # e.g. a socket the peer already closed
            log.debug("TCP_NODELAY not set: %s", exc)


def free_slot_of_unrequested(event: evt.Event) -> None:
    """EVT_CONN_CLOSE: a connection that closed (or was cut off by the read deadline) before
    its A-ASSOCIATE-RQ arrived. pynetdicom's acceptor thread would wait out acse_timeout for a
    request that cannot come, holding an association slot; wake it the way its own timeout
    does (an empty primitive), so the slot is free at once."""
    assoc = event.assoc
    if not assoc.is_acceptor or assoc.is_established or assoc.requestor.primitive is not None:
        return
    user_queue = getattr(assoc.dul, "to_user_queue", None)
    if user_queue is not None:
        user_queue.put(None)


def failure(status: int, comment: str, offending: tuple[int, ...] = ()) -> Dataset:
    response = Dataset()
    response.Status = status
    response.ErrorComment = comment[:64]  # LO
    if offending:
        response.OffendingElement = list(offending)
    return response


class Receiver:
    """The node's listening AE; `on_spooled(path, sop_class_uid)` is called once an instance is
    safely spooled."""

    def __init__(
        self,
        config: ReceiveConfig,
        spool: Spool,
        on_spooled: Callable[[Path, str], None],  # (path, SOP Class UID)
        disk_guard: Any = None,
        on_association: Callable[[AssociationEvent], None] | None = None,
        metrics: Any = None,
    ) -> None:
        self.config = config
        self.spool = spool
        self.on_spooled = on_spooled
        self.disk_guard = disk_guard  # dicomnode.diskguard.DiskGuard or None
        self.metrics = metrics  # dicomnode.metrics.NodeMetrics or None
        # accepted, refused and aborted associations: the audit
        self._record_association = on_association or (lambda _: None)
        self._audit = AssociationAudit(self._record_association, log.exception)
        self._wire_limits = WireLimits(config.read_timeout_s or float("inf"), config.max_pdu,
                                       space_check=self._room_for)
        self._lines = RepeatLimiter()  # bad connections and refused stores: a few lines a minute
        self.policy = access_policy(config)
        self.ae = build_ae(config)
        self._server: Any = None
        self._to_files: ReceiveToFiles | None = None

    def _room_for(self, incoming: int) -> str | None:
        """None when the spool can be written `incoming` more bytes (twice that free, so the
        writes until the next check cannot fail), else why not. Below the free-space floor but
        above this the transfer goes on and is answered 0xA700 at its end (DiskGuard)."""
        tmp = self.spool.dir(TMP)
        if not os.access(tmp, os.W_OK):  # False when missing, too
            return f"the spool's {tmp} cannot be written"
        try:
            free = (self.disk_guard.free_bytes() if self.disk_guard is not None
                    else shutil.disk_usage(tmp).free)
        except OSError as exc:
            return f"cannot check free space: {exc.strerror or exc}"
        if free < 2 * incoming:
            return f"disk full: {free // MiB} MB free"
        return None

    def update_access(self, config: ReceiveConfig) -> None:
        """A reloaded allow-list: applies to the next association request."""
        self.policy = access_policy(config)

    def start(self) -> tuple[str, int]:
        # allow-list + called-AE check (EVT_REQUESTED) and the TLS context, from receive config
        security_handlers, ssl_context = receive_security(self.config, lambda: self.policy)
        handlers = [
            (evt.EVT_CONN_OPEN, self._on_connection),
            (evt.EVT_C_STORE, self.handle_store),
            *security_handlers,
            (evt.EVT_REQUESTED, self._within_capacity),
            (evt.EVT_CONN_CLOSE, free_slot_of_unrequested),
            *self._audit.handlers,
        ]
        self._to_files = ReceiveToFiles(self.spool.dir(TMP))
        try:
            self._server = self.ae.start_server(
                (self.config.host, self.config.port),
                block=False,
                evt_handlers=handlers,
                ssl_context=ssl_context,
            )
        except OSError as exc:  # name the listener: the node has several
            self._to_files.restore()
            raise ListenerError(
                f"DICOM listener (receive.host/port) cannot bind {self.config.host}:"
                f"{self.config.port}: {exc.strerror or exc}"
                + (" (another program, or another dicomnode, listens there)"
                   if exc.errno == errno.EADDRINUSE else "")) from None
        # pynetdicom deep-copies the supported contexts for every connection (thousands of UIDs
        # here: ~100 ms of CPU under the GIL, which capped the accept rate at ~7 connections/s);
        # negotiation only reads them, so every association can share one list.
        self._server.contexts = SharedContexts(self._server.contexts)
        self._server.verify_request = self._worth_an_association  # socketserver's hook
        self._server.get_request = accept_deferring_tls_handshake(self._server)
        # socketserver listens with a backlog of 5: a burst of connects (a scanner, many
        # modalities at once) overflowed it, and each dropped SYN cost its sender a second
        with contextlib.suppress(OSError):
            self._server.socket.listen(max(128, self.config.max_pending_connections))
        host, port = self._server.server_address[:2]
        return host, port

    @property
    def address(self) -> tuple[str, int]:
        return self._server.server_address[:2]

    def stop(self, grace_s: float = 0.0) -> None:
        """Stop accepting (the listening socket closes: new associations are refused), give the
        associations in progress up to grace_s to finish and release, then abort what is left."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        in_progress = self.ae.active_associations
        if in_progress and grace_s > 0:
            log.info("stopping: no new associations; waiting up to %.0f s for %d in progress",
                     grace_s, len(in_progress))  # fmt: skip
            deadline = time.monotonic() + grace_s
            while self.ae.active_associations and time.monotonic() < deadline:
                time.sleep(0.05)
        left = self.ae.active_associations
        if left:
            log.warning("stopping: aborting %d association(s) still open after %.0f s "
                        "(receive.shutdown_grace_s)", len(left), grace_s)  # fmt: skip
        self.ae.shutdown()
        if self._to_files is not None:
            self._to_files.restore()
            self._to_files = None

    def _on_connection(self, event: evt.Event) -> None:
        """TCP_NODELAY; the TLS handshake, within read_timeout_s (in this connection's thread,
        not the accept loop); a connection over max_pending_connections closed at once; every
        PDU read whole within the deadline and checked (dicomnode.wire_guard); the
        association's threads wait for work instead of polling (dicomnode.reactor_wait)."""
        set_tcp_nodelay(event)
        assoc_socket = event.assoc.dul.socket
        sock = assoc_socket.socket if assoc_socket else None
        if sock is None:
            return
        pending = [a for a in self.ae.active_associations
                   if a.is_acceptor and not a.is_established and a is not event.assoc]
        if len(pending) >= self.config.max_pending_connections:  # before any handshake work
            problem = Cut("too_many_pending", f"{len(pending)} connections already waiting to "
                          "associate (receive.max_pending_connections)", None)
        else:
            problem = tls_handshake(sock, self.config.read_timeout_s or TLS_HANDSHAKE_S)
        if problem is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            self._connection_cut(event.assoc, problem)
            return
        if self.config.read_timeout_s:
            try:  # sends keep a deadline too
                sock.settimeout(self.config.read_timeout_s)
            except OSError as exc:
                log.debug("send deadline not set: %s", exc)
        assoc = event.assoc
        PduReader(assoc_socket, self._wire_limits, lambda cut: self._connection_cut(assoc, cut))
        make_waiting(assoc)  # its threads wait for PDUs and each other, not 1 kHz polls

    def _worth_an_association(self, connection: Any, address: Any) -> bool:
        """socketserver's verify_request, in the accept loop: a connection its peer has already
        closed is dropped there (counted, not logged: a health check is not an attack)."""
        if not closed_by_peer(connection):
            return True
        if self.metrics is not None:
            self.metrics.connection_cut("closed_before_request")
        return False

    def _within_capacity(self, event: evt.Event) -> None:
        """EVT_REQUESTED: at most max_associations established at once; connections still
        associating are capped apart (max_pending_connections), so stalled ones cannot lock
        modalities out."""
        assoc = event.assoc
        if assoc.is_rejected or assoc.is_aborted:
            return
        established = [a for a in self.ae.active_associations
                       if a.is_acceptor and a.is_established and a is not assoc]
        if len(established) < self.config.max_associations:
            return
        log.warning("association refused: %d associations open (receive.max_associations); "
                    "A-ASSOCIATE-RJ result 0x02 source 0x03 reason 0x02", len(established))
        assoc.acse.send_reject(0x02, 0x03, 0x02)
        evt.trigger(assoc, evt.EVT_REJECTED, {})
        assoc.kill()

    def _connection_cut(self, assoc: Any, cut: Cut) -> None:
        """Counted always; a few log lines and audit rows a minute per reason."""
        if self.metrics is not None:
            self.metrics.connection_cut(cut.reason)
        answer = ANSWER_TEXT.get(cut.answer or "", "closed")
        if cut.after_request:  # the audit records the abort that follows, with this reason
            self._audit.note_cut(assoc, f"cut off by the node: {cut.detail}; {answer}")
        admitted, held = self._lines.admit(("cut", cut.reason))
        if not admitted:
            return
        peer = f"{assoc.requestor.address}:{assoc.requestor.port}"
        log.warning("connection from %s cut: %s; answered %s%s", peer, cut.detail, answer,
                    held_note(held, self._lines.window_s))
        if not cut.after_request:
            outcome = "rejected" if (cut.answer or "").startswith("reject") else "aborted"
            self._record_association(AssociationEvent(
                datetime.now(timezone.utc), outcome, "", "", peer,
                f"{answer}: {cut.detail} (before association)"))

    def handle_store(self, event: evt.Event) -> int | Dataset:
        requestor = event.assoc.requestor
        request = event.request
        context = event.context
        meta = {
            "received_at": datetime.now(timezone.utc).isoformat(),
            "calling_ae": requestor.ae_title,
            "called_ae": event.assoc.acceptor.ae_title,
            "peer_address": f"{requestor.address}:{requestor.port}",
            "sop_class_uid": str(request.AffectedSOPClassUID),
            "sop_instance_uid": str(request.AffectedSOPInstanceUID),
            "transfer_syntax_uid": str(context.transfer_syntax),
        }
        try:
            received = ReceivedDataset.of(event)
            head = received.head()
        except (OSError, ValueError) as exc:  # pynetdicom's file of it cannot be read
            log.error("cannot read the received %s: %s", meta["sop_instance_uid"], exc)
            return failure(STATUS_OUT_OF_RESOURCES, f"cannot read the dataset: {exc}")
        refusal = check_store(request, context, head)
        if refusal is None and received.size > self.config.max_instance_mb * MiB:
            refusal = Refusal(STATUS_OUT_OF_RESOURCES, f"instance of {received.size // MiB} MB, "
                              f"over receive.max_instance_mb {self.config.max_instance_mb:g}",
                              reason="too_large")
        if refusal is not None:
            if self.metrics is not None:
                self.metrics.image_refused(refusal.reason)
            admitted, held = self._lines.admit(("store", refusal.reason))
            if admitted:
                log.warning("C-STORE from %s refused (%#06x): %s%s", meta["calling_ae"],
                            refusal.status, refusal.comment,
                            held_note(held, self._lines.window_s))
            return failure(refusal.status, refusal.comment, refusal.offending)
        if self.disk_guard is not None:
            # Below the free-space floor: refuse before writing anything (nothing half-written).
            reason = self.disk_guard.refusal(received.size)
            if reason is not None:
                return failure(STATUS_OUT_OF_RESOURCES, reason)
        try:
            # Preamble + file meta (built from the request and the context, naming the node as
            # the implementation that wrote the file and the sender as its source) + the
            # dataset bytes exactly as they arrived, copied from the file pynetdicom wrote.
            path = self.spool.accept(received.writer(file_header(event)), meta)
        except OSError as exc:
            log.error("cannot spool %s: %s", meta["sop_instance_uid"], exc)
            return failure(STATUS_OUT_OF_RESOURCES, f"cannot store: {exc.strerror or exc}")
        try:
            self.on_spooled(path, meta["sop_class_uid"])
        except Exception:  # the spool has it; the worker's start-up scan will find it
            log.exception("could not notify the pipeline of %s", path.name)
        return STATUS_SUCCESS


class SharedContexts(list):
    """The listener's supported presentation contexts, handed to each association as they are
    (copy.deepcopy returns a shallow copy): pynetdicom's negotiation builds new contexts for its
    answer and never changes these."""

    def __deepcopy__(self, memo: dict) -> list:
        return list(self)


class ListenerError(OSError):
    """A listener could not bind: names which one, and where."""


def build_ae(config: ReceiveConfig) -> AE:
    ae = node_ae(config.ae_title)
    ae.maximum_pdu_size = config.max_pdu
    ae.acse_timeout = config.acse_timeout
    ae.dimse_timeout = config.dimse_timeout
    ae.network_timeout = config.network_timeout
    # pynetdicom counts connections still associating too; the node caps established
    # associations itself (Receiver._within_capacity) and pending ones apart
    ae.maximum_associations = config.max_associations + config.max_pending_connections
    ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
    # Every storage SOP class (retired ones too) in every transfer syntax pydicom knows: the node
    # stores whatever a modality sends; decoding problems are the pipeline's to log, not a refusal.
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    for retired_class in retired_image_storage_classes():
        ae.add_supported_context(retired_class, ALL_TRANSFER_SYNTAXES)
    return ae


def retired_image_storage_classes() -> list[str]:
    """Image storage SOP classes pydicom knows but pynetdicom no longer lists (retired ones, e.g.
    the old Ultrasound Image Storage), registered with pynetdicom's Storage service: old
    modalities still send them, and a store-and-forward node must not refuse an image for its
    class."""
    listed = {context.abstract_syntax for context in AllStoragePresentationContexts}
    retired = []
    for uid, (name, kind, _info, _retired, keyword) in UID_dictionary.items():
        if (
            kind == "SOP Class"
            and uid.startswith("1.2.840.10008.5.1.4.1.1.")
            and "Storage" in name
            and uid not in listed
        ):
            if not hasattr(sop_class, keyword):
                register_uid(uid, keyword, StorageServiceClass)
            retired.append(uid)
    return retired
