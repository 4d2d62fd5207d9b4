"""Associations in the audit trail: every association request the node answered, accepted or
rejected (with the A-ASSOCIATE-RJ codes), who asked and from where.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "associations",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True,
                  autoincrement=True),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("calling_ae", sa.String(64), nullable=False),
        sa.Column("called_ae", sa.String(64), nullable=False),
        sa.Column("peer_address", sa.String(128), nullable=False),
        sa.Column("reason", sa.Text()),
        sa.Column("event_key", sa.String(64)),
    )
    op.create_index("ux_associations_event_key", "associations", ["event_key"], unique=True)
    op.create_index("ix_associations_at", "associations", ["at"])


def downgrade() -> None:
    op.drop_table("associations")
