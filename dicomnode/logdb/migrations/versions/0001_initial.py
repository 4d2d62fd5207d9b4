"""Initial log schema: instances, forward attempts, model versions, purges.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

# Instance rows are append-only: the database itself refuses UPDATE, so no code path (or stray SQL
# session) can rewrite a decision after the fact. Retention purges DELETE, which stays allowed.
SQLITE_NO_UPDATE = """
CREATE TRIGGER instances_append_only BEFORE UPDATE ON instances
BEGIN SELECT RAISE(ABORT, 'instances are append-only'); END
"""
PG_NO_UPDATE_FN = """
CREATE FUNCTION dicomnode_instances_append_only() RETURNS trigger AS $$
BEGIN RAISE EXCEPTION 'instances are append-only'; END $$ LANGUAGE plpgsql
"""
PG_NO_UPDATE_TRIGGER = """
CREATE TRIGGER instances_append_only BEFORE UPDATE ON instances
FOR EACH ROW EXECUTE FUNCTION dicomnode_instances_append_only()
"""


def upgrade() -> None:
    op.create_table(
        "instances",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.Column("calling_ae", sa.String(64), nullable=False),
        sa.Column("called_ae", sa.String(64), nullable=False),
        sa.Column("peer_address", sa.String(128), nullable=False),
        sa.Column("sop_class_uid", sa.String(64), nullable=False),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False),
        sa.Column("study_instance_uid", sa.String(64)),
        sa.Column("series_instance_uid", sa.String(64)),
        sa.Column("modality", sa.String(16)),
        sa.Column("patient_id", sa.String(128)),
        sa.Column("transfer_syntax_uid", sa.String(64)),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("label", sa.String(16)),
        sa.Column("probability_ap", sa.Float()),
        sa.Column("probability_la", sa.Float()),
        sa.Column("confidence", sa.Float()),
        sa.Column("model_sha256", sa.String(64)),
        sa.Column("inference_ms", sa.Float()),
        sa.Column("processing_ms", sa.Float()),
        sa.Column("view_position_before", sa.String(16)),
        sa.Column("view_position_after", sa.String(16)),
        sa.Column("error", sa.Text()),
        sa.Column("spool_path", sa.Text()),
        sa.Column("routing", sa.JSON(), nullable=False),
    )
    op.create_index("ix_instances_received_at", "instances", ["received_at"])
    op.create_index("ix_instances_study_uid", "instances", ["study_instance_uid"])
    op.create_index("ix_instances_series_uid", "instances", ["series_instance_uid"])
    op.create_index("ix_instances_sop_uid", "instances", ["sop_instance_uid"])
    op.create_index("ix_instances_patient_id", "instances", ["patient_id"])
    op.create_index("ix_instances_model_sha256", "instances", ["model_sha256"])

    op.create_table(
        "forward_attempts",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("instance_id", Id, sa.ForeignKey("instances.id")),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False),
        sa.Column("destination", sa.String(128), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("dimse_status", sa.Integer()),
        sa.Column("detail", sa.Text()),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_forward_attempts_instance_id", "forward_attempts", ["instance_id"])
    op.create_index("ix_forward_attempts_sop_uid", "forward_attempts", ["sop_instance_uid"])
    op.create_index("ix_forward_attempts_at", "forward_attempts", ["at"])

    op.create_table(
        "model_versions",
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("manifest", sa.JSON()),
        sa.Column("first_seen", sa.DateTime(), nullable=False),
        sa.Column("last_seen", sa.DateTime(), nullable=False),
    )

    op.create_table(
        "purges",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("older_than_days", sa.Float(), nullable=False),
        sa.Column("cutoff", sa.DateTime(), nullable=False),
        sa.Column("instances_deleted", sa.Integer(), nullable=False),
        sa.Column("forward_attempts_deleted", sa.Integer(), nullable=False),
        sa.Column("requested_by", sa.String(128)),
    )

    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        op.execute(SQLITE_NO_UPDATE)
    elif dialect == "postgresql":
        op.execute(PG_NO_UPDATE_FN)
        op.execute(PG_NO_UPDATE_TRIGGER)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS instances_append_only ON instances")
        op.execute("DROP FUNCTION IF EXISTS dicomnode_instances_append_only()")
    op.drop_table("purges")
    op.drop_table("model_versions")
    op.drop_table("forward_attempts")
    op.drop_table("instances")
