"""LogStore: the write side of the classification log (and the handle queries use).

Thread-safe: one SQLAlchemy engine (a connection pool) shared by the pipeline's worker threads.
SQLite runs in WAL mode so auditors' reads never block the node's writes; writes open with
BEGIN IMMEDIATE so two writers queue on the busy timeout instead of failing on a lock upgrade.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, delete, func, insert, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from dicomnode.logdb import schema
from dicomnode.logdb.engine import (  # the engine's helpers, also for this module's users
    build_engine,
    create_private_file,
    from_stored,
    normalise_url,
    sqlite_file,
    to_utc_naive,
    utcnow,
)
from dicomnode.logdb.entry import ACTIONS, InstanceLogEntry
from dicomnode.logdb.models import (
    AssociationRow,
    ForwardAttemptRow,
    InstanceRow,
    ModelVersionRow,
    PreviewRow,
    PurgeRow,
    VerdictRow,
)
from dicomnode.logdb.store_review import ReviewRows

__all__ = ["FORWARD_OUTCOMES", "LogStore", "PurgeResult", "from_stored", "normalise_url",
           "sqlite_file", "to_utc_naive", "utcnow"]
FORWARD_OUTCOMES = ("sent", "retry", "failed")


@dataclass(frozen=True)
class PurgeResult:
    at: datetime
    cutoff: datetime
    older_than_days: float
    instances_deleted: int
    forward_attempts_deleted: int
    verdicts_deleted: int = 0


class LogStore(ReviewRows):
    """Append-only classification log on SQLite (default) or PostgreSQL (the reviewers' verdicts
    and previews: ReviewRows)."""

    def __init__(self, engine: Engine, url: str, revision: str) -> None:
        self.engine = engine
        self.url = url
        self.revision = revision
        self.dialect = engine.dialect.name
        # Writes take SQLite's write lock up front; PostgreSQL ignores the option.
        self._write_engine = engine.execution_options(sqlite_begin="IMMEDIATE")
        # One writer at a time inside this process: SQLite allows one anyway, and queuing here is
        # cheaper than spinning on its busy handler. PostgreSQL writers run in parallel.
        self._write_lock = threading.Lock() if self.dialect == "sqlite" else None
        self._known_models: set[str] = set()

    @classmethod
    def open(cls, url: str, upgrade: bool = True) -> LogStore:
        """Open the log, creating the database or upgrading its schema to this code's head.

        upgrade=False (auditor tools): change nothing; the database must exist with its schema at
        exactly this code's head, so a reader never migrates a log under a running older node.
        """
        url = normalise_url(url)
        path = sqlite_file(url)
        if path is not None:
            if upgrade:
                create_private_file(path)
            elif not path.exists():
                raise FileNotFoundError(f"no log database at {path}")
        engine = build_engine(url)
        try:
            revision = schema.upgrade(engine) if upgrade else schema.verify(engine)
        except BaseException:
            engine.dispose()
            raise
        return cls(engine, url, revision)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> LogStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _writing(self):
        return self._write_lock if self._write_lock is not None else _NO_LOCK

    def _upsert_model(self, connection, sha256: str, seen: datetime, manifest: dict | None) -> None:
        dialect_insert = pg_insert if self.dialect == "postgresql" else sqlite_insert
        statement = dialect_insert(ModelVersionRow).values(
            sha256=sha256, manifest=manifest, first_seen=seen, last_seen=seen
        )
        excluded = statement.excluded
        updates: dict[str, Any] = {
            # greatest/least keep first/last seen right when rows arrive out of order
            "first_seen": func.min(ModelVersionRow.first_seen, excluded.first_seen)
            if self.dialect == "sqlite"
            else func.least(ModelVersionRow.first_seen, excluded.first_seen),
            "last_seen": func.max(ModelVersionRow.last_seen, excluded.last_seen)
            if self.dialect == "sqlite"
            else func.greatest(ModelVersionRow.last_seen, excluded.last_seen),
        }
        if manifest is not None:
            updates["manifest"] = excluded.manifest
        connection.execute(statement.on_conflict_do_update(index_elements=["sha256"], set_=updates))

    def register_model(
        self, sha256: str, manifest: dict | None, at: datetime | None = None
    ) -> None:
        """Record a model version (and its manifest) as seen now, e.g. when the node loads it."""
        seen = to_utc_naive(at) if at is not None else utcnow()
        with self._writing(), self._write_engine.begin() as connection:
            self._upsert_model(connection, sha256, seen, manifest)

    def record_instance(self, entry: InstanceLogEntry, preview: bytes | None = None) -> int:
        """Append one decision (with its preview PNG, if given); return its row id."""
        with self._writing(), self._write_engine.begin() as connection:
            row_id = self._insert_instance(connection, entry)
            if preview is not None and entry.decision_key is not None:
                self._insert_previews(connection, [{"decision_key": entry.decision_key,
                                                    "at": entry.received_at, "png": preview}])
            return row_id

    def record_forward(
        self,
        instance_id: int | None,
        sop_instance_uid: str,
        destination: str,
        outcome: str,
        dimse_status: int | None,
        detail: str | None,
        attempt: int,
        at: datetime,
        event_key: str | None = None,
        decision_key: str | None = None,
    ) -> None:
        """Append one delivery attempt (once per event_key); without an instance id, link the
        decision with this decision_key, else the newest row of the SOP."""
        self.record_events([("forward", {
            "instance_id": instance_id, "sop_instance_uid": sop_instance_uid,
            "destination": destination, "outcome": outcome, "dimse_status": dimse_status,
            "detail": detail, "attempt": attempt, "at": at, "event_key": event_key,
            "decision_key": decision_key})])  # fmt: skip

    def record_association(self, at: datetime, outcome: str, calling_ae: str, called_ae: str,
                           peer_address: str, reason: str | None = None,
                           event_key: str | None = None) -> None:
        """Append one answered association request (once per event_key)."""
        self.record_events([("association", {
            "at": at, "outcome": outcome, "calling_ae": calling_ae, "called_ae": called_ae,
            "peer_address": peer_address, "reason": reason, "event_key": event_key})])

    def record_events(self, events: list[tuple[str, Any]]) -> None:
        """Append many events in one transaction (the journal's batched writer): each
        ("instance", InstanceLogEntry) | ("preview", {decision_key, at, png}) |
        ("forward", kwargs of record_forward) | ("association", kwargs of
        record_association). Events whose key is in already (a replay) are skipped; decisions
        go in first, so an attempt in the same batch finds its decision's row. All or nothing:
        an error rolls back the whole batch."""
        by_kind: dict[str, list[Any]] = {"instance": [], "preview": [], "forward": [],
                                         "association": []}
        for kind, value in events:
            by_kind[kind].append(value)
        with self._writing(), self._write_engine.begin() as connection:
            self._insert_instances(connection, by_kind["instance"])
            self._insert_previews(connection, by_kind["preview"])
            self._insert_forwards(connection, by_kind["forward"])
            self._insert_associations(connection, by_kind["association"])

    @staticmethod
    def _rows_where_in(connection, columns: tuple[Any, ...], key: Any,
                       keys: list[str]) -> list[Any]:
        """SELECT columns WHERE key IN keys, 500 keys per statement."""
        rows: list[Any] = []
        for start in range(0, len(keys), 500):
            rows += connection.execute(select(*columns).where(key.in_(keys[start:start + 500])))
        return rows

    def _existing(self, connection, column: Any, keys: list[str]) -> set[str]:
        return {row[0] for row in self._rows_where_in(connection, (column,), column, keys)}

    @staticmethod
    def _instance_values(entry: InstanceLogEntry) -> dict[str, Any]:
        """The instances row of a decision (its action checked)."""
        if entry.action not in ACTIONS:
            raise ValueError(f"action {entry.action!r} is not one of {', '.join(ACTIONS)}")
        values = asdict(entry)
        values["received_at"] = to_utc_naive(entry.received_at)
        values["routing"] = entry.routing or {}
        return values

    def _insert_instances(self, connection, entries: list[InstanceLogEntry]) -> None:
        all_values = [self._instance_values(entry) for entry in entries]
        keys = [e.decision_key for e in entries if e.decision_key is not None]
        existing = self._existing(connection, InstanceRow.decision_key, keys)
        rows, seen_models = [], {}
        for entry, values in zip(entries, all_values, strict=True):
            if entry.decision_key in existing:
                continue
            existing.add(entry.decision_key)  # a key twice in one batch: written once
            rows.append(values)
            if entry.model_sha256:
                first, last = seen_models.get(entry.model_sha256, (values["received_at"],) * 2)
                seen_models[entry.model_sha256] = (min(first, values["received_at"]),
                                                   max(last, values["received_at"]))
        if rows:
            connection.execute(insert(InstanceRow), rows)
        for sha256, (first, last) in seen_models.items():
            self._upsert_model(connection, sha256, first, None)
            if last != first:
                self._upsert_model(connection, sha256, last, None)

    def _insert_forwards(self, connection, attempts: list[dict[str, Any]]) -> None:
        for attempt in attempts:
            if attempt["outcome"] not in FORWARD_OUTCOMES:
                raise ValueError(f"outcome {attempt['outcome']!r} is not one of "
                                 f"{', '.join(FORWARD_OUTCOMES)}")
        keys = [a["event_key"] for a in attempts if a.get("event_key")]
        existing = self._existing(connection, ForwardAttemptRow.event_key, keys)
        wanted = [a["decision_key"] for a in attempts
                  if a.get("instance_id") is None and a.get("decision_key")]
        ids = {key: row_id for key, row_id in self._rows_where_in(
            connection, (InstanceRow.decision_key, InstanceRow.id), InstanceRow.decision_key,
            wanted)}  # fmt: skip
        rows = []
        for attempt in attempts:
            key = attempt.get("event_key")
            if key is not None and key in existing:
                continue  # a replay of an attempt already written
            existing.add(key)
            instance_id = attempt.get("instance_id")
            if instance_id is None:
                instance_id = ids.get(attempt.get("decision_key") or "")
            if instance_id is None:  # no journaled decision: the newest row of the SOP
                instance_id = connection.execute(select(func.max(InstanceRow.id)).where(
                    InstanceRow.sop_instance_uid == attempt["sop_instance_uid"])).scalar()
            rows.append({"instance_id": instance_id,
                         "sop_instance_uid": attempt["sop_instance_uid"],
                         "destination": attempt["destination"], "outcome": attempt["outcome"],
                         "dimse_status": attempt.get("dimse_status"),
                         "detail": attempt.get("detail"), "attempt": attempt["attempt"],
                         "at": to_utc_naive(attempt["at"]), "event_key": key})  # fmt: skip
        if rows:
            connection.execute(insert(ForwardAttemptRow), rows)

    def _insert_associations(self, connection, associations: list[dict[str, Any]]) -> None:
        keys = [a["event_key"] for a in associations if a.get("event_key")]
        existing = self._existing(connection, AssociationRow.event_key, keys)
        rows = []
        for a in associations:
            key = a.get("event_key")
            if key is not None and key in existing:
                continue
            existing.add(key)
            rows.append({"at": to_utc_naive(a["at"]), "outcome": a["outcome"],
                         "calling_ae": a["calling_ae"][:64], "called_ae": a["called_ae"][:64],
                         "peer_address": a["peer_address"][:128], "reason": a.get("reason"),
                         "event_key": key})  # fmt: skip
        if rows:
            connection.execute(insert(AssociationRow), rows)

    def _insert_instance(self, connection, entry: InstanceLogEntry) -> int:
        """One decision, its row id returned (record_instance; batches use _insert_instances)."""
        values = self._instance_values(entry)
        if entry.decision_key is not None:  # a replay: the decision may be in already
            existing = connection.execute(select(InstanceRow.id).where(
                InstanceRow.decision_key == entry.decision_key)).scalar_one_or_none()
            if existing is not None:
                return int(existing)
        row_id = connection.execute(
            insert(InstanceRow).values(**values).returning(InstanceRow.id)
        ).scalar_one()
        if entry.model_sha256:
            self._upsert_model(connection, entry.model_sha256, values["received_at"], None)
        return int(row_id)

    def associations(self, outcome: str | None = None, since: datetime | None = None,
                     limit: int = 1000) -> list[Any]:
        """Answered association requests, newest first (rows with the table's columns)."""
        table = AssociationRow.__table__
        query = select(table).order_by(table.c.id.desc()).limit(limit)
        if outcome is not None:
            query = query.where(table.c.outcome == outcome)
        if since is not None:
            query = query.where(table.c.at >= to_utc_naive(since))
        with self.engine.connect() as connection:
            return list(connection.execute(query))

    def purge(
        self,
        older_than: timedelta | float,
        now: datetime | None = None,
        requested_by: str | None = None,
    ) -> PurgeResult:
        """Delete instances received before now - older_than (days if a number), with their
        delivery attempts, verdicts and previews, and record the purge itself (with counts)."""
        age = older_than if isinstance(older_than, timedelta) else timedelta(days=older_than)
        if age < timedelta(0):
            raise ValueError("retention age must not be negative")
        at = to_utc_naive(now) if now is not None else utcnow()
        cutoff = at - age
        old_ids = select(InstanceRow.id).where(InstanceRow.received_at < cutoff)
        with self._writing(), self._write_engine.begin() as connection:
            attempts = connection.execute(
                delete(ForwardAttemptRow).where(
                    or_(
                        ForwardAttemptRow.instance_id.in_(old_ids),
                        (ForwardAttemptRow.instance_id.is_(None)) & (ForwardAttemptRow.at < cutoff),
                    )
                )
            ).rowcount
            # verdicts and previews go with the decision they belong to (patient data, and
            # a verdict without its decision tells an auditor nothing)
            verdicts = connection.execute(
                delete(VerdictRow).where(VerdictRow.instance_id.in_(old_ids))).rowcount
            connection.execute(delete(PreviewRow).where(PreviewRow.decision_key.in_(
                select(InstanceRow.decision_key).where(InstanceRow.received_at < cutoff))))
            connection.execute(delete(PreviewRow).where(PreviewRow.at < cutoff))
            instances = connection.execute(
                delete(InstanceRow).where(InstanceRow.received_at < cutoff)
            ).rowcount
            days = age.total_seconds() / 86400
            connection.execute(
                insert(PurgeRow).values(
                    at=at,
                    older_than_days=days,
                    cutoff=cutoff,
                    instances_deleted=instances,
                    forward_attempts_deleted=attempts,
                    verdicts_deleted=verdicts,
                    requested_by=requested_by,
                )
            )
        return PurgeResult(from_stored(at), from_stored(cutoff), days, instances, attempts,
                           verdicts)


class _NoLock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *_exc: object) -> None:
        return None


_NO_LOCK = _NoLock()
