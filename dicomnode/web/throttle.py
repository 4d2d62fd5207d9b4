"""Failed reviewer logins: after MAX_FAILURES within WINDOW_S for one name, or from one peer
address, further logins for it are refused for LOCKOUT_S (HTTP 429), the right password too.

In memory (a restart forgets), bounded: entries older than the window are dropped, and at most
MAX_KEYS names and peers are tracked (the oldest forgotten first).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable

MAX_FAILURES = 5
WINDOW_S = 300.0
LOCKOUT_S = 60.0
MAX_KEYS = 10_000


class LoginThrottle:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._locked_until: dict[str, float] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _keys(name: str, peer: str) -> tuple[str, str]:
        return f"name:{name}", f"peer:{peer}"

    def retry_after(self, name: str, peer: str) -> float:
        """Seconds until a login for this name from this peer is tried again; 0: now."""
        now = self.clock()
        with self._lock:
            waits = [self._locked_until.get(k, 0.0) - now for k in self._keys(name, peer)]
        return max(0.0, *waits)

    def failed(self, name: str, peer: str) -> None:
        now = self.clock()
        with self._lock:
            for key in self._keys(name, peer):
                times = self._failures.pop(key, deque())
                while times and times[0] <= now - WINDOW_S:
                    times.popleft()
                times.append(now)
                self._failures[key] = times  # newest last: the oldest go first below
                if len(times) >= MAX_FAILURES:
                    self._locked_until[key] = now + LOCKOUT_S
                    times.clear()
            while len(self._failures) > MAX_KEYS:
                self._failures.popitem(last=False)
            for key in [k for k, until in self._locked_until.items() if until <= now]:
                del self._locked_until[key]

    def succeeded(self, name: str) -> None:
        """A name's failures are forgotten; its peer's stay (one reviewer's own login must not
        reset the count of guesses at other names from the same address)."""
        with self._lock:
            self._failures.pop(self._keys(name, "")[0], None)
