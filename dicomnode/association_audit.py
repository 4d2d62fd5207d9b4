"""What the audit trail records of each association: accepted, rejected (with the A-ASSOCIATE-RJ
codes) and aborted after acceptance (by the peer's A-ABORT, a lost connection or read deadline,
or the node itself), who asked and from where. pynetdicom's events feed it; the node counts each
record in metrics and journals it into the log database's associations table."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from pynetdicom import evt
from pynetdicom.pdu_primitives import A_ABORT, A_P_ABORT


@dataclass(frozen=True)
class AssociationEvent:
    """An association and what became of it, for metrics and the audit log."""

    at: datetime
    outcome: str  # one of ASSOCIATION_OUTCOMES
    calling_ae: str
    called_ae: str
    peer_address: str
    reason: str | None  # rejected: codes and meaning; aborted: who aborted, and how


REJECT_REASONS = {(1, 1): "no reason given", (1, 2): "application context not supported",
                  (1, 3): "calling AE title not recognised",
                  (1, 7): "called AE title not recognised", (3, 1): "temporary congestion",
                  (3, 2): "local limit exceeded (receive.max_associations)"}  # fmt: skip
ABORT_SOURCES = {0: "service user", 1: "reserved", 2: "service provider"}  # PS3.8 9.3.8


def association_event(event: evt.Event, outcome: str | None = None,
                      reason: str | None = None) -> AssociationEvent:
    assoc = event.assoc
    request = assoc.requestor.primitive
    calling = str(getattr(request, "calling_ae_title", "") or assoc.requestor.ae_title).strip()
    called = str(getattr(request, "called_ae_title", "") or assoc.acceptor.ae_title).strip()
    if event.event == evt.EVT_REJECTED:
        answer = assoc.acceptor.primitive
        codes = (int(answer.result), int(answer.result_source), int(answer.diagnostic))
        meaning = REJECT_REASONS.get(codes[1:], "")
        reason = f"{codes[0]:#04x}/{codes[1]:#04x}/{codes[2]:#04x} {meaning}".strip()
    if outcome is None:
        outcome = "rejected" if event.event == evt.EVT_REJECTED else "accepted"
    return AssociationEvent(datetime.now(timezone.utc), outcome, calling, called,
                            f"{assoc.requestor.address}:{assoc.requestor.port}", reason)


class AssociationAudit:
    """pynetdicom handlers that turn association events into AssociationEvents for `record`.

    An abort is recorded once per association, with its cause: the A-ABORT or A-P-ABORT the
    ACSE received (EVT_ACSE_RECV fires just before EVT_ABORTED), or the node's own abort."""

    def __init__(self, record: Callable[[AssociationEvent], None],
                 on_error: Callable[[str], None]) -> None:
        self.record = record
        self.on_error = on_error
        self._abort_primitive: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
        self._aborted: weakref.WeakSet[Any] = weakref.WeakSet()
        self._cut_reason: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    @property
    def handlers(self) -> list[tuple[Any, Callable[[evt.Event], None]]]:
        return [(evt.EVT_ACCEPTED, self._answered), (evt.EVT_REJECTED, self._answered),
                (evt.EVT_ACSE_RECV, self._acse_received), (evt.EVT_ABORTED, self._aborted_event)]

    def _answered(self, event: evt.Event) -> None:
        self._emit(lambda: association_event(event))

    def _acse_received(self, event: evt.Event) -> None:
        primitive = event.primitive
        if isinstance(primitive, (A_ABORT, A_P_ABORT)):
            self._abort_primitive[event.assoc] = primitive

    def note_cut(self, assoc: Any, reason: str) -> None:
        """The node cut this association's connection (dicomnode.wire_guard): the abort that
        follows is recorded with this reason, not as a lost connection."""
        self._cut_reason[assoc] = reason

    def _aborted_event(self, event: evt.Event) -> None:
        assoc = event.assoc
        if not assoc.is_acceptor:
            return
        with self._lock:  # the node's abort() and its reactor can both report one abort
            if assoc in self._aborted:
                return
            self._aborted.add(assoc)
        reason = self._cut_reason.get(assoc) or abort_reason(
            self._abort_primitive.get(assoc), by_node=bool(getattr(assoc, "_sent_abort", False)))
        self._emit(lambda: association_event(event, "aborted", reason))

    def _emit(self, build: Callable[[], AssociationEvent]) -> None:
        try:
            self.record(build())
        except Exception:  # the audit must not break the association
            self.on_error("could not record an association event")


def abort_reason(primitive: Any, by_node: bool) -> str:
    if by_node:
        return "aborted by the node (A-ABORT sent: shutdown grace over, or a timeout)"
    if isinstance(primitive, A_ABORT):
        source = ABORT_SOURCES.get(primitive.abort_source, str(primitive.abort_source))
        return f"A-ABORT from the peer (source: {source})"
    if isinstance(primitive, A_P_ABORT):
        return ("connection lost or cut off (A-P-ABORT: closed mid-association, the read "
                "deadline, or a protocol error)")
    return "aborted"
