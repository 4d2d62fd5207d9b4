"""Read side of the log: the filters auditors use, shared by `dicomnode log` and the web view.

Delivery status of an instance is derived from its forward attempts, per destination:
  delivered - every destination it was attempted to has a "sent" attempt
  failed    - some destination has a "failed" attempt and no "sent" one
  pending   - attempted, neither of the above (only retries so far for some destination)
  discarded - a routing rule (or the default) discarded it: sent nowhere on purpose
  none      - no attempt recorded yet (queued, not yet forwarded)
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import Date as SqlDate
from sqlalchemy import Integer as SqlInteger
from sqlalchemy import Select, and_, case, cast, exists, func, not_, or_, select
from sqlalchemy.orm import aliased

from dicomnode.logdb.entry import ACTIONS, discard_rule
from dicomnode.logdb.models import ForwardAttemptRow, InstanceRow, ModelVersionRow, PurgeRow
from dicomnode.logdb.store import LogStore, from_stored, to_utc_naive

DELIVERY_STATUSES = ("delivered", "failed", "pending", "discarded", "none")
# Actions where the modality supplied a view position the classifier could be compared with.
COMPARED_ACTIONS = ("agrees", "disagrees", "overwritten")
DISAGREEING_ACTIONS = ("disagrees", "overwritten")
CLASSIFIED_ACTIONS = ("written", "agrees", "disagrees", "overwritten", "uncertain")
HISTOGRAM_BINS = 20  # confidence bins of width 0.05 over [0, 1]

# Columns shown by `log query` and the web table, in order.
LIST_COLUMNS = (
    "id", "received_at", "calling_ae", "modality", "patient_id", "study_instance_uid",
    "series_instance_uid", "sop_instance_uid", "action", "label", "confidence",
    "view_position_before", "view_position_after", "model_sha256", "delivery",
)  # fmt: skip


@dataclass
class LogFilter:
    """Every field optional; set fields are ANDed. Times are UTC (aware or naive-as-UTC)."""

    since: datetime | None = None  # received_at >= since
    until: datetime | None = None  # received_at < until
    study_uid: str | None = None
    series_uid: str | None = None
    sop_uid: str | None = None
    patient_id: str | None = None  # in the configured (stored) form
    calling_ae: str | None = None
    modality: str | None = None
    label: str | None = None
    action: str | None = None
    min_confidence: float | None = None
    max_confidence: float | None = None
    model_sha256: str | None = None  # full digest or a prefix of at least 6 hex digits
    delivery: str | None = None
    accession_number: str | None = None

    def __post_init__(self) -> None:
        if self.action is not None and self.action not in ACTIONS:
            raise ValueError(f"action {self.action!r} is not one of {', '.join(ACTIONS)}")
        if self.delivery is not None and self.delivery not in DELIVERY_STATUSES:
            raise ValueError(
                f"delivery {self.delivery!r} is not one of {', '.join(DELIVERY_STATUSES)}"
            )
        if self.model_sha256 is not None and len(self.model_sha256) < 6:
            raise ValueError("model sha256 needs at least 6 hex digits")

    def is_empty(self) -> bool:
        return all(getattr(self, f.name) in (None, "") for f in fields(self))


def _attempt_exists(*conditions) -> Any:
    return exists().where(ForwardAttemptRow.instance_id == InstanceRow.id, *conditions)


def _discarded() -> Any:
    """Routing sent the instance nowhere on purpose (route.RoutingDecision.as_log)."""
    # coalesce: rows whose routing has no action key (older rows) are not discarded, not NULL
    return func.coalesce(InstanceRow.routing["action"].as_string(), "") == "discard"


def _delivery_condition(status: str):
    if status == "discarded":
        return _discarded()
    other = aliased(ForwardAttemptRow)
    sent_to_same_destination = (
        exists()
        .where(
            other.instance_id == ForwardAttemptRow.instance_id,
            other.destination == ForwardAttemptRow.destination,
            other.outcome == "sent",
        )
        .correlate(ForwardAttemptRow)
    )
    any_attempt = _attempt_exists()
    unsent_destination = _attempt_exists(not_(sent_to_same_destination))
    failed_destination = _attempt_exists(
        ForwardAttemptRow.outcome == "failed", not_(sent_to_same_destination)
    )
    if status == "none":
        return and_(not_(any_attempt), not_(_discarded()))
    if status == "delivered":
        return and_(any_attempt, not_(unsent_destination))
    if status == "failed":
        return failed_destination
    return and_(unsent_destination, not_(failed_destination))  # pending


def apply_filter(statement: Select, log_filter: LogFilter) -> Select:
    f = log_filter
    conditions = []
    if f.since is not None:
        conditions.append(InstanceRow.received_at >= to_utc_naive(f.since))
    if f.until is not None:
        conditions.append(InstanceRow.received_at < to_utc_naive(f.until))
    equal = {
        InstanceRow.study_instance_uid: f.study_uid,
        InstanceRow.series_instance_uid: f.series_uid,
        InstanceRow.sop_instance_uid: f.sop_uid,
        InstanceRow.patient_id: f.patient_id,
        InstanceRow.calling_ae: f.calling_ae,
        InstanceRow.modality: f.modality,
        InstanceRow.label: f.label,
        InstanceRow.action: f.action,
        InstanceRow.accession_number: f.accession_number,
    }
    conditions += [column == value for column, value in equal.items() if value not in (None, "")]
    if f.min_confidence is not None:
        conditions.append(InstanceRow.confidence >= f.min_confidence)
    if f.max_confidence is not None:
        conditions.append(InstanceRow.confidence <= f.max_confidence)
    if f.model_sha256:
        digest = f.model_sha256.lower()
        if len(digest) == 64:
            conditions.append(InstanceRow.model_sha256 == digest)
        else:
            conditions.append(InstanceRow.model_sha256.startswith(digest, autoescape=True))
    if f.delivery:
        conditions.append(_delivery_condition(f.delivery))
    return statement.where(*conditions) if conditions else statement


def delivery_by_instance(store: LogStore, instance_ids: list[int]) -> dict[int, str]:
    """Delivery status (see module doc) for each of the given instance ids."""
    states: dict[int, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    with store.engine.connect() as connection:
        for chunk_start in range(0, len(instance_ids), 500):
            chunk = instance_ids[chunk_start : chunk_start + 500]
            rows = connection.execute(
                select(
                    ForwardAttemptRow.instance_id,
                    ForwardAttemptRow.destination,
                    ForwardAttemptRow.outcome,
                ).where(ForwardAttemptRow.instance_id.in_(chunk))
            )
            for instance_id, destination, outcome in rows:
                states[instance_id][destination].add(outcome)
    return {key: delivery_status(states.get(key, {})) for key in instance_ids}


def delivery_status(outcomes_by_destination: dict[str, set[str]]) -> str:
    if not outcomes_by_destination:
        return "none"
    if all("sent" in outcomes for outcomes in outcomes_by_destination.values()):
        return "delivered"
    if any("failed" in o and "sent" not in o for o in outcomes_by_destination.values()):
        return "failed"
    return "pending"


def _row_dict(row) -> dict[str, Any]:
    values = dict(row)
    values["received_at"] = from_stored(values["received_at"])
    return values


def count_instances(store: LogStore, log_filter: LogFilter) -> int:
    statement = apply_filter(select(func.count()).select_from(InstanceRow), log_filter)
    with store.engine.connect() as connection:
        return int(connection.execute(statement).scalar_one())


def find_instances(
    store: LogStore,
    log_filter: LogFilter,
    limit: int | None = 100,
    offset: int = 0,
    before: tuple[datetime, int] | None = None,
) -> list[dict[str, Any]]:
    """Matching instance rows, newest first, each with its derived `delivery` status.

    before=(received_at, id): only rows after that one in this order (keyset paging for exports).
    """
    statement = apply_filter(select(InstanceRow), log_filter)
    if before is not None:
        moment, row_id = to_utc_naive(before[0]), before[1]
        statement = statement.where(
            or_(
                InstanceRow.received_at < moment,
                and_(InstanceRow.received_at == moment, InstanceRow.id < row_id),
            )
        )
    statement = statement.order_by(InstanceRow.received_at.desc(), InstanceRow.id.desc())
    if limit is not None:
        statement = statement.limit(limit)
    if offset:
        statement = statement.offset(offset)
    with store.engine.connect() as connection:
        rows = [_row_dict(row) for row in connection.execute(statement).mappings()]
    delivery = delivery_by_instance(store, [row["id"] for row in rows])
    for row in rows:
        discarded = discard_rule(row.get("routing")) is not None
        row["delivery"] = "discarded" if discarded else delivery[row["id"]]
    return rows


def iter_instances(store: LogStore, log_filter: LogFilter, page: int = 5000):
    """All matching rows, newest first, fetched in keyset pages (CSV/JSONL export of any size)."""
    before = None
    while True:
        rows = find_instances(store, log_filter, limit=page, before=before)
        yield from rows
        if len(rows) < page:
            return
        before = (rows[-1]["received_at"], rows[-1]["id"])


def study_detail(store: LogStore, study_uid: str) -> dict[str, Any]:
    """Everything logged for one study: each instance's decision, coercion and delivery attempts."""
    instances = find_instances(store, LogFilter(study_uid=study_uid), limit=None)
    instances.sort(
        key=lambda row: (row["series_instance_uid"] or "", row["received_at"], row["id"])
    )
    attempts: dict[int, list[dict[str, Any]]] = defaultdict(list)
    ids = [row["id"] for row in instances]
    with store.engine.connect() as connection:
        for chunk_start in range(0, len(ids), 500):
            rows = connection.execute(
                select(ForwardAttemptRow)
                .where(ForwardAttemptRow.instance_id.in_(ids[chunk_start : chunk_start + 500]))
                .order_by(ForwardAttemptRow.at, ForwardAttemptRow.id)
            ).mappings()
            for attempt in rows:
                attempts[attempt["instance_id"]].append(
                    {
                        "destination": attempt["destination"],
                        "outcome": attempt["outcome"],
                        "dimse_status": attempt["dimse_status"],
                        "detail": attempt["detail"],
                        "attempt": attempt["attempt"],
                        "at": from_stored(attempt["at"]),
                    }
                )
    for row in instances:
        row["attempts"] = attempts.get(row["id"], [])
        routed = (row.get("routing") or {}).get("destinations") or []
        attempted = {a["destination"] for a in row["attempts"]}
        row["not_attempted"] = [d for d in routed if d not in attempted]
    return {"study_instance_uid": study_uid, "instances": instances}


