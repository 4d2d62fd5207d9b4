"""Classification yields the CPU to receiving: classify threads and decode processes run nicer."""

from __future__ import annotations

import os
import threading

from dicomnode.config import ClassifyConfig
from dicomnode.guard import IsolatedDecoder, Limits
from dicomnode.lanes import lower_thread_priority


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


def test_decode_process_restarted_from_a_classify_thread_is_not_niced_twice():
    # After a crash or timeout the classify thread (already nicer) spawns the new decode process;
    # the child inherits that thread's niceness and must still end at the configured level.
    own = _priority_of(os.getpid())
    decoder = IsolatedDecoder(Limits(timeout_s=60), nice=5)
    seen: dict[str, int] = {}

    def classify_thread() -> None:
        lower_thread_priority(5)
        decoder.start()
        assert decoder._process is not None
        seen["child"] = _priority_of(decoder._process.pid)

    try:
        thread = threading.Thread(target=classify_thread)
        thread.start()
        thread.join()
    finally:
        decoder.close()
    assert seen["child"] == min(own + 5, 19)
