"""Idle associations that cost nothing: pynetdicom polls every association from two threads
(its DUL reactor and the association reactor) every millisecond, busy or idle, so 32 idle
modalities kept a core busy and slowed everything else under the GIL. Once an accepted
association has been idle for IDLE_AFTER_S:

* its DUL thread waits for the socket to become readable (select), for at most IDLE_POLL_S, so
  a PDU arriving wakes it at once, and what the node itself wants to send (a release or abort
  at shutdown) waits at most IDLE_POLL_S;
* its association thread waits on an event the DUL sets when a PDU has arrived, for at most
  ASSOCIATION_IDLE_WAIT_S: it has nothing to do until then.

A stream of images never slows down (it is never idle that long), and the first PDU after a
pause is read at once. pynetdicom offers no setting for either loop: the DUL's delay is an
attribute its reactor reads each turn (made a property here), and both reactors call
`time.sleep` of their own modules, so `pynetdicom.dul.time` and `pynetdicom.association.time`
are given a `sleep` that asks the DUL. Only accepted associations whose DUL was made idle-aware
are affected; the node's forwarding associations (requestors) poll as before.
"""

from __future__ import annotations

import select
import ssl
import threading
import time
from typing import Any

from pynetdicom import association as pynetdicom_association
from pynetdicom import dul as pynetdicom_dul
from pynetdicom.dul import DULServiceProvider

IDLE_AFTER_S = 1.0
IDLE_POLL_S = 0.1
ASSOCIATION_IDLE_WAIT_S = 1.0
BUSY_POLL_S = 0.001  # pynetdicom's own


class IdleAwareDUL(DULServiceProvider):
    """A DULServiceProvider whose poll delay grows once nothing has moved for IDLE_AFTER_S."""

    _active_at: float  # when a PDU last moved (or the connection opened)
    activity: threading.Event  # set when a PDU moved: wakes the association thread

    @property  # type: ignore[override]
    def _run_loop_delay(self) -> float:
        return BUSY_POLL_S if self.busy() else IDLE_POLL_S

    @_run_loop_delay.setter
    def _run_loop_delay(self, _value: float) -> None:
        pass  # pynetdicom's __init__ sets its constant; the property decides

    def busy(self) -> bool:
        return time.monotonic() - self._active_at < IDLE_AFTER_S

    def _moved(self) -> None:
        self._active_at = time.monotonic()
        self.activity.set()

    def _is_transport_event(self) -> bool:
        if super()._is_transport_event():
            self._moved()
            return True
        return False

    def _process_recv_primitive(self) -> bool:
        if super()._process_recv_primitive():
            self._moved()
            return True
        return False

    def wait_for_data(self, seconds: float) -> None:
        """Sleep up to `seconds`, waking as soon as the socket has bytes (or closes)."""
        sock = self.socket.socket if self.socket is not None else None
        try:
            if sock is None or (isinstance(sock, ssl.SSLSocket) and sock.pending()):
                return
            select.select([sock], [], [], seconds)
        except (OSError, ValueError):  # closed under us: the reactor notices on its next turn
            time.sleep(BUSY_POLL_S)


def make_idle_aware(assoc: Any) -> None:
    """EVT_CONN_OPEN, before the association's threads start."""
    dul = assoc.dul
    if type(dul) is DULServiceProvider:
        dul._active_at = time.monotonic()
        dul.activity = threading.Event()
        dul.__class__ = IdleAwareDUL
    _install_reactor_sleep()


class _ReactorTime:
    """pynetdicom.association's `time`: everything as the time module, but `sleep` of an idle
    accepted association's reactor thread waits for its DUL's activity event."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        if seconds <= BUSY_POLL_S:
            dul = getattr(threading.current_thread(), "dul", None)
            if isinstance(dul, IdleAwareDUL) and not dul.busy():
                dul.activity.wait(ASSOCIATION_IDLE_WAIT_S)
                dul.activity.clear()
                return
        time.sleep(seconds)


class _DulTime(_ReactorTime):
    """pynetdicom.dul's `time`: `sleep` of an idle accepted association's DUL thread waits for
    its socket instead (IdleAwareDUL._run_loop_delay is IDLE_POLL_S then)."""

    @staticmethod
    def sleep(seconds: float) -> None:
        dul = threading.current_thread()
        if isinstance(dul, IdleAwareDUL) and seconds >= IDLE_POLL_S:
            dul.wait_for_data(seconds)
            return
        time.sleep(seconds)


_install_lock = threading.Lock()


def _install_reactor_sleep() -> None:
    with _install_lock:
        if not isinstance(pynetdicom_association.time, _ReactorTime):
            pynetdicom_association.time = _ReactorTime()  # type: ignore[assignment]
        if not isinstance(pynetdicom_dul.time, _DulTime):
            pynetdicom_dul.time = _DulTime()  # type: ignore[assignment]
