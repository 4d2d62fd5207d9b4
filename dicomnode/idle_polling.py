"""Idle associations that cost nothing: pynetdicom polls every association from two threads
(its DUL reactor and the association reactor) every millisecond, busy or idle, so 32 idle
modalities kept a core busy and slowed everything else under the GIL. Once an accepted
association has been idle for IDLE_AFTER_S, both threads poll every IDLE_POLL_S instead; the
first PDU after the pause wakes them (at most ~2 x IDLE_POLL_S later), and a stream of images
never slows down (it is never idle that long).

pynetdicom offers no setting for either loop: the DUL's delay is an attribute its reactor reads
each turn (made a property here), and the association reactor's is a literal
`time.sleep(0.001)`, so `pynetdicom.association.time` is given a `sleep` that asks the DUL.
Only accepted associations whose DUL was made idle-aware are affected; the node's forwarding
associations (requestors) poll as before.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from pynetdicom import association as pynetdicom_association
from pynetdicom.dul import DULServiceProvider

IDLE_AFTER_S = 1.0
IDLE_POLL_S = 0.1
BUSY_POLL_S = 0.001  # pynetdicom's own


class IdleAwareDUL(DULServiceProvider):
    """A DULServiceProvider whose poll delay grows once nothing has moved for IDLE_AFTER_S."""

    _active_at: float  # when a PDU last moved (or the connection opened)

    @property  # type: ignore[override]
    def _run_loop_delay(self) -> float:
        return BUSY_POLL_S if self.busy() else IDLE_POLL_S

    @_run_loop_delay.setter
    def _run_loop_delay(self, _value: float) -> None:
        pass  # pynetdicom's __init__ sets its constant; the property decides

    def busy(self) -> bool:
        return time.monotonic() - self._active_at < IDLE_AFTER_S

    def _is_transport_event(self) -> bool:
        if super()._is_transport_event():
            self._active_at = time.monotonic()
            return True
        return False

    def _process_recv_primitive(self) -> bool:
        if super()._process_recv_primitive():
            self._active_at = time.monotonic()
            return True
        return False


def make_idle_aware(assoc: Any) -> None:
    """EVT_CONN_OPEN, before the association's threads start."""
    dul = assoc.dul
    if type(dul) is DULServiceProvider:
        dul._active_at = time.monotonic()
        dul.__class__ = IdleAwareDUL
    _install_reactor_sleep()


class _ReactorTime:
    """pynetdicom.association's `time`: everything as the time module, but `sleep` of an idle
    accepted association's reactor thread waits IDLE_POLL_S."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        if seconds <= BUSY_POLL_S:
            dul = getattr(threading.current_thread(), "dul", None)
            if isinstance(dul, IdleAwareDUL) and not dul.busy():
                seconds = IDLE_POLL_S
        time.sleep(seconds)


_install_lock = threading.Lock()


def _install_reactor_sleep() -> None:
    with _install_lock:
        if not isinstance(pynetdicom_association.time, _ReactorTime):
            pynetdicom_association.time = _ReactorTime()  # type: ignore[assignment]
