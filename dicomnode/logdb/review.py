"""Reviewers' side of the log: what an auditor needs beside a decision (model name, routing,
delivery flags, newest verdict, preview), the review queue, and reviewed accuracy.

"Newest verdict" is the verdict row with the highest id for an instance (rows are append-only).
Accuracy figures count only reviewed decisions, each by its newest verdict:
  accuracy        - share of reviewed decisions judged right
  wrong-write rate - share of reviewed written/overwritten decisions (the node wrote a view
                     position) whose newest verdict is wrong
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, func, not_, select

from dicomnode.logdb.entry import discard_rule
from dicomnode.logdb.models import (
    ForwardAttemptRow,
    InstanceRow,
    ModelVersionRow,
    PreviewRow,
    VerdictRow,
)
from dicomnode.logdb.query import LogFilter, apply_filter, delivery_by_instance
from dicomnode.logdb.store import LogStore, from_stored

WRITING_ACTIONS = ("written", "overwritten")
QUEUE_ACTIONS = ("uncertain", "disagrees")
CHUNK = 500


def _chunks(ids: list[int]) -> Iterator[list[int]]:
    for start in range(0, len(ids), CHUNK):
        yield ids[start : start + CHUNK]


def model_info(store: LogStore) -> dict[str, dict[str, Any]]:
    """sha256 -> name, version and date from the manifest the node registered with it."""
    with store.engine.connect() as connection:
        rows = connection.execute(select(ModelVersionRow.sha256, ModelVersionRow.manifest))
        info = {}
        for sha256, manifest in rows:
            manifest = manifest or {}
            recipe = manifest.get("recipe")
            version = manifest.get("version") or (
                recipe.get("name") if isinstance(recipe, dict) else None
            )
            info[sha256] = {"name": manifest.get("name"), "version": version,
                            "date": manifest.get("date")}  # fmt: skip
        return info


def newest_verdict_ids() -> Select:
    """The id of each instance's newest verdict: verdicts are append-only, so the newest is the
    last appended (the highest id), whatever the clock said when it was written."""
    return select(func.max(VerdictRow.id)).group_by(VerdictRow.instance_id)


def newest_verdicts(store: LogStore, instance_ids: list[int]) -> dict[int, dict[str, Any]]:
    newest = newest_verdict_ids().scalar_subquery()
    result: dict[int, dict[str, Any]] = {}
    with store.engine.connect() as connection:
        for chunk in _chunks(instance_ids):
            rows = connection.execute(
                select(VerdictRow).where(VerdictRow.instance_id.in_(chunk),
                                         VerdictRow.id.in_(newest))
            ).mappings()
            for row in rows:
                result[row["instance_id"]] = _verdict_dict(row)
    return result


def _verdict_dict(row) -> dict[str, Any]:
    return {"id": row["id"], "at": from_stored(row["at"]), "reviewer": row["reviewer"],
            "verdict": row["verdict"], "true_view": row["true_view"], "note": row["note"]}


def verdict_history(store: LogStore, instance_id: int) -> list[dict[str, Any]]:
    """Every verdict on a decision, oldest first."""
    with store.engine.connect() as connection:
        rows = connection.execute(
            select(VerdictRow).where(VerdictRow.instance_id == instance_id)
            .order_by(VerdictRow.id)
        ).mappings()
        return [_verdict_dict(row) for row in rows]


def annotate(store: LogStore, rows: list[dict[str, Any]],
             models: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Add to find_instances rows: model (name/version/date), rules, destinations, the flags
    routed_nowhere and never_delivered, the newest verdict, and whether a preview is kept."""
    models = model_info(store) if models is None else models
    ids = [row["id"] for row in rows]
    keys = [row["decision_key"] for row in rows if row.get("decision_key")]
    sent: set[int] = set()
    previews: set[str] = set()
    with store.engine.connect() as connection:
        for chunk in _chunks(ids):
            sent.update(connection.execute(
                select(ForwardAttemptRow.instance_id).where(
                    ForwardAttemptRow.instance_id.in_(chunk), ForwardAttemptRow.outcome == "sent"
                ).distinct()).scalars())  # fmt: skip
        for start in range(0, len(keys), CHUNK):
            previews.update(connection.execute(select(PreviewRow.decision_key).where(
                PreviewRow.decision_key.in_(keys[start : start + CHUNK]))).scalars())
    verdicts = newest_verdicts(store, ids)
    for row in rows:
        routing = row.get("routing") or {}
        row["rules"] = list(routing.get("rules") or [])
        row["destinations"] = list(routing.get("destinations") or [])
        row["routed_nowhere"] = not row["destinations"]
        row["never_delivered"] = bool(row["destinations"]) and row["id"] not in sent
        row["model"] = models.get(row.get("model_sha256") or "", {})
        row["verdict"] = verdicts.get(row["id"])
        row["has_preview"] = bool(row.get("decision_key")) and row["decision_key"] in previews
    return rows


