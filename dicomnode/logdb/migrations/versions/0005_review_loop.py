"""The review loop (issue 17): what an auditor needs beside a decision, and reviewers' verdicts.

- instances gains accession_number and body_part_examined (the region a reviewed accuracy is
  grouped by), ADD COLUMN only so the append-only trigger of 0001 stays as it is;
- previews: the 224x224 model input of a decision as a small PNG, kept only when `web.previews`
  is on (it is patient data), one per decision key, purged with its instance by retention;
- verdicts: a reviewer's judgement of a decision (right / wrong, the true view, a note). Append
  only: a verdict is never edited (a trigger refuses UPDATE, as on instances); a later verdict
  on the same instance is a new row, and the newest one counts;
- purges gains verdicts_deleted: a retention purge deletes the verdicts of the decisions it
  deletes, and says how many (0 on purges recorded before).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

SQLITE_NO_UPDATE = """
CREATE TRIGGER verdicts_append_only BEFORE UPDATE ON verdicts
BEGIN SELECT RAISE(ABORT, 'verdicts are append-only'); END
"""
PG_NO_UPDATE_FN = """
CREATE FUNCTION dicomnode_verdicts_append_only() RETURNS trigger AS $$
BEGIN RAISE EXCEPTION 'verdicts are append-only'; END $$ LANGUAGE plpgsql
"""
PG_NO_UPDATE_TRIGGER = """
CREATE TRIGGER verdicts_append_only BEFORE UPDATE ON verdicts
FOR EACH ROW EXECUTE FUNCTION dicomnode_verdicts_append_only()
"""


def upgrade() -> None:
    with op.batch_alter_table("instances", recreate="never") as batch:
        batch.add_column(sa.Column("accession_number", sa.String(64)))
        batch.add_column(sa.Column("body_part_examined", sa.String(64)))
    op.create_index("ix_instances_accession_number", "instances", ["accession_number"])

    op.create_table(
        "previews",
        sa.Column("decision_key", sa.String(64), primary_key=True),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("png", sa.LargeBinary(), nullable=False),
    )
    op.create_index("ix_previews_at", "previews", ["at"])

    op.create_table(
        "verdicts",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("instance_id", Id, sa.ForeignKey("instances.id"), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("reviewer", sa.String(64), nullable=False),
        sa.Column("verdict", sa.String(8), nullable=False),  # right | wrong
        sa.Column("true_view", sa.String(8), nullable=False),  # AP PA LL RL LAT OTHER
        sa.Column("note", sa.Text()),
    )
    op.create_index("ix_verdicts_instance_id", "verdicts", ["instance_id"])
    op.create_index("ix_verdicts_at", "verdicts", ["at"])
    with op.batch_alter_table("purges", recreate="never") as batch:
        batch.add_column(sa.Column("verdicts_deleted", sa.Integer(), nullable=False,
                                   server_default="0"))
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PG_NO_UPDATE_FN)
        op.execute(PG_NO_UPDATE_TRIGGER)
    else:
        op.execute(SQLITE_NO_UPDATE)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS verdicts_append_only ON verdicts")
        op.execute("DROP FUNCTION IF EXISTS dicomnode_verdicts_append_only()")
    with op.batch_alter_table("purges", recreate="never") as batch:
        batch.drop_column("verdicts_deleted")
    op.drop_table("verdicts")
    op.drop_table("previews")
    op.drop_index("ix_instances_accession_number", "instances")
    with op.batch_alter_table("instances", recreate="never") as batch:
        batch.drop_column("body_part_examined")
        batch.drop_column("accession_number")
