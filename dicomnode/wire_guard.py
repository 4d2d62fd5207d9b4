"""What the node reads off an accepted connection, before pynetdicom decodes it.

pynetdicom reads a PDU as a 6-byte header and then the length the header claims, with blocking
reads: a peer that trickles bytes, claims 4 GiB, sends an unknown PDU type or a malformed
A-ASSOCIATE-RQ would hold the connection (and an association slot) or make pynetdicom abort
without a reason. `PduReader` takes over the connection's `recv`: it reads each PDU whole within
a deadline, checks its type and length against what the node advertised, and checks an
A-ASSOCIATE-RQ's AE titles and presentation context IDs (PS3.8 9.3.2, PS3.5 AE). A PDU that
fails is answered as PS3.8 says (A-ASSOCIATE-RJ for a malformed AE title, A-ABORT with a reason
otherwise), the connection is closed at once, and `on_cut` is told why. pynetdicom then sees a
closed connection, which it handles quietly.
"""

from __future__ import annotations

import contextlib
import logging
import math
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from pynetdicom.pdu import A_ABORT_RQ, A_ASSOCIATE_RJ

log = logging.getLogger(__name__)

MiB = 1024 * 1024
HEADER = struct.Struct(">BBL")  # PDU type, reserved, length of what follows

ASSOCIATE_RQ, ASSOCIATE_AC, ASSOCIATE_RJ, P_DATA_TF = 0x01, 0x02, 0x03, 0x04
RELEASE_RQ, RELEASE_RP, ABORT = 0x05, 0x06, 0x07
KNOWN_TYPES = frozenset(range(0x01, 0x08))
# What a requestor may send an acceptor (PS3.8 9.2): an A-ASSOCIATE-RQ first, then data and
# release; an A-ABORT at any time.
FROM_REQUESTOR_BEFORE = frozenset({ASSOCIATE_RQ, ABORT})
FROM_REQUESTOR_AFTER = frozenset({P_DATA_TF, RELEASE_RQ, RELEASE_RP, ABORT})
# An A-ASSOCIATE-RQ has no advertised limit; 128 contexts with 10 syntaxes each is ~40 KiB.
MAX_ASSOCIATE_PDU = 256 * 1024
FIXED_LENGTH = {RELEASE_RQ: 4, RELEASE_RP: 4, ABORT: 4}  # PS3.8 9.3.6-9.3.8
PRESENTATION_CONTEXT_ITEM = 0x20

# A-ABORT reasons (PS3.8 Table 9-26), source 2 = DICOM UL service-provider
REASON_NOT_SPECIFIED, UNRECOGNISED_PDU, UNEXPECTED_PDU, INVALID_PARAMETER = 0, 1, 2, 6
# A-ASSOCIATE-RJ: rejected-permanent, service-user, calling (3) or called (7) AE not recognised
CALLING_AE_NOT_RECOGNISED, CALLED_AE_NOT_RECOGNISED = 3, 7


@dataclass(frozen=True)
class WireLimits:
    """pdu_deadline_s: a PDU must arrive whole within this many seconds of its first byte
    (plus per_mib_s for each MiB it declares), and an A-ASSOCIATE-RQ within this many seconds of
    the connection opening; max_data_pdu: the P-DATA-TF length the node advertised (0: none)."""

    pdu_deadline_s: float
    max_data_pdu: int
    per_mib_s: float = 1.0
    # Asked on the first dataset fragment and after every `space_every` bytes more: None while
    # the spool can take that much, else why not (the transfer is aborted: writing it would
    # fail in pynetdicom's thread).
    space_check: Callable[[int], str | None] | None = None
    space_every: int = 16 * MiB


@dataclass(frozen=True)
class Cut:
    """Why a connection was closed: `reason` is the metric label, `detail` the log text,
    `answer` what the node sent before closing (None: nothing)."""

    reason: str
    detail: str
    answer: str | None
    after_request: bool = False  # the A-ASSOCIATE-RQ had been read: an association's abort