def instance(store: LogStore, instance_id: int) -> dict[str, Any] | None:
    """One decision by row id, as find_instances gives it, annotated; None if there is none."""
    rows = _rows_by_id(store, [instance_id])
    if not rows:
        return None
    row = rows[0]
    discarded = discard_rule(row.get("routing")) is not None
    row["delivery"] = "discarded" if discarded else delivery_by_instance(store, [instance_id])[
        instance_id]
    return annotate(store, rows)[0]


def preview_png(store: LogStore, decision_key: str) -> bytes | None:
    with store.engine.connect() as connection:
        return connection.execute(select(PreviewRow.png).where(
            PreviewRow.decision_key == decision_key)).scalar_one_or_none()


def _unreviewed():
    return not_(select(VerdictRow.id).where(VerdictRow.instance_id == InstanceRow.id).exists())


def review_queue(store: LogStore, seed: int = 0, sample_percent: float = 5.0,
                 limit: int = 100) -> dict[str, list[dict[str, Any]]]:
    """Decisions without a verdict: uncertain and disagrees (newest first), and a sample of
    written ones. The sample is a pseudo-random but fixed function of (seed, row id), so a reload
    shows the same films and another seed another sample; it is computed in SQL on both
    backends."""
    buckets = 10_000
    cutoff = round(max(0.0, min(100.0, sample_percent)) * buckets / 100)
    # a multiplicative hash of the id, mixed with the seed; small factors keep it within 63 bits
    mixed = (InstanceRow.id * 7919 + (seed % 100_003) * 104_729) % 1_000_003 % buckets
    with store.engine.connect() as connection:
        def ids(*conditions) -> list[int]:
            statement = (select(InstanceRow.id).where(_unreviewed(), *conditions)
                         .order_by(InstanceRow.received_at.desc(), InstanceRow.id.desc())
                         .limit(limit))  # fmt: skip
            return list(connection.execute(statement).scalars())

        chosen = {action: ids(InstanceRow.action == action) for action in QUEUE_ACTIONS}
        chosen["written"] = ids(InstanceRow.action == "written", mixed < cutoff)
    models = model_info(store)
    result = {}
    for name, id_list in chosen.items():
        rows = _rows_by_id(store, id_list)
        result[name] = annotate(store, rows, models)
    return result


def _rows_by_id(store: LogStore, ids: list[int]) -> list[dict[str, Any]]:
    if not ids:
        return []
    with store.engine.connect() as connection:
        rows = [dict(r) for r in connection.execute(
            select(InstanceRow).where(InstanceRow.id.in_(ids))
            .order_by(InstanceRow.received_at.desc(), InstanceRow.id.desc())).mappings()]
    for row in rows:
        row["received_at"] = from_stored(row["received_at"])
    return rows


def iso_week(moment: datetime) -> str:
    year, week, _ = moment.isocalendar()
    return f"{year}-W{week:02d}"


def _group() -> dict[str, int]:
    return {"reviewed": 0, "right": 0, "writes_reviewed": 0, "wrong_writes": 0}


def review_summary(store: LogStore, log_filter: LogFilter | None = None) -> dict[str, Any]:
    """Reviewed accuracy and wrong-write rate, overall and per model, region (BodyPartExamined)
    and ISO week of receipt, over the reviewed decisions matching the filter."""
    newest = newest_verdict_ids()
    statement = apply_filter(
        select(InstanceRow.model_sha256, InstanceRow.body_part_examined,
               InstanceRow.received_at, InstanceRow.action, VerdictRow.verdict)
        .join(VerdictRow, and_(VerdictRow.instance_id == InstanceRow.id,
                               VerdictRow.id.in_(newest))),
        log_filter or LogFilter(),
    )  # fmt: skip
    groups: dict[str, dict[str, dict[str, int]]] = {
        "model": defaultdict(_group), "region": defaultdict(_group), "week": defaultdict(_group)}
    total = _group()
    with store.engine.connect() as connection:
        rows = list(connection.execute(statement))
    for sha256, region, received_at, action, verdict in rows:
        keys = {"model": sha256 or "", "region": (region or "").upper(),
                "week": iso_week(from_stored(received_at))}  # fmt: skip
        for counts in [total] + [groups[k][v] for k, v in keys.items()]:
            counts["reviewed"] += 1
            counts["right"] += verdict == "right"
            if action in WRITING_ACTIONS:
                counts["writes_reviewed"] += 1
                counts["wrong_writes"] += verdict == "wrong"
    return {"total": _rates(total),
            **{name: {k: _rates(v) for k, v in sorted(g.items())} for name, g in groups.items()}}


def _rates(counts: dict[str, int]) -> dict[str, Any]:
    reviewed, writes = counts["reviewed"], counts["writes_reviewed"]
    return {**counts, "accuracy": counts["right"] / reviewed if reviewed else None,
            "wrong_write_rate": counts["wrong_writes"] / writes if writes else None}


