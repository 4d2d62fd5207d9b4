"""Classification yields the CPU to receiving: classify threads and decode processes run nicer."""

from __future__ import annotations

import os
import threading

from dicomnode.config import ClassifyConfig
from dicomnode.guard import IsolatedDecoder, Limits
from dicomnode.pipeline import lower_thread_priority


def _priority_of(tid_or_pid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, tid_or_pid)


def test_lower_thread_priority_changes_only_the_calling_thread():
    main_before = _priority_of(threading.get_native_id())
    seen: dict[str, int] = {}

    def worker() -> None:
        tid = threading.get_native_id()
        before = _priority_of(tid)
        lower_thread_priority(5)
        seen["before"], seen["after"] = before, _priority_of(tid)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen["after"] == min(seen["before"] + 5, 19)
    assert _priority_of(threading.get_native_id()) == main_before


def test_decode_process_runs_at_the_configured_niceness():
    own = _priority_of(os.getpid())
    with IsolatedDecoder(Limits(timeout_s=60), nice=7) as decoder:
        decoder.start()
        assert decoder._process is not None
        assert _priority_of(decoder._process.pid) == min(own + 7, 19)


def test_default_config_keeps_receiving_ahead_of_classifying():
    assert ClassifyConfig().nice > 0