def _day_expression(store: LogStore):
    if store.dialect == "sqlite":
        return func.date(InstanceRow.received_at)
    return cast(InstanceRow.received_at, SqlDate)


def _rate(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def summarise(store: LogStore, log_filter: LogFilter | None = None) -> dict[str, Any]:
    """Counts and rates auditors ask for, over the instances matching the filter."""
    log_filter = log_filter or LogFilter()

    def grouped(column) -> dict[str, int]:
        statement = apply_filter(
            select(column, func.count()).select_from(InstanceRow), log_filter
        ).group_by(column)
        with store.engine.connect() as connection:
            return {
                ("" if key is None else str(key)): int(n)
                for key, n in connection.execute(statement)
            }

    by_action = grouped(InstanceRow.action)
    total = sum(by_action.values())
    compared = sum(by_action.get(a, 0) for a in COMPARED_ACTIONS)
    disagreeing = sum(by_action.get(a, 0) for a in DISAGREEING_ACTIONS)
    classified = sum(by_action.get(a, 0) for a in CLASSIFIED_ACTIONS)
    uncertain = by_action.get("uncertain", 0)

    scaled = InstanceRow.confidence * HISTOGRAM_BINS
    # CAST truncates on SQLite (floor for non-negative values) but rounds on PostgreSQL
    bin_expression = (
        cast(scaled, SqlInteger())
        if store.dialect == "sqlite"
        else cast(func.floor(scaled), SqlInteger())
    )
    binned = grouped_nonnull(store, log_filter, bin_expression, InstanceRow.confidence)
    histogram_counts = {int(k): v for k, v in binned.items()}
    histogram = []
    for index in range(HISTOGRAM_BINS):
        count = histogram_counts.get(index, 0)
        if index == HISTOGRAM_BINS - 1:  # confidence exactly 1.0 falls into the last bin
            count += histogram_counts.get(HISTOGRAM_BINS, 0)
        histogram.append(
            {"low": index / HISTOGRAM_BINS, "high": (index + 1) / HISTOGRAM_BINS, "count": count}
        )

    by_day = grouped(_day_expression(store))
    return {
        "instances": total,
        "by_day": dict(sorted(by_day.items())),
        "by_label": grouped(InstanceRow.label),
        "by_action": by_action,
        "by_calling_ae": grouped(InstanceRow.calling_ae),
        "by_model": grouped(InstanceRow.model_sha256),
        "disagreement": {"count": disagreeing, "compared": compared,
                         "rate": _rate(disagreeing, compared)},
        "uncertain": {"count": uncertain, "classified": classified,
                      "rate": _rate(uncertain, classified)},
        "confidence_histogram": histogram,
        "delivery_by_destination": delivery_by_destination(store, log_filter),
        "models": model_versions(store),
        "purges": purges(store),
    }


def grouped_nonnull(store: LogStore, log_filter: LogFilter, expression, nonnull) -> dict:
    statement = (
        apply_filter(select(expression, func.count()).select_from(InstanceRow), log_filter)
        .where(nonnull.is_not(None))
        .group_by(expression)
    )
    with store.engine.connect() as connection:
        return {key: int(n) for key, n in connection.execute(statement)}


def delivery_by_destination(store: LogStore, log_filter: LogFilter) -> dict[str, dict[str, Any]]:
    """Per destination: instances sent, failed (no success), pending; attempts; success rate."""
    instance_ids = apply_filter(select(InstanceRow.id), log_filter)
    sent = func.max(case((ForwardAttemptRow.outcome == "sent", 1), else_=0))
    failed = func.max(case((ForwardAttemptRow.outcome == "failed", 1), else_=0))
    per_pair = (
        select(
            ForwardAttemptRow.destination.label("destination"),
            sent.label("sent"),
            failed.label("failed"),
            func.count().label("attempts"),
        )
        .where(ForwardAttemptRow.instance_id.in_(instance_ids))
        .group_by(ForwardAttemptRow.instance_id, ForwardAttemptRow.destination)
        .subquery()
    )
    statement = select(
        per_pair.c.destination,
        func.count(),
        func.sum(per_pair.c.sent),
        func.sum(case((and_(per_pair.c.failed == 1, per_pair.c.sent == 0), 1), else_=0)),
        func.sum(per_pair.c.attempts),
    ).group_by(per_pair.c.destination)
    result: dict[str, dict[str, Any]] = {}
    with store.engine.connect() as connection:
        for destination, instances, n_sent, n_failed, attempts in connection.execute(statement):
            instances, n_sent, n_failed = int(instances), int(n_sent or 0), int(n_failed or 0)
            result[destination] = {
                "instances": instances,
                "delivered": n_sent,
                "failed": n_failed,
                "pending": instances - n_sent - n_failed,
                "attempts": int(attempts or 0),
                "success_rate": _rate(n_sent, instances),
            }
    return dict(sorted(result.items()))


def model_versions(store: LogStore) -> list[dict[str, Any]]:
    with store.engine.connect() as connection:
        rows = connection.execute(
            select(ModelVersionRow).order_by(ModelVersionRow.first_seen)
        ).mappings()
        return [
            {
                "sha256": row["sha256"],
                "manifest": row["manifest"],
                "first_seen": from_stored(row["first_seen"]),
                "last_seen": from_stored(row["last_seen"]),
            }
            for row in rows
        ]


def purges(store: LogStore) -> list[dict[str, Any]]:
    with store.engine.connect() as connection:
        rows = connection.execute(select(PurgeRow).order_by(PurgeRow.at)).mappings()
        return [
            {
                "at": from_stored(row["at"]),
                "older_than_days": row["older_than_days"],
                "cutoff": from_stored(row["cutoff"]),
                "instances_deleted": row["instances_deleted"],
                "forward_attempts_deleted": row["forward_attempts_deleted"],
                "verdicts_deleted": row["verdicts_deleted"],
                "requested_by": row["requested_by"],
            }
            for row in rows
        ]