class PduReader:
    """Replaces one pynetdicom AssociationSocket's `recv` (see the module docstring)."""

    def __init__(self, assoc_socket: Any, limits: WireLimits,
                 on_cut: Callable[[Cut], None]) -> None:
        self._socket = assoc_socket
        self._limits = limits
        self._on_cut = on_cut
        self._opened = time.monotonic()
        self._associating = True  # until the first A-ASSOCIATE-RQ has been read
        self._body = bytearray()  # the body of the PDU whose header pynetdicom was just given
        self._cut_off = False
        self._data_received = 0
        self._next_space_check = 0  # bytes of P-DATA at which space is checked next
        self._restore_timeout = assoc_socket.socket.gettimeout() if assoc_socket.socket else None
        assoc_socket.recv = self.recv

    def recv(self, nr_bytes: int) -> bytearray:
        if self._body or nr_bytes != HEADER.size:
            # pynetdicom asks for the body of the header it was just given
            if nr_bytes >= len(self._body):
                taken, self._body = self._body, bytearray()
            else:
                taken, self._body = self._body[:nr_bytes], self._body[nr_bytes:]
            return taken
        raw = self._socket.socket
        if raw is None or self._cut_off:  # bytes left in the buffer after a cut are not read
            return bytearray()
        try:
            return self._read_pdu(raw)
        finally:
            with contextlib.suppress(OSError):  # sends keep the socket's own timeout
                raw.settimeout(self._restore_timeout)

    def _read_pdu(self, raw: socket.socket) -> bytearray:
        started = time.monotonic()
        deadline = started + self._limits.pdu_deadline_s
        if self._associating:
            deadline = min(deadline, self._opened + self._limits.pdu_deadline_s)
        header = _read_exactly(raw, HEADER.size, deadline)
        if len(header) < HEADER.size:
            if header:  # a peer that sent part of a header and went quiet or away
                self._cut(raw, Cut("deadline", f"PDU header incomplete ({len(header)} of 6 "
                                   "bytes) at the deadline", None))
            return bytearray()
        pdu_type, _, length = HEADER.unpack(header)
        problem = self._check_header(pdu_type, length)
        if problem is not None:
            self._cut(raw, problem)
            return bytearray()
        deadline += length / MiB * self._limits.per_mib_s
        body = _read_exactly(raw, length, deadline)
        if len(body) < length:
            self._cut(raw, Cut("deadline", f"PDU type {pdu_type:#04x} incomplete: {len(body)} "
                               f"of {length} bytes after {time.monotonic() - started:.1f} s",
                               None))
            return bytearray()
        problem = self._check_body(pdu_type, body)
        if problem is not None:
            self._cut(raw, problem)
            return bytearray()
        if pdu_type == ASSOCIATE_RQ:
            self._associating = False
        self._body = body
        return header

    def _check_header(self, pdu_type: int, length: int) -> Cut | None:
        if pdu_type not in KNOWN_TYPES:
            return _abort("unknown_pdu", f"unknown PDU type {pdu_type:#04x}", UNRECOGNISED_PDU)
        expected = FROM_REQUESTOR_BEFORE if self._associating else FROM_REQUESTOR_AFTER
        if pdu_type not in expected:
            when = "before" if self._associating else "after"
            return _abort("unexpected_pdu", f"PDU type {pdu_type:#04x} {when} the "
                          "A-ASSOCIATE-RQ", UNEXPECTED_PDU)
        limit = MAX_ASSOCIATE_PDU
        if pdu_type == P_DATA_TF:
            limit = self._limits.max_data_pdu or length
        fixed = FIXED_LENGTH.get(pdu_type)
        if fixed is not None and length != fixed:
            return _abort("oversize" if length > fixed else "malformed_pdu",
                          f"PDU type {pdu_type:#04x} of {length} bytes (always {fixed})",
                          INVALID_PARAMETER)
        if length > limit:
            return _abort("oversize", f"PDU type {pdu_type:#04x} of {length} bytes, over the "
                          f"{limit} the node takes", INVALID_PARAMETER)
        return None

    def _check_body(self, pdu_type: int, body: bytearray) -> Cut | None:
        if pdu_type == ASSOCIATE_RQ:
            return check_associate_rq(body)
        if pdu_type == P_DATA_TF:
            fault, dataset_bytes, command_ends = check_p_data(body)
            if fault is None and command_ends:
                # pynetdicom opens the dataset's file as soon as a C-STORE command is whole
                fault = self._no_room(0)
            if fault is None and dataset_bytes:
                fault = self._check_space(dataset_bytes)
            return fault
        return None

    def _check_space(self, received: int) -> Cut | None:
        """On the first dataset fragment and then every space_every bytes of them: pynetdicom
        writes datasets to a file in its own thread, where a failed write would crash it."""
        check = self._limits.space_check
        if check is None:
            return None
        self._data_received += received
        if self._data_received < self._next_space_check:
            return None
        self._next_space_check = self._data_received + self._limits.space_every
        return self._no_room(self._limits.space_every)

    def _no_room(self, incoming: int) -> Cut | None:
        check = self._limits.space_check
        reason = check(incoming) if check is not None else None
        if reason is None:
            return None
        return _abort("no_room", f"transfer stopped: {reason}", REASON_NOT_SPECIFIED)

    def _cut(self, raw: socket.socket, cut: Cut) -> None:
        self._cut_off = True
        cut = replace(cut, after_request=not self._associating)
        answer = ANSWERS.get(cut.answer) if cut.answer else None
        try:
            raw.settimeout(1.0)
            if answer is not None:
                raw.sendall(answer)
            raw.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # the peer is gone already: closing is all that is left
        try:
            self._on_cut(cut)
        except Exception:  # reporting must not keep the connection open
            log.exception("could not report a cut connection")


