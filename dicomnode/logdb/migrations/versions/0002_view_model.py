"""The view model (AP, PA, lateral, other): every class probability, the reason for an
abstention, and the thresholds that applied.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # ADD COLUMN only: the append-only trigger on instances (0001) stays as it is.
    with op.batch_alter_table("instances", recreate="never") as batch:
        batch.add_column(sa.Column("probability_pa", sa.Float()))
        batch.add_column(sa.Column("probability_other", sa.Float()))
        batch.add_column(sa.Column("decision_reason", sa.Text()))
        batch.add_column(sa.Column("thresholds", sa.JSON()))


def downgrade() -> None:
    with op.batch_alter_table("instances", recreate="never") as batch:
        for name in ("thresholds", "decision_reason", "probability_other", "probability_pa"):
            batch.drop_column(name)
