"""Event keys: each decision and each delivery attempt carries the key the node gave it when it
journaled the event in the spool, unique, so a replay after a database outage (or a crash
between the insert and the journal's cleanup) writes every event exactly once.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # ADD COLUMN and a unique index only: the append-only trigger on instances (0001) stays.
    with op.batch_alter_table("instances", recreate="never") as batch:
        batch.add_column(sa.Column("decision_key", sa.String(64)))
    with op.batch_alter_table("forward_attempts", recreate="never") as batch:
        batch.add_column(sa.Column("event_key", sa.String(64)))
    op.create_index("ux_instances_decision_key", "instances", ["decision_key"], unique=True)
    op.create_index("ux_forward_attempts_event_key", "forward_attempts", ["event_key"],
                    unique=True)


def downgrade() -> None:
    op.drop_index("ux_forward_attempts_event_key", "forward_attempts")
    op.drop_index("ux_instances_decision_key", "instances")
    with op.batch_alter_table("forward_attempts", recreate="never") as batch:
        batch.drop_column("event_key")
    with op.batch_alter_table("instances", recreate="never") as batch:
        batch.drop_column("decision_key")