def _read_exactly(raw: socket.socket, count: int, deadline: float) -> bytearray:
    """Up to `count` bytes, fewer when the peer closes, errs or the deadline passes."""
    data = bytearray()
    while len(data) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            raw.settimeout(None if left == math.inf else left)
            chunk = raw.recv(min(count - len(data), 1 << 16))
        except (OSError, ValueError):  # timeout, reset, TLS error, socket closed
            break
        if not chunk:
            break
        data += chunk
    return data


def check_associate_rq(body: bytearray) -> Cut | None:
    """AE titles (PS3.5: 16 bytes, space padded, no control characters or backslash, not all
    spaces) and presentation context IDs (PS3.8 9.3.2.2: odd, 1-255) of an A-ASSOCIATE-RQ body
    (the PDU after its 6-byte header)."""
    if len(body) < 68:
        return _abort("malformed_pdu", f"A-ASSOCIATE-RQ of {len(body)} bytes (at least 68)",
                      INVALID_PARAMETER)
    for offset, name, reason in ((4, "called", CALLED_AE_NOT_RECOGNISED),
                                 (20, "calling", CALLING_AE_NOT_RECOGNISED)):
        title = bytes(body[offset:offset + 16])
        fault = ae_title_fault(title)
        if fault is not None:
            return Cut("bad_ae_title", f"{name} AE title {title!r}: {fault}", f"reject-{reason}")
    offset = 68
    while offset + 4 <= len(body):
        item_type = body[offset]
        (item_length,) = struct.unpack_from(">H", body, offset + 2)
        if item_type == PRESENTATION_CONTEXT_ITEM and item_length >= 1:
            context_id = body[offset + 4] if offset + 4 < len(body) else 0
            if context_id % 2 == 0:
                return _abort("bad_context_id", f"presentation context ID {context_id} (odd "
                              "numbers 1-255 only)", INVALID_PARAMETER)
        offset += 4 + item_length
    return None


def check_p_data(body: bytearray) -> tuple[Cut | None, int, bool]:
    """Each PDV item of a P-DATA-TF: a length that fits, an odd presentation context ID.
    Returns (the fault or None, bytes of dataset fragments it carries, whether a command ends
    in it)."""
    offset = dataset_bytes = 0
    command_ends = False
    while offset < len(body):
        if offset + 6 > len(body):
            return _abort("malformed_pdu", "P-DATA-TF ends inside a PDV item header",
                          INVALID_PARAMETER), dataset_bytes, command_ends
        (item_length,) = struct.unpack_from(">L", body, offset)
        context_id, control = body[offset + 4], body[offset + 5]
        if item_length < 2 or offset + 4 + item_length > len(body):
            return _abort("malformed_pdu", f"PDV item of {item_length} bytes in a P-DATA-TF "
                          f"of {len(body)}", INVALID_PARAMETER), dataset_bytes, command_ends
        if context_id % 2 == 0:
            return _abort("bad_context_id", f"PDV on presentation context ID {context_id}",
                          INVALID_PARAMETER), dataset_bytes, command_ends
        if not control & 0x01:  # PS3.8 E.2: bit 0 clear = a dataset fragment, not a command
            dataset_bytes += item_length - 2
        elif control & 0x02:  # the last fragment of a command
            command_ends = True
        offset += 4 + item_length
    return None, dataset_bytes, command_ends


