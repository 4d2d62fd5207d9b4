"""Property test: every query filter, alone and combined, selects exactly what a plain-Python
reading of the same rows selects (SQLite and PostgreSQL), delivery status included."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dicomnode.logdb.entry import ACTIONS
from dicomnode.logdb.models import ForwardAttemptRow, InstanceRow
from dicomnode.logdb.query import DELIVERY_STATUSES, LogFilter, count_instances, find_instances
from dicomnode.logdb.store import LogStore
from tests.logdb_helpers import MODEL_A, MODEL_B, make_entry

pytest_plugins = ["tests.fixtures_postgres"]

T0 = datetime(2026, 11, 20, tzinfo=timezone.utc)
HOURS = st.integers(0, 47)
STUDIES = ("1.2.3.1", "1.2.3.2", "1.2.3.3")
CONFIDENCES = (None, 0.5, 0.6, 0.75, 0.9, 1.0)  # exact binary fractions: no rounding at bounds
MODELS = (MODEL_A, MODEL_B, None)
OUTCOMES = ("sent", "retry", "failed")

rows_strategy = st.lists(
    st.fixed_dictionaries(
        {
            "hour": HOURS,
            "study": st.sampled_from(STUDIES),
            "calling_ae": st.sampled_from(("CR_A", "CR_B")),
            "modality": st.sampled_from(("CR", "DX")),
            "label": st.sampled_from(("AP", "LA", None)),
            "action": st.sampled_from(ACTIONS),
            "confidence": st.sampled_from(CONFIDENCES),
            "model": st.sampled_from(MODELS),
            "patient": st.sampled_from(("P1", "P2")),
            "attempts": st.lists(
                st.tuples(st.sampled_from(("PACS", "ARCHIVE")), st.sampled_from(OUTCOMES)),
                max_size=3,
            ),
            # a discard rule sent it nowhere (its attempts then stay unrecorded), or routed
            "discarded": st.booleans(),
        }
    ),
    min_size=1,
    max_size=12,
)

filter_strategy = st.fixed_dictionaries(
    {},
    optional={
        "since_hour": HOURS,
        "until_hour": HOURS,
        "study_uid": st.sampled_from(STUDIES),
        "calling_ae": st.sampled_from(("CR_A", "CR_B")),
        "modality": st.sampled_from(("CR", "DX")),
        "label": st.sampled_from(("AP", "LA")),
        "action": st.sampled_from(ACTIONS),
        "min_confidence": st.sampled_from(CONFIDENCES[1:]),
        "max_confidence": st.sampled_from(CONFIDENCES[1:]),
        "model_sha256": st.sampled_from((MODEL_A, MODEL_B[:8])),
        "patient_id": st.sampled_from(("P1", "P2")),
        "delivery": st.sampled_from(DELIVERY_STATUSES),
    },
)


def reference_delivery(attempts: list[tuple[str, str]], discarded: bool = False) -> str:
    if discarded:
        return "discarded"
    outcomes: dict[str, set[str]] = {}
    for destination, outcome in attempts:
        outcomes.setdefault(destination, set()).add(outcome)
    if not outcomes:
        return "none"
    if all("sent" in o for o in outcomes.values()):
        return "delivered"
    if any("failed" in o and "sent" not in o for o in outcomes.values()):
        return "failed"
    return "pending"


def reference_match(row: dict, f: dict) -> bool:
    at = row["hour"]
    checks = [
        "since_hour" not in f or at >= f["since_hour"],
        "until_hour" not in f or at < f["until_hour"],
        "study_uid" not in f or row["study"] == f["study_uid"],
        "calling_ae" not in f or row["calling_ae"] == f["calling_ae"],
        "modality" not in f or row["modality"] == f["modality"],
        "label" not in f or row["label"] == f["label"],
        "action" not in f or row["action"] == f["action"],
        "patient_id" not in f or row["patient"] == f["patient_id"],
        "model_sha256" not in f or (row["model"] or "").startswith(f["model_sha256"]),
        "min_confidence" not in f
        or (row["confidence"] is not None and row["confidence"] >= f["min_confidence"]),
        "max_confidence" not in f
        or (row["confidence"] is not None and row["confidence"] <= f["max_confidence"]),
        "delivery" not in f
        or reference_delivery(row["attempts"], row["discarded"]) == f["delivery"],
    ]
    return all(checks)


def to_log_filter(f: dict) -> LogFilter:
    values = {k: v for k, v in f.items() if not k.endswith("_hour")}
    if "since_hour" in f:
        values["since"] = T0 + timedelta(hours=f["since_hour"])
    if "until_hour" in f:
        values["until"] = T0 + timedelta(hours=f["until_hour"])
    return LogFilter(**values)


@pytest.fixture
def empty_store(db_url):
    store = LogStore.open(db_url)
    try:
        yield store
    finally:
        store.close()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows=rows_strategy, filters=st.lists(filter_strategy, min_size=1, max_size=5))
def test_filters_agree_with_a_python_reading_of_the_rows(empty_store, rows, filters):
    store = empty_store
    with store.engine.begin() as connection:  # each example starts from an empty log
        connection.execute(sa.delete(ForwardAttemptRow))
        connection.execute(sa.delete(InstanceRow))
    ids = {}
    for n, row in enumerate(rows):
        entry = make_entry(
            n, received_at=T0 + timedelta(hours=row["hour"]), study_instance_uid=row["study"],
            calling_ae=row["calling_ae"], modality=row["modality"], label=row["label"],
            action=row["action"], confidence=row["confidence"], model_sha256=row["model"],
            patient_id=row["patient"],
        )  # fmt: skip
        if row["discarded"]:
            entry.routing = {"rules": ["drop"], "destinations": [], "action": "discard"}
            row["attempts"] = []
        ids[n] = store.record_instance(entry)
        for attempt, (destination, outcome) in enumerate(row["attempts"], start=1):
            store.record_forward(ids[n], entry.sop_instance_uid, destination, outcome, None, None,
                                 attempt, T0)  # fmt: skip
    for f in filters:
        expected = {ids[n] for n, row in enumerate(rows) if reference_match(row, f)}
        log_filter = to_log_filter(f)
        found = find_instances(store, log_filter, limit=None)
        assert {r["id"] for r in found} == expected, f
        assert count_instances(store, log_filter) == len(expected)
        for r in found:  # the status shown per row agrees with the status filtered on
            n = next(k for k, v in ids.items() if v == r["id"])
            assert r["delivery"] == reference_delivery(rows[n]["attempts"], rows[n]["discarded"])
