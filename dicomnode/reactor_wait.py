"""pynetdicom's reactor threads wait for work instead of polling.

pynetdicom runs two threads per association, its DUL reactor and the association reactor, and
each polls every millisecond whenever it finds nothing to do, busy or idle: four threads for a
received stream and its forward, ~130 ms of CPU a second between them on this team's 2-core
machine, each turn taking the GIL from the threads doing the work. Here:

* the DUL thread waits (select) for its socket to become readable, or for a wake-up written to a
  socket pair whenever a primitive is queued for it to send (a C-STORE request or response, a
  release, an abort), for at most MAX_WAIT_S (its ARTIM timer and being stopped are checked
  then);
* an accepted association's own thread waits on an event set whenever a complete DIMSE message,
  or an A-RELEASE / A-ABORT, is queued for it, for at most ASSOCIATION_MAX_WAIT_S (its idle
  timer and being killed are checked then).

Nothing waits longer than before: a PDU, what the node wants to send, or a request to stop
wakes the thread that handles it at once. pynetdicom offers no setting for either loop: both
reactors call `time.sleep` of their own modules, so `pynetdicom.dul.time` and
`pynetdicom.association.time` are given a `sleep` that waits as above in threads of such
associations, and the queues' `put` is wrapped to wake them.
A requestor's association thread (the node's forwarders) keeps pynetdicom's polling: pynetdicom
pauses and resumes it around every request, and its pause loops expect it to turn.
"""

from __future__ import annotations

import contextlib
import queue
import select
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from pynetdicom import association as pynetdicom_association
from pynetdicom import dul as pynetdicom_dul
from pynetdicom.dul import DULServiceProvider

MAX_WAIT_S = 0.1
ASSOCIATION_MAX_WAIT_S = 1.0
POLL_S = 0.001  # pynetdicom's own delay, which its reactors pass to sleep


class WaitingDUL(DULServiceProvider):
    """A DULServiceProvider whose reactor waits for its socket or a wake-up, never polls."""

    _wake_receiver: socket.socket
    wake: Callable[[], None]  # makes wait_for_work return now
    # set when its association thread has something to handle; None where that thread polls
    activity: threading.Event | None

    # pynetdicom stops the reactor by setting this flag from another thread, then waits for the
    # thread to end: the setter wakes it, so it ends at once, not at the end of its wait
    @property  # type: ignore[override]
    def _kill_thread(self) -> bool:
        return self._kill_requested

    @_kill_thread.setter
    def _kill_thread(self, value: bool) -> None:
        self._kill_requested = value
        if value:
            self.wake()

    def wait_for_work(self, seconds: float) -> None:
        """Sleep up to `seconds`, waking as soon as the socket has bytes (or closes) or a
        primitive is queued to be sent."""
        sock = self.socket.socket if self.socket is not None else None
        try:
            if sock is None:  # closed: the reactor is about to be stopped; do not spin meanwhile
                time.sleep(POLL_S)
                return
            if isinstance(sock, ssl.SSLSocket) and sock.pending():  # TLS bytes already read
                return
            readable, _, _ = select.select([sock, self._wake_receiver], [], [], seconds)
            if self._wake_receiver in readable:
                self._wake_receiver.recv(4096)
        except (OSError, ValueError):  # closed under us: the reactor notices on its next turn
            time.sleep(POLL_S)


def make_waiting(assoc: Any, association_thread: bool = True) -> None:
    """EVT_CONN_OPEN: the association's DUL (and, for an accepted association, its own thread)
    wait for work from now on. Before the association's threads start (acceptor) or in its DUL
    thread (requestor): the DUL's reactor looks its sleep up afresh every turn."""
    dul = assoc.dul
    if type(dul) is not DULServiceProvider:
        return
    _close_ended()
    receiver, sender = socket.socketpair()
    receiver.setblocking(False)
    sender.setblocking(False)
    weakref.finalize(dul, _close, receiver, sender)  # and at the latest when it is collected
    with _pairs_lock:
        _pairs.append((weakref.ref(dul), receiver, sender))

    def wake_dul() -> None:
        with contextlib.suppress(OSError):  # full (already woken) or closed (ended)
            sender.send(b"\0")

    dul._wake_receiver = receiver
    dul.wake = wake_dul
    dul.activity = threading.Event() if association_thread else None
    dul._kill_requested = dul.__dict__.pop("_kill_thread", False)  # the property holds it now
    _on_put(dul.to_provider_queue, wake_dul)
    if dul.activity is not None:
        _on_put(dul.to_user_queue, dul.activity.set)
        _on_put(assoc.dimse.msg_queue, dul.activity.set)
    dul.__class__ = WaitingDUL
    _install_reactor_sleep()


# Each waiting DUL's wake-up socket pair, closed once its thread has ended (checked whenever a
# connection opens): a thousand short connections must not hold two thousand descriptors.
_pairs: list[tuple[weakref.ref, socket.socket, socket.socket]] = []
_pairs_lock = threading.Lock()


def _close_ended() -> None:
    with _pairs_lock:
        kept = []
        for dul_ref, receiver, sender in _pairs:
            dul = dul_ref()
            if dul is None or (dul.ident is not None and not dul.is_alive()):
                _close(receiver, sender)
            else:
                kept.append((dul_ref, receiver, sender))
        _pairs[:] = kept


def _close(*sockets: socket.socket) -> None:
    for sock in sockets:
        sock.close()


def _on_put(target: queue.Queue, then: Callable[[], None]) -> None:
    """`target.put(...)` also calls `then()` once the item is in."""
    put = target.put

    def put_then(item: Any, block: bool = True, timeout: float | None = None) -> None:
        put(item, block, timeout)
        then()

    target.put = put_then  # type: ignore[method-assign]


class _ReactorTime:
    """pynetdicom.association's `time`: everything as the time module, but `sleep` of an
    accepted association's thread waits for its DUL's activity event."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        if seconds <= POLL_S:
            dul = getattr(threading.current_thread(), "dul", None)
            if isinstance(dul, WaitingDUL) and dul.activity is not None:
                # cleared after the wait, before the reactor looks at its queues: a put after
                # that look sets it again, so no wake-up is lost
                dul.activity.wait(ASSOCIATION_MAX_WAIT_S)
                dul.activity.clear()
                return
        time.sleep(seconds)


class _DulTime(_ReactorTime):
    """pynetdicom.dul's `time`: a WaitingDUL's own thread waits for work instead of sleeping its
    run loop delay (other threads that wait for the DUL to end sleep as before)."""

    @staticmethod
    def sleep(seconds: float) -> None:
        dul = threading.current_thread()
        if isinstance(dul, WaitingDUL):
            dul.wait_for_work(MAX_WAIT_S)
            return
        time.sleep(seconds)


_install_lock = threading.Lock()


def _install_reactor_sleep() -> None:
    with _install_lock:
        if not isinstance(pynetdicom_association.time, _ReactorTime):
            pynetdicom_association.time = _ReactorTime()  # type: ignore[assignment]
        if not isinstance(pynetdicom_dul.time, _DulTime):
            pynetdicom_dul.time = _DulTime()  # type: ignore[assignment]
