"""Log writer throughput on SQLite (issue 16, item 2): decisions per second the node's log keeps
up with, sustained, on this machine's cores.

Three ways of writing the same N decisions (each with one delivery attempt, as the node writes
them) into a fresh SQLite log opened through LogStore.open (the shipped migrations, WAL):

- one transaction per event (LogStore.record_instance / record_forward: the node before the
  batched writer);
- LogStore.record_events in batches of journal.BATCH (the writer thread's inserts alone);
- end to end through LogJournal, as the node runs it: `--producers` threads journal each event
  (one atomic, fsynced file in spool/journal/) while the writer thread inserts batches; timed
  from the first event journaled to the last row committed and its file removed.

  .venv/bin/python -m bench.log_writer            # --decisions 20000 --producers 2
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from bench.common import print_table, write_json
from dicomnode.log_journal import BATCH, LogJournal
from dicomnode.logdb.entry import InstanceLogEntry
from dicomnode.logdb.store import LogStore

GOAL_DECISIONS_PER_S = 2000.0
T0 = datetime(2026, 12, 1, tzinfo=timezone.utc)
MODEL = "3f2a9c" + "0" * 58


def decision(n: int, run: str) -> InstanceLogEntry:
    """A classified CR film's decision, with every field the node fills; its key is a spool
    name, as the node's (the receive time, so it sorts before the image's delivery attempts)."""
    return InstanceLogEntry(
        received_at=T0 + timedelta(milliseconds=n), calling_ae="CR_ROOM1", called_ae="DICOMNODE",
        peer_address="10.0.0.5:40112", sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
        sop_instance_uid=f"2.25.{run}.{n}", study_instance_uid=f"2.25.{run}.s{n // 4}",
        series_instance_uid=f"2.25.{run}.r{n // 2}", modality="CR", patient_id=f"P{n // 4}",
        transfer_syntax_uid="1.2.840.10008.1.2.1", action="written", label="PA",
        probability_ap=0.02, probability_la=0.01, probability_pa=0.96, probability_other=0.01,
        confidence=0.96, model_sha256=MODEL, inference_ms=41.0, processing_ms=180.0,
        view_position_before=None, view_position_after="PA",
        spool_path=f"/var/lib/dicomnode/spool/processing/{run}{n:012d}.dcm",
        routing={"rules": ["chest"], "destinations": ["pacs"], "action": "forward"},
        decision_reason=None, thresholds={"source": "manifest", "frontal": 0.9, "ap_pa": 0.95},
        decision_key=f"{time.time_ns():020d}-{run}{n:09d}",
    )  # fmt: skip


def attempt(n: int, run: str, decision_key: str) -> dict[str, Any]:
    return {"instance_id": None, "sop_instance_uid": f"2.25.{run}.{n}", "destination": "pacs",
            "outcome": "sent", "dimse_status": 0, "detail": "success", "attempt": 1,
            "at": T0 + timedelta(milliseconds=n, microseconds=500),
            "decision_key": decision_key}  # fmt: skip


def one_transaction_each(store: LogStore, count: int) -> float:
    started = time.perf_counter()
    for n in range(count):
        entry = decision(n, "a")
        store.record_instance(entry)
        store.record_forward(**attempt(n, "a", entry.decision_key))
    return time.perf_counter() - started


def batched(store: LogStore, count: int) -> float:
    started = time.perf_counter()
    events: list[tuple[str, Any]] = []
    for n in range(count):
        entry = decision(n, "b")
        events += [("instance", entry), ("forward", attempt(n, "b", entry.decision_key))]
        if len(events) >= BATCH:
            store.record_events(events)
            events = []
    if events:
        store.record_events(events)
    return time.perf_counter() - started


def through_the_journal(store: LogStore, workdir: Path, count: int, producers: int) -> float:
    tmp = workdir / "tmp"
    tmp.mkdir()
    journal = LogJournal(store, workdir / "journal", tmp).start()
    share = [range(p, count, producers) for p in range(producers)]

    def produce(numbers: range) -> None:
        for n in numbers:
            entry = decision(n, "c")
            journal.record_instance(entry)
            event = attempt(n, "c", entry.decision_key)
            journal.record_forward(event["instance_id"], event["sop_instance_uid"], "pacs",
                                   "sent", 0, "success", 1, event["at"],
                                   decision_key=event["decision_key"])  # fmt: skip

    started = time.perf_counter()
    threads = [threading.Thread(target=produce, args=(numbers,)) for numbers in share]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    journaled = time.perf_counter() - started
    while journal.pending():
        time.sleep(0.005)
    elapsed = time.perf_counter() - started
    journal.stop()
    print(f"  journal: {count} decisions journaled by {producers} producer(s) in "
          f"{journaled:.2f} s; all written {elapsed - journaled:.2f} s later")
    return elapsed


def rows(store: LogStore) -> tuple[int, int, int]:
    from sqlalchemy import text

    with store.engine.connect() as connection:
        instances = connection.execute(text("SELECT count(*) FROM instances")).scalar_one()
        attempts = connection.execute(text("SELECT count(*) FROM forward_attempts")).scalar_one()
        linked = connection.execute(text(
            "SELECT count(*) FROM forward_attempts WHERE instance_id IS NOT NULL")).scalar_one()
    return int(instances), int(attempts), int(linked)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=20000)
    parser.add_argument("--producers", type=int, default=2,
                        help="threads journaling events (the node: classify + pass-through "
                        "workers and forwarders)")
    parser.add_argument("--output", default="log_writer.json")
    args = parser.parse_args()
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-log-writer-", dir=Path.cwd()) as folder:
        workdir = Path(folder)
        for name, run in (("one transaction per event", one_transaction_each),
                          (f"record_events, batches of {BATCH}", batched),
                          ("LogJournal end to end", None)):  # fmt: skip
            store = LogStore.open(f"sqlite:///{workdir / (name[:3] + '.sqlite3')}")
            try:
                count = args.decisions
                if run is None:
                    seconds = through_the_journal(store, workdir, count, args.producers)
                else:
                    seconds = run(store, count)
                instances, attempts, linked = rows(store)
            finally:
                store.close()
            assert instances == attempts == linked == count, (name, instances, attempts, linked)
            results[name] = {"decisions": count, "seconds": seconds,
                             "decisions_per_s": count / seconds}  # fmt: skip
    print_table(["writer (SQLite, decision + attempt each)", "decisions", "s", "decisions/s",
                 f">= {GOAL_DECISIONS_PER_S:.0f}/s"],
                [[name, r["decisions"], f"{r['seconds']:.2f}", f"{r['decisions_per_s']:.0f}",
                  "yes" if r["decisions_per_s"] >= GOAL_DECISIONS_PER_S else "NO"]
                 for name, r in results.items()])  # fmt: skip
    payload = {"goal_decisions_per_s": GOAL_DECISIONS_PER_S, "producers": args.producers,
               "results": results}
    print(f"\nwrote {write_json(args.output, payload)}")


if __name__ == "__main__":
    main()
