"""Auditor queries and the `dicomnode log` commands, on SQLite and a real PostgreSQL."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timezone

import pytest
from typer.testing import CliRunner

from dicomnode.logdb.cli import log_app
from dicomnode.logdb.entry import patient_id_in_configured_form
from dicomnode.logdb.query import (
    LogFilter,
    count_instances,
    find_instances,
    iter_instances,
    study_detail,
    summarise,
)
from dicomnode.logdb.store import LogStore
from tests.logdb_helpers import DAY1, MODEL_A, MODEL_B, STUDY_A, STUDY_B, make_entry, populate

pytest_plugins = ["tests.fixtures_postgres"]


@pytest.fixture
def populated(db_url):
    store = LogStore.open(db_url)
    try:
        ids = populate(store)
        yield store, ids
    finally:
        store.close()


def keys(rows, ids) -> set[str]:
    by_id = {v: k for k, v in ids.items()}
    return {by_id[row["id"]] for row in rows}


@pytest.mark.parametrize(
    ("log_filter", "expected"),
    [
        (LogFilter(), {"a1", "a2", "a3", "b1", "b2", "c1"}),
        (LogFilter(study_uid=STUDY_A), {"a1", "a2", "a3"}),
        (LogFilter(sop_uid=f"{STUDY_B}.b2"), {"b2"}),
        (LogFilter(since=DAY1.replace(day=21), until=DAY1.replace(day=22)), {"b1", "b2"}),
        (LogFilter(calling_ae="CR_ROOM2"), {"b1", "b2"}),
        (LogFilter(modality="DX"), {"c1"}),
        (LogFilter(label="LA"), {"a2", "b2"}),
        (LogFilter(action="disagrees"), {"a3"}),
        (LogFilter(min_confidence=0.85), {"a1", "a2", "b2"}),
        (LogFilter(min_confidence=0.8, max_confidence=0.9), {"a2", "a3"}),
        (LogFilter(model_sha256=MODEL_B), {"b1", "b2"}),
        (LogFilter(model_sha256=MODEL_A[:8]), {"a1", "a2", "a3"}),
        (LogFilter(patient_id="PAT-B"), {"b1", "b2"}),
        (LogFilter(delivery="delivered"), {"a1", "a2", "b2"}),
        (LogFilter(delivery="failed"), {"a3"}),
        (LogFilter(delivery="pending"), {"b1"}),
        (LogFilter(delivery="none"), {"c1"}),
        (LogFilter(study_uid=STUDY_A, delivery="delivered", label="AP"), {"a1"}),
    ],
)
def test_filters_select_exactly_the_matching_rows(populated, log_filter, expected):
    store, ids = populated
    rows = find_instances(store, log_filter)
    assert keys(rows, ids) == expected
    assert count_instances(store, log_filter) == len(expected)


def test_rows_come_newest_first_with_delivery_status_and_paging(populated):
    store, ids = populated
    rows = find_instances(store, LogFilter(), limit=4)
    assert [row["id"] for row in rows] == [ids[k] for k in ("c1", "b2", "b1", "a3")]
    assert [row["delivery"] for row in rows] == ["none", "delivered", "pending", "failed"]
    rest = find_instances(store, LogFilter(), limit=4, offset=4)
    assert [row["id"] for row in rest] == [ids["a2"], ids["a1"]]
    assert rows[0]["received_at"].tzinfo is not None


def test_bad_filter_values_are_refused_with_the_valid_choices():
    with pytest.raises(ValueError, match="delivery 'lost' is not one of delivered"):
        LogFilter(delivery="lost")
    with pytest.raises(ValueError, match="action 'maybe'"):
        LogFilter(action="maybe")


def test_study_detail_has_decisions_coercions_and_deliveries(populated):
    store, _ = populated
    detail = study_detail(store, STUDY_B)
    b1, b2 = detail["instances"]
    assert (b1["action"], b1["delivery"]) == ("uncertain", "pending")
    assert (b2["view_position_before"], b2["view_position_after"]) == ("AP", "LL")
    assert sorted((a["destination"], a["outcome"]) for a in b2["attempts"]) == [
        ("ARCHIVE", "sent"), ("PACS", "sent"),
    ]
    assert b1["not_attempted"] == []
    assert study_detail(store, "9.9.9")["instances"] == []


def test_summary_counts_rates_histogram_and_delivery(populated):
    store, _ = populated
    summary = summarise(store)
    assert summary["instances"] == 6
    assert summary["by_day"] == {"2026-11-20": 3, "2026-11-21": 2, "2026-11-22": 1}
    assert summary["by_calling_ae"] == {"CR_ROOM1": 4, "CR_ROOM2": 2}
    assert summary["by_model"] == {MODEL_A: 3, MODEL_B: 2, "": 1}
    assert summary["by_label"] == {"AP": 2, "LA": 2, "": 2}
    # compared with the modality: a2 agrees, a3 disagrees, b2 overwritten -> 2 of 3 disagree
    assert summary["disagreement"] == {"count": 2, "compared": 3, "rate": pytest.approx(2 / 3)}
    # classified: a1 a2 a3 b1 b2 -> 1 uncertain of 5
    assert summary["uncertain"] == {"count": 1, "classified": 5, "rate": pytest.approx(0.2)}
    histogram = {round(b["low"], 2): b["count"] for b in summary["confidence_histogram"]}
    assert histogram[0.95] == 1 and histogram[0.85] == 1 and histogram[0.8] == 1
    assert histogram[0.9] == 1 and histogram[0.55] == 1
    assert sum(histogram.values()) == 5
    pacs = summary["delivery_by_destination"]["PACS"]
    assert (pacs["instances"], pacs["delivered"], pacs["failed"], pacs["pending"]) == (5, 3, 1, 1)
    assert pacs["attempts"] == 7
    assert pacs["success_rate"] == pytest.approx(0.6)
    assert summary["delivery_by_destination"]["ARCHIVE"]["success_rate"] == 1.0
    assert {m["sha256"] for m in summary["models"]} == {MODEL_A, MODEL_B}


def test_summary_respects_a_filter(populated):
    store, _ = populated
    summary = summarise(store, LogFilter(calling_ae="CR_ROOM2"))
    assert summary["instances"] == 2
    assert set(summary["delivery_by_destination"]) == {"PACS", "ARCHIVE"}
    assert summary["delivery_by_destination"]["PACS"]["pending"] == 1


runner = CliRunner()


def test_cli_query_by_accession_number(populated, db_url):
    store, _ = populated
    store.record_instance(make_entry(90, accession_number="ACC-77"))
    store.record_instance(make_entry(91, accession_number="ACC-78"))
    result = runner.invoke(log_app, ["query", "--db", db_url, "--accession", "ACC-77",
                                     "-f", "jsonl"])  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["sop_instance_uid"] for r in rows] == [make_entry(90).sop_instance_uid]


def test_cli_query_formats(populated, db_url):
    result = runner.invoke(log_app, ["query", "--db", db_url, "--study", STUDY_A, "-f", "csv"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert {r["sop_instance_uid"] for r in rows} == {f"{STUDY_A}.a{i}" for i in (1, 2, 3)}
    assert {r["delivery"] for r in rows} == {"delivered", "failed"}

    result = runner.invoke(log_app, ["query", "--db", db_url, "--delivery", "failed",
                                     "--format", "jsonl"])  # fmt: skip
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["sop_instance_uid"] for line in lines] == [f"{STUDY_A}.a3"]
    assert lines[0]["received_at"] == "2026-11-20T10:00:00+00:00"

    result = runner.invoke(log_app, ["query", "--db", db_url, "--day", "2026-11-21"])
    assert result.exit_code == 0
    assert f"{STUDY_B}.b1" in result.stdout and f"{STUDY_B}.b2" in result.stdout
    assert f"{STUDY_A}.a" not in result.stdout


def test_cli_rejects_bad_input_with_a_clear_message(populated, db_url):
    result = runner.invoke(log_app, ["query", "--db", db_url, "--since", "last tuesday"])
    assert result.exit_code == 2
    assert "--since" in result.stderr and "ISO" in result.stderr
    result = runner.invoke(log_app, ["query", "--db", db_url, "--delivery", "maybe"])
    assert result.exit_code == 2 and "delivered, failed, pending, discarded, none" in result.stderr


def test_cli_summary_json_and_text(populated, db_url):
    result = runner.invoke(log_app, ["summary", "--db", db_url, "--format", "json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["instances"] == 6 and summary["by_action"]["disagrees"] == 1
    text = runner.invoke(log_app, ["summary", "--db", db_url]).stdout
    assert "disagreement with modality: 66.7% (2 of 3" in text
    assert "PACS" in text and "success   60.0%" in text


def test_cli_patient_filter_uses_the_configured_hash(tmp_path, db_url):
    salt = "site-secret-salt"
    config = tmp_path / "node.yaml"
    config.write_text(f"log:\n  url: '{db_url}'\n  patient_id: hash\n  patient_id_salt: {salt}\n")
    with LogStore.open(db_url) as store:
        hashed = patient_id_in_configured_form("JOHN^DOE-1", "hash", salt)
        store.record_instance(make_entry(1, patient_id=hashed))
        store.record_instance(make_entry(2, patient_id=patient_id_in_configured_form(
            "SOMEONE-ELSE", "hash", salt)))  # fmt: skip
    result = runner.invoke(log_app, ["query", "-c", str(config), "--patient", "JOHN^DOE-1",
                                     "-f", "jsonl"])  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [row["sop_instance_uid"] for row in rows] == [make_entry(1).sop_instance_uid]
    assert "JOHN" not in result.stdout  # the log holds the keyed hash only


def test_cli_purge_removes_old_rows_and_is_recorded(populated, db_url):
    store, _ = populated
    # the populated rows are from November 2026; make one row that is "now"
    store.record_instance(make_entry(99, received_at=datetime.now(timezone.utc)))
    result = runner.invoke(log_app, ["purge", "--db", db_url, "--older-than", "1"])
    assert result.exit_code == 0, result.output
    assert "purged 6 instances, 8 delivery attempts and 0 verdicts" in result.stdout
    assert count_instances(store, LogFilter()) == 1
    purges = summarise(store)["purges"]
    assert [(p["instances_deleted"], p["verdicts_deleted"], p["requested_by"])
            for p in purges] == [(6, 0, "dicomnode log purge")]
    result = runner.invoke(log_app, ["purge", "--db", db_url])
    assert result.exit_code == 2 and "--older-than" in result.stderr


def test_export_pages_through_ties_without_loss_or_repeats(populated):
    store, _ = populated
    tie = datetime(2026, 11, 21, 8, 0, tzinfo=timezone.utc)  # b1's time: a 4-way tie
    for n in range(3):
        store.record_instance(make_entry(50 + n, received_at=tie))
    everything = find_instances(store, LogFilter(), limit=None)
    exported = list(iter_instances(store, LogFilter(), page=2))
    assert [r["id"] for r in exported] == [r["id"] for r in everything]
    assert len(exported) == 9


def test_cli_reads_never_create_a_database(tmp_path):
    missing = tmp_path / "nothing-here.db"
    result = runner.invoke(log_app, ["query", "--db", str(missing)])
    assert result.exit_code == 2 and "no log database" in result.stderr
    assert not missing.exists()
