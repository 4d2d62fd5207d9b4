"""SQLAlchemy tables of the classification log.

Times are stored as naive UTC (the store converts aware datetimes) so SQLite and PostgreSQL sort and
compare them the same way. The Alembic migrations in ``migrations/`` are the source of truth for the
schema; these models mirror them for queries.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# BIGINT on PostgreSQL (a busy multi-node log passes 2**31 rows); INTEGER on SQLite so the id is the
# rowid and autoincrements.
Id = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    pass


class InstanceRow(Base):
    """One row per received instance: append-only (only retention purges delete)."""

    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    received_at: Mapped[datetime] = mapped_column(DateTime(), nullable=False)
    calling_ae: Mapped[str] = mapped_column(String(64), nullable=False)
    called_ae: Mapped[str] = mapped_column(String(64), nullable=False)
    peer_address: Mapped[str] = mapped_column(String(128), nullable=False)
    sop_class_uid: Mapped[str] = mapped_column(String(64), nullable=False)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), nullable=False)
    study_instance_uid: Mapped[str | None] = mapped_column(String(64))
    series_instance_uid: Mapped[str | None] = mapped_column(String(64))
    modality: Mapped[str | None] = mapped_column(String(16))
    patient_id: Mapped[str | None] = mapped_column(String(128))
    transfer_syntax_uid: Mapped[str | None] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(16), nullable=False)
    label: Mapped[str | None] = mapped_column(String(16))
    probability_ap: Mapped[float | None] = mapped_column(Float)
    probability_la: Mapped[float | None] = mapped_column(Float)  # lateral (class LAT)
    probability_pa: Mapped[float | None] = mapped_column(Float)
    probability_other: Mapped[float | None] = mapped_column(Float)
    decision_reason: Mapped[str | None] = mapped_column(Text)
    # the write thresholds that applied, and where they came from (manifest or config)
    thresholds: Mapped[dict | None] = mapped_column(JSON)
    confidence: Mapped[float | None] = mapped_column(Float)
    model_sha256: Mapped[str | None] = mapped_column(String(64))
    inference_ms: Mapped[float | None] = mapped_column(Float)
    processing_ms: Mapped[float | None] = mapped_column(Float)
    view_position_before: Mapped[str | None] = mapped_column(String(16))
    view_position_after: Mapped[str | None] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)
    spool_path: Mapped[str | None] = mapped_column(Text)
    routing: Mapped[dict] = mapped_column(JSON, nullable=False)
    # The journal key of this decision (its spool name): unique, so a replay writes it once.
    decision_key: Mapped[str | None] = mapped_column(String(64))
    accession_number: Mapped[str | None] = mapped_column(String(64))
    body_part_examined: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (
        Index("ux_instances_decision_key", "decision_key", unique=True),
        Index("ix_instances_accession_number", "accession_number"),
        Index("ix_instances_received_at", "received_at"),
        Index("ix_instances_study_uid", "study_instance_uid"),
        Index("ix_instances_series_uid", "series_instance_uid"),
        Index("ix_instances_sop_uid", "sop_instance_uid"),
        Index("ix_instances_patient_id", "patient_id"),
        Index("ix_instances_model_sha256", "model_sha256"),
    )


class ForwardAttemptRow(Base):
    """One row per attempt to deliver an instance to a destination."""

    __tablename__ = "forward_attempts"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    # No cascade: retention deletes attempts explicitly, and a forward may be logged for an instance
    # whose row is absent (instance_id NULL), matched by SOP Instance UID instead.
    instance_id: Mapped[int | None] = mapped_column(Id, ForeignKey("instances.id"))
    sop_instance_uid: Mapped[str] = mapped_column(String(64), nullable=False)
    destination: Mapped[str] = mapped_column(String(128), nullable=False)
    outcome: Mapped[str] = mapped_column(String(16), nullable=False)  # sent | retry | failed
    dimse_status: Mapped[int | None] = mapped_column(Integer)
    detail: Mapped[str | None] = mapped_column(Text)
    attempt: Mapped[int] = mapped_column(Integer, nullable=False)
    at: Mapped[datetime] = mapped_column(DateTime(), nullable=False)
    event_key: Mapped[str | None] = mapped_column(String(64))  # journal key: written once

    __table_args__ = (
        Index("ux_forward_attempts_event_key", "event_key", unique=True),
        Index("ix_forward_attempts_instance_id", "instance_id"),
        Index("ix_forward_attempts_sop_uid", "sop_instance_uid"),
        Index("ix_forward_attempts_at", "at"),
    )


class ModelVersionRow(Base):
    __tablename__ = "model_versions"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    manifest: Mapped[dict | None] = mapped_column(JSON)
    first_seen: Mapped[datetime] = mapped_column(DateTime(), nullable=False)
    last_seen: Mapped[datetime] = mapped_column(DateTime(), nullable=False)


class PurgeRow(Base):
    """Each retention purge, recorded so auditors can tell deleted history from missing history."""

    __tablename__ = "purges"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(), nullable=False)
    older_than_days: Mapped[float] = mapped_column(Float, nullable=False)
    cutoff: Mapped[datetime] = mapped_column(DateTime(), nullable=False)
    instances_deleted: Mapped[int] = mapped_column(Integer, nullable=False)
    forward_attempts_deleted: Mapped[int] = mapped_column(Integer, nullable=False)
    verdicts_deleted: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    requested_by: Mapped[str | None] = mapped_column(String(128))


class AssociationRow(Base):
    """Each association request the node answered: accepted, or rejected with the codes."""

    __tablename__ = "associations"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(), nullable=False)
    outcome: Mapped[str] = mapped_column(String(16), nullable=False)  # accepted | rejected
    calling_ae: Mapped[str] = mapped_column(String(64), nullable=False)
    called_ae: Mapped[str] = mapped_column(String(64), nullable=False)
    peer_address: Mapped[str] = mapped_column(String(128), nullable=False)
    reason: Mapped[str | None] = mapped_column(Text)
    event_key: Mapped[str | None] = mapped_column(String(64))  # journal key: written once

    __table_args__ = (
        Index("ux_associations_event_key", "event_key", unique=True),
        Index("ix_associations_at", "at"),
    )


class PreviewRow(Base):
    """The model input of a decision as a small PNG (only with `web.previews`: patient data)."""

    __tablename__ = "previews"

    decision_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(), nullable=False)
    png: Mapped[bytes] = mapped_column(LargeBinary(), nullable=False)

    __table_args__ = (Index("ix_previews_at", "at"),)


# A reviewer's judgement, and the true views a reviewer can name (lateral side or not).
VERDICTS = ("right", "wrong")
TRUE_VIEWS = ("AP", "PA", "LL", "RL", "LAT", "OTHER")


class VerdictRow(Base):
    """A reviewer's verdict on a decision: append-only (a trigger refuses UPDATE); the newest
    verdict on an instance counts."""

    __tablename__ = "verdicts"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    instance_id: Mapped[int] = mapped_column(Id, ForeignKey("instances.id"), nullable=False)
    at: Mapped[datetime] = mapped_column(DateTime(), nullable=False)
    reviewer: Mapped[str] = mapped_column(String(64), nullable=False)
    verdict: Mapped[str] = mapped_column(String(8), nullable=False)  # one of VERDICTS
    true_view: Mapped[str] = mapped_column(String(8), nullable=False)  # one of TRUE_VIEWS
    note: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        Index("ix_verdicts_instance_id", "instance_id"),
        Index("ix_verdicts_at", "at"),
    )
