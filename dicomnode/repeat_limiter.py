"""Repeated lines held back: a flood of bad connections, or of one pynetdicom warning, writes a
few lines per minute and says how many like them it held back, instead of a line each."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

MAX_KEYS = 1000  # kinds of line remembered at once; expired windows are dropped first


@dataclass
class _Window:
    started: float
    admitted: int = 0
    held: int = 0


class RepeatLimiter:
    """admit(key): the first `burst` of each key per `window_s` pass; the rest are held, and
    the next one admitted after the window says how many were."""

    def __init__(self, burst: int = 5, window_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.burst = burst
        self.window_s = window_s
        self._clock = clock
        self._windows: dict[Hashable, _Window] = {}
        self._lock = threading.Lock()

    def admit(self, key: Hashable) -> tuple[bool, int]:
        """(write this one?, how many like it were held back in the window before it)."""
        with self._lock:
            now = self._clock()
            window = self._windows.get(key)
            held_before = 0
            if window is None or now - window.started >= self.window_s:
                held_before = window.held if window is not None else 0
                if window is None and len(self._windows) >= MAX_KEYS:
                    self._forget_expired(now)
                window = self._windows[key] = _Window(now)
            if window.admitted < self.burst:
                window.admitted += 1
                return True, held_before
            window.held += 1
            return False, held_before

    def _forget_expired(self, now: float) -> None:
        expired = [k for k, w in self._windows.items() if now - w.started >= self.window_s]
        for key in expired or list(self._windows)[: len(self._windows) // 2]:
            del self._windows[key]


def held_note(held: int, window_s: float) -> str:
    return f" ({held} more like it held back in the {window_s:.0f} s before)" if held else ""


_VARYING = re.compile(r"'[^']*'|\"[^\"]*\"|0x[0-9A-Fa-f]+|[\d.]+")


class RepeatFilter(logging.Filter):
    """For records of the loggers named in `prefixes` (the DICOM libraries, which log each
    oddity a peer sends): lines alike but for quoted values and numbers count as one kind,
    limited per RepeatLimiter. The node's own lines pass untouched."""

    def __init__(self, prefixes: tuple[str, ...] = ("pynetdicom", "pydicom", "py.warnings"),
                 limiter: RepeatLimiter | None = None) -> None:
        super().__init__()
        self.prefixes = prefixes
        self.limiter = limiter or RepeatLimiter()

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.prefixes):
            return True
        kind = _VARYING.sub("_", str(record.msg))[:120]
        admitted, held = self.limiter.admit((record.name, record.levelno, kind))
        if admitted and held:
            record.msg, record.args = (record.getMessage()
                                       + held_note(held, self.limiter.window_s)), ()
        return admitted
