"""Alembic environment, run only by dicomnode.logdb.schema.upgrade with a live connection."""

from __future__ import annotations

from alembic import context

from dicomnode.logdb.models import Base

connection = context.config.attributes.get("connection")
# why: the node owns the URL and the start-up lock, so the plain alembic CLI is not supported
if connection is None:
    raise RuntimeError("run migrations via dicomnode.logdb.schema.upgrade(), not the alembic CLI")

context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