def ae_title_fault(title: bytes) -> str | None:
    if any(byte < 0x20 or byte > 0x7E for byte in title):
        return "control or non-ASCII characters (NUL padding included; PS3.8 pads with spaces)"
    if b"\\" in title:
        return "a backslash"
    if not title.strip(b" "):
        return "all spaces"
    return None


def _abort(reason: str, detail: str, diagnostic: int) -> Cut:
    return Cut(reason, detail, f"abort-{diagnostic}")


def _abort_pdu(diagnostic: int) -> bytes:
    pdu = A_ABORT_RQ()
    pdu.source = 0x02  # service-provider
    pdu.reason_diagnostic = diagnostic
    return pdu.encode()


def _reject_pdu(diagnostic: int) -> bytes:
    pdu = A_ASSOCIATE_RJ()
    pdu.result = 0x01  # rejected-permanent
    pdu.source = 0x01  # service-user
    pdu.reason_diagnostic = diagnostic
    return pdu.encode()


ANSWERS = {
    **{f"abort-{d}": _abort_pdu(d) for d in (REASON_NOT_SPECIFIED, UNRECOGNISED_PDU,
                                             UNEXPECTED_PDU, INVALID_PARAMETER)},
    **{f"reject-{d}": _reject_pdu(d) for d in (CALLING_AE_NOT_RECOGNISED,
                                               CALLED_AE_NOT_RECOGNISED)},
}
ANSWER_TEXT = {
    f"abort-{REASON_NOT_SPECIFIED}": "A-ABORT (source 2, reason 0: not specified)",
    f"abort-{UNRECOGNISED_PDU}": "A-ABORT (source 2, reason 1: unrecognised PDU)",
    f"abort-{UNEXPECTED_PDU}": "A-ABORT (source 2, reason 2: unexpected PDU)",
    f"abort-{INVALID_PARAMETER}": "A-ABORT (source 2, reason 6: invalid PDU parameter value)",
    f"reject-{CALLING_AE_NOT_RECOGNISED}":
        "A-ASSOCIATE-RJ (result 1, source 1, reason 3: calling AE title not recognised)",
    f"reject-{CALLED_AE_NOT_RECOGNISED}":
        "A-ASSOCIATE-RJ (result 1, source 1, reason 7: called AE title not recognised)",
}


def closed_by_peer(connection: Any) -> bool:
    """True for an accepted connection its peer has already closed or reset (a port scan, a load
    balancer's connect-and-close health check): the accept loop drops it before pynetdicom
    starts an association and its two threads for it (~3 ms of CPU each, which under a connect
    storm queued real modalities behind hundreds of dead connections). Never blocks; a TLS
    connection is left to the handshake (its bytes cannot be peeked here)."""
    if isinstance(connection, ssl.SSLSocket):
        return False
    try:
        readable, _, _ = select.select([connection], [], [], 0)
        if not readable:
            return False  # open and quiet: the A-ASSOCIATE-RQ has not arrived yet
        return connection.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True  # reset, or already closed


def accept_deferring_tls_handshake(server: Any) -> Callable[[], tuple[Any, Any]]:
    """A get_request for pynetdicom's AssociationServer that wraps TLS connections without
    shaking hands: pynetdicom does the handshake in its accept loop, where one peer that
    connects and sends nothing holds the loop, and every modality with it, for as long as it
    likes. The handshake happens in the connection's own thread instead (tls_handshake)."""

    def get_request() -> tuple[Any, Any]:
        connection, address = server.socket.accept()
        if server.ssl_context:
            connection = server.ssl_context.wrap_socket(
                connection, server_side=True, do_handshake_on_connect=False)
        return connection, address

    return get_request


def tls_handshake(connection: Any, deadline_s: float) -> Cut | None:
    """Finish the TLS handshake of an accepted connection within deadline_s in all (a timer
    shuts the socket down at the deadline, so a trickle cannot stretch it); the Cut to report
    when it fails, None when done or not TLS."""
    if not isinstance(connection, ssl.SSLSocket):
        return None
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        with contextlib.suppress(OSError):
            connection.shutdown(socket.SHUT_RDWR)

    timer = threading.Timer(deadline_s, expire)
    timer.daemon = True
    timer.start()
    try:
        connection.settimeout(deadline_s)
        connection.do_handshake()
        return None
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        if expired.is_set() or isinstance(exc, TimeoutError):
            return Cut("deadline", f"TLS handshake not complete within {deadline_s:g} s", None)
        return Cut("tls_handshake", f"TLS handshake failed: {exc}", None)
    finally:
        timer.cancel()
