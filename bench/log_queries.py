"""Auditor queries over a 1,000,000-row log on SQLite and PostgreSQL (issue 4).

Loads N instance rows (spread evenly over a year, 4 instances per study) plus one delivery attempt
each, by bulk insert (sqlite3 executemany / PostgreSQL COPY), into a fresh database created by
LogStore.open (so the schema and indexes are exactly the shipped migrations). Then times, through
the same query layer `dicomnode log query` and the web view use (median of repeated runs, a
different random study / day each run):
  study      - all instances of one study (with delivery status)
  day page   - one UTC day: the first page of 100 rows plus the total count (what the CLI/web show)
  day all    - one UTC day: every row (~N/365), with delivery status
  summary    - `dicomnode log summary` / the web summary page, for one day and for all N rows
  record_instance - one append (instance row + model-version upsert), single thread, on the full log
Goal: study and day page < 100 ms on both backends.

Run (starts a private PostgreSQL on a loopback port, as the tests do; needs Debian postgresql):
  .venv/bin/python -m bench.log_queries [--rows 1000000] [--repeat 21] [--postgres-url URL]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

from bench.common import median, percentile, print_table, write_json
from dicomnode.logdb.entry import InstanceLogEntry
from dicomnode.logdb.query import LogFilter, count_instances, find_instances, summarise
from dicomnode.logdb.store import LogStore

START = datetime(2025, 1, 1)  # naive UTC, the stored form
DAYS = 365
PER_STUDY = 4
BATCH = 50_000
INSTANCE_COLUMNS = (
    "received_at", "calling_ae", "called_ae", "peer_address", "sop_class_uid", "sop_instance_uid",
    "study_instance_uid", "series_instance_uid", "modality", "patient_id", "transfer_syntax_uid",
    "action", "label", "probability_ap", "probability_la", "confidence", "model_sha256",
    "inference_ms", "processing_ms", "view_position_before", "view_position_after", "routing",
)  # fmt: skip
ATTEMPT_COLUMNS = ("instance_id", "sop_instance_uid", "destination", "outcome", "dimse_status",
                   "detail", "attempt", "at")  # fmt: skip
ACTIONS = ("written", "written", "agrees", "disagrees", "overwritten", "uncertain", "skipped")
ROUTING = json.dumps({"rules": ["all"], "destinations": ["PACS"]})
MODELS = ("a" * 64, "b" * 64)
GOAL_QUERIES = ("study", "day page")  # the issue's < 100 ms goal; the rest are for reference


def study_uid(study: int) -> str:
    return f"1.2.826.0.1.3680043.8.498.{study}.1"


def instance_rows(rows: int) -> Iterator[tuple]:
    rng = random.Random(4)
    step = timedelta(days=DAYS) / rows
    for n in range(rows):
        study = n // PER_STUDY
        p_ap = rng.random()
        action = ACTIONS[n % len(ACTIONS)]
        yield (
            START + step * n, f"CR_ROOM{study % 5}", "DICOMNODE", "10.0.0.7",
            "1.2.840.10008.5.1.4.1.1.1", f"1.2.826.0.1.3680043.8.498.{n}.3", study_uid(study),
            f"1.2.826.0.1.3680043.8.498.{study}.2", "CR", f"PAT{study // 3:07d}",
            "1.2.840.10008.1.2.1", action, "AP" if p_ap >= 0.5 else "LA", p_ap, 1 - p_ap,
            max(p_ap, 1 - p_ap), MODELS[n * 2 // rows], 4.0, 30.0, None, "AP", ROUTING,
        )  # fmt: skip


def attempt_rows(rows: int) -> Iterator[tuple]:
    step = timedelta(days=DAYS) / rows
    for n in range(rows):
        outcome = "failed" if n % 97 == 0 else "sent"
        yield (n + 1, f"1.2.826.0.1.3680043.8.498.{n}.3", "PACS", outcome, 0, None, 1,
               START + step * n + timedelta(seconds=2))  # fmt: skip


def batches(rows: Iterator[tuple]) -> Iterator[list[tuple]]:
    batch: list[tuple] = []
    for row in rows:
        batch.append(row)
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def sqlite_text(value):
    # SQLAlchemy's SQLite DateTime storage format; queries compare these strings
    return value.strftime("%Y-%m-%d %H:%M:%S.%f") if isinstance(value, datetime) else value


def load_sqlite(store: LogStore, rows: int) -> None:
    raw = store.engine.raw_connection()
    try:
        cursor = raw.cursor()
        for table, columns, source in (
            ("instances", INSTANCE_COLUMNS, instance_rows(rows)),
            ("forward_attempts", ATTEMPT_COLUMNS, attempt_rows(rows)),
        ):
            sql = (f"INSERT INTO {table} ({', '.join(columns)}) "
                   f"VALUES ({', '.join('?' * len(columns))})")  # fmt: skip
            for batch in batches(source):
                cursor.execute("BEGIN")
                cursor.executemany(sql, [tuple(sqlite_text(v) for v in row) for row in batch])
                cursor.execute("COMMIT")
        cursor.execute("ANALYZE")
    finally:
        raw.close()


def load_postgres(store: LogStore, rows: int) -> None:
    raw = store.engine.raw_connection()
    try:
        connection = raw.driver_connection
        with connection.cursor() as cursor:
            for table, columns, source in (
                ("instances", INSTANCE_COLUMNS, instance_rows(rows)),
                ("forward_attempts", ATTEMPT_COLUMNS, attempt_rows(rows)),
            ):
                with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                    for row in source:
                        copy.write_row(row)
        connection.commit()
        connection.autocommit = True
        connection.execute("ANALYZE")
        connection.autocommit = False
    finally:
        raw.close()


def timed(function, repeat: int, keys: list) -> list[float]:
    for key in keys[:2]:  # warm-up: first-touch page faults, prepared plans
        function(key)
    samples = []
    for key in keys[2 : 2 + repeat]:
        started = time.perf_counter()
        function(key)
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def run_queries(store: LogStore, rows: int, repeat: int) -> dict[str, dict[str, float]]:
    rng = random.Random(7)
    studies = [rng.randrange(rows // PER_STUDY) for _ in range(repeat + 2)]
    days = [START + timedelta(days=rng.randrange(DAYS)) for _ in range(repeat + 2)]

    def by_study(study: int) -> None:
        found = find_instances(store, LogFilter(study_uid=study_uid(study)), limit=None)
        assert len(found) == PER_STUDY, len(found)

    def day_filter(day: datetime) -> LogFilter:
        utc = day.replace(tzinfo=timezone.utc)
        return LogFilter(since=utc, until=utc + timedelta(days=1))

    def day_page(day: datetime) -> None:
        found = find_instances(store, day_filter(day), limit=100)
        total = count_instances(store, day_filter(day))
        assert total >= rows // DAYS and len(found) == min(100, total), (len(found), total)

    def day_all(day: datetime) -> None:
        assert len(find_instances(store, day_filter(day), limit=None)) >= rows // DAYS

    def summary_day(day: datetime) -> None:
        assert summarise(store, day_filter(day))["instances"] >= rows // DAYS

    def summary_all(_: object) -> None:
        assert summarise(store)["instances"] >= rows

    entry = InstanceLogEntry(
        received_at=datetime.now(timezone.utc), calling_ae="CR_ROOM1", called_ae="DICOMNODE",
        peer_address="10.0.0.7", sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
        sop_instance_uid="2.25.1", study_instance_uid="2.25.2", series_instance_uid="2.25.3",
        modality="CR", patient_id="PAT", transfer_syntax_uid="1.2.840.10008.1.2.1",
        action="written", label="AP", probability_ap=0.9, probability_la=0.1, confidence=0.9,
        model_sha256=MODELS[1], view_position_after="AP",
        routing={"rules": ["all"], "destinations": ["PACS"]},
    )  # fmt: skip

    def write_row(_: object) -> None:
        store.record_instance(entry)

    results = {}
    for name, function, keys in (
        ("study", by_study, studies),
        ("day page", day_page, days),
        ("day all", day_all, days),
        ("summary day", summary_day, days),
        ("summary all", summary_all, [None] * 5),
        ("record_instance", write_row, [None] * (10 * repeat + 2)),  # last: it adds rows
    ):
        samples = timed(function, len(keys) - 2, keys)
        results[name] = {"median_ms": median(samples), "p90_ms": percentile(samples, 90),
                         "runs": len(samples)}  # fmt: skip
    return results


@contextlib.contextmanager
def postgres_database(url: str | None) -> Iterator[str]:
    if url is not None:
        yield url
        return
    from tests.fixtures_postgres import running_postgres

    with running_postgres() as server:
        yield server.url(server.create_database())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=21)
    parser.add_argument("--postgres-url", help="an empty database to use instead of a private one")
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args()

    report: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="dicomnode-bench-") as scratch:
        for backend in args.backends.split(","):
            with contextlib.ExitStack() as stack:
                if backend == "sqlite":
                    url = f"sqlite:///{Path(scratch) / 'log.db'}"
                    load = load_sqlite
                else:
                    url = stack.enter_context(postgres_database(args.postgres_url))
                    load = load_postgres
                store = LogStore.open(url)
                stack.callback(store.close)
                started = time.perf_counter()
                load(store, args.rows)
                load_s = time.perf_counter() - started
                queries = run_queries(store, args.rows, args.repeat)
                report[backend] = {"load_s": load_s, "rows_per_s": args.rows / load_s,
                                   "queries": queries}  # fmt: skip
                print(f"{backend}: loaded {args.rows} rows (+ as many delivery attempts) "
                      f"in {load_s:.1f} s", flush=True)  # fmt: skip

    table = []
    for backend, result in report.items():
        for name, timing in result["queries"].items():
            goal = ""
            if name in GOAL_QUERIES:
                goal = "yes" if timing["median_ms"] < 100 else "NO"
            table.append([backend, name, f"{timing['median_ms']:.1f}", f"{timing['p90_ms']:.1f}",
                          goal])  # fmt: skip
    print()
    print_table(["backend", "query", "median ms", "p90 ms", "< 100 ms"], table)
    path = write_json("log_queries.json", {"rows": args.rows, "repeat": args.repeat,
                                           "results": report})  # fmt: skip
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
