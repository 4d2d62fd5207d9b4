"""Create or upgrade the log schema with the Alembic migrations shipped in this package.

Called by LogStore.open at start-up. A database stamped with a revision this code does not know (a
newer dicomnode wrote it) is refused rather than used: old code writing into a newer schema could
silently drop what the newer schema records.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Connection, Engine, text

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# Arbitrary constant key: serialises concurrent start-ups of several nodes on one PostgreSQL.
PG_MIGRATION_LOCK_KEY = 0x44434D4E  # "DCMN"


class SchemaTooNewError(RuntimeError):
    """The database was migrated by a newer dicomnode than this one."""


class SchemaNotCurrentError(RuntimeError):
    """A reader found the schema missing or older than this code (only the node upgrades it)."""


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def head_revision() -> str:
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    return heads[0]


def current_revisions(connection: Connection) -> tuple[str, ...]:
    return tuple(MigrationContext.configure(connection).get_current_heads())


def check_known(connection: Connection, script: ScriptDirectory) -> None:
    for revision in current_revisions(connection):
        try:
            known = script.get_revision(revision)
        except CommandError:
            known = None
        if known is None:
            raise SchemaTooNewError(
                f"log database schema is at revision {revision!r}, which this dicomnode does not "
                f"know (newest known: {head_revision()!r}); run a dicomnode at least as new as the "
                "one that migrated this database"
            )


def upgrade(engine: Engine) -> str:
    """Bring the schema to head in one transaction; return the revision now in place."""
    config = alembic_config()
    script = ScriptDirectory.from_config(config)
    # SQLite: take the write lock before reading the version, so two nodes starting together queue
    # on the busy timeout instead of one failing on a read-to-write lock upgrade.
    with engine.execution_options(sqlite_begin="IMMEDIATE").begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_MIGRATION_LOCK_KEY}
            )
        check_known(connection, script)
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
        revisions = current_revisions(connection)
    return revisions[0]


def verify(engine: Engine) -> str:
    """Check, without changing anything, that the schema is at this code's head."""
    script = ScriptDirectory.from_config(alembic_config())
    with engine.connect() as connection:
        check_known(connection, script)
        revisions = current_revisions(connection)
    head = head_revision()
    if revisions != (head,):
        found = ", ".join(revisions) or "no dicomnode log schema"
        raise SchemaNotCurrentError(
            f"log database has {found}; this dicomnode reads revision {head!r}. Start the node "
            "(it upgrades the schema at start-up) or use the dicomnode version that wrote it"
        )
    return head
