"""The log store on SQLite and a real PostgreSQL: schema, append-only writes, models, retention."""

from __future__ import annotations

import multiprocessing
import os
import stat
import threading
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from dicomnode.logdb import schema
from dicomnode.logdb.models import InstanceRow, ModelVersionRow
from dicomnode.logdb.store import LogStore, normalise_url
from tests.logdb_helpers import MODEL_A, MODEL_B, make_entry

pytest_plugins = ["tests.fixtures_postgres"]


@pytest.fixture
def store(db_url):
    log = LogStore.open(db_url)
    try:
        yield log
    finally:
        log.close()


def fetch(store: LogStore, sql: str, **params) -> list:
    with store.engine.connect() as connection:
        return list(connection.execute(sa.text(sql), params))


def test_sqlite_file_is_private_in_wal_mode_and_parent_is_created(tmp_path):
    path = tmp_path / "nested" / "dir" / "log.db"
    with LogStore.open(f"sqlite:///{path}") as log:
        log.record_instance(make_entry(1))
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        for sidecar in (path.with_name("log.db-wal"), path.with_name("log.db-shm")):
            if sidecar.exists():  # SQLite gives them the main file's mode
                assert stat.S_IMODE(os.stat(sidecar).st_mode) == 0o600
        assert fetch(log, "PRAGMA journal_mode")[0][0] == "wal"


def test_bare_path_is_an_sqlite_database(tmp_path):
    with LogStore.open(str(tmp_path / "bare.db")) as log:
        assert log.dialect == "sqlite"
    assert stat.S_IMODE(os.stat(tmp_path / "bare.db").st_mode) == 0o600


def test_plain_postgresql_url_uses_psycopg(postgres_url):
    plain = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    with LogStore.open(plain) as log:
        assert log.engine.dialect.driver == "psycopg"
        log.record_instance(make_entry(1))


def test_in_memory_sqlite_is_shared_between_threads():
    with LogStore.open("sqlite://") as log:
        worker = threading.Thread(target=log.record_instance, args=(make_entry(1),))
        worker.start()
        worker.join()
        assert fetch(log, "SELECT count(*) FROM instances")[0][0] == 1


def test_record_instance_appends_rows_with_ids(store):
    first = store.record_instance(make_entry(1))
    second = store.record_instance(make_entry(2, action="uncertain", label=None, confidence=0.51))
    assert second > first
    rows = fetch(
        store, "SELECT id, sop_instance_uid, action, confidence FROM instances ORDER BY id"
    )
    assert [(r[0], r[1], r[2]) for r in rows] == [
        (first, make_entry(1).sop_instance_uid, "written"),
        (second, make_entry(2).sop_instance_uid, "uncertain"),
    ]
    assert rows[1][3] == pytest.approx(0.51)


def test_times_are_stored_as_utc(store):
    local = timezone(timedelta(hours=2))
    store.record_instance(make_entry(1, received_at=datetime(2026, 11, 20, 10, 0, tzinfo=local)))
    with store.engine.connect() as connection:
        stored = connection.execute(sa.select(InstanceRow.received_at)).scalar_one()
    assert stored == datetime(2026, 11, 20, 8, 0)


def test_instance_rows_refuse_update(store):
    store.record_instance(make_entry(1))
    with pytest.raises(DBAPIError, match="append-only"), store.engine.begin() as connection:
        connection.execute(sa.text("UPDATE instances SET label = 'LA'"))
    assert fetch(store, "SELECT label FROM instances")[0][0] == "AP"


def test_unknown_action_and_outcome_are_refused(store):
    with pytest.raises(ValueError, match="action 'guessed'"):
        store.record_instance(make_entry(1, action="guessed"))
    with pytest.raises(ValueError, match="outcome 'lost'"):
        store.record_forward(None, "1.2.3", "PACS", "lost", None, None, 1, datetime.now())
    assert fetch(store, "SELECT count(*) FROM instances")[0][0] == 0


def test_model_versions_track_first_and_last_seen_and_manifest(store):
    t0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
    store.record_instance(make_entry(1, received_at=t0 + timedelta(days=2)))
    store.record_instance(make_entry(2, received_at=t0))  # arrives late, older
    store.record_instance(make_entry(3, received_at=t0 + timedelta(days=5)))
    store.record_instance(make_entry(4, received_at=t0, model_sha256=MODEL_B))
    store.register_model(MODEL_A, {"variant": "int8", "labels": ["AP", "LA"]}, at=t0)
    with store.engine.connect() as connection:
        rows = {row.sha256: row for row in connection.execute(sa.select(ModelVersionRow))}
    assert set(rows) == {MODEL_A, MODEL_B}
    assert rows[MODEL_A].first_seen == datetime(2026, 11, 1)
    assert rows[MODEL_A].last_seen == datetime(2026, 11, 6)
    assert rows[MODEL_A].manifest["variant"] == "int8"
    assert rows[MODEL_B].manifest is None


def test_record_forward_links_by_sop_uid_when_no_id(store):
    entry = make_entry(7)
    instance_id = store.record_instance(entry)
    now = datetime.now(timezone.utc)
    store.record_forward(None, entry.sop_instance_uid, "PACS", "retry", 0xA700, "out of resources",
                         1, now)
    store.record_forward(instance_id, entry.sop_instance_uid, "PACS", "sent", 0, None, 2, now)
    store.record_forward(None, "9.9.9", "ARCHIVE", "failed", None, "refused", 1, now)
    rows = fetch(
        store,
        "SELECT instance_id, destination, outcome, dimse_status, attempt FROM forward_attempts "
        "ORDER BY id",
    )
    assert [tuple(r) for r in rows] == [
        (instance_id, "PACS", "retry", 0xA700, 1),
        (instance_id, "PACS", "sent", 0, 2),
        (None, "ARCHIVE", "failed", None, 1),
    ]


def test_purge_deletes_old_rows_and_records_itself(store):
    now = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)
    old = store.record_instance(make_entry(1, received_at=now - timedelta(days=40)))
    store.record_instance(make_entry(2, received_at=now - timedelta(days=10)))
    store.record_forward(old, make_entry(1).sop_instance_uid, "PACS", "sent", 0, None, 1,
                         now - timedelta(days=40))
    result = store.purge(30, now=now, requested_by="test")
    assert (result.instances_deleted, result.forward_attempts_deleted,
            result.verdicts_deleted) == (1, 1, 0)
    assert result.cutoff == now - timedelta(days=30)
    assert [r[0] for r in fetch(store, "SELECT sop_instance_uid FROM instances")] == [
        make_entry(2).sop_instance_uid
    ]
    purges = fetch(store, "SELECT older_than_days, instances_deleted, requested_by FROM purges")
    assert [tuple(r) for r in purges] == [(30.0, 1, "test")]


def test_verdicts_are_append_only_and_purged_with_their_decision_and_preview(store):
    now = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)
    old_entry = make_entry(1, received_at=now - timedelta(days=40))
    old_entry.decision_key = "0001"
    new_entry = make_entry(2, received_at=now - timedelta(days=1))
    new_entry.decision_key = "0002"
    ids = [store.record_instance(old_entry), store.record_instance(new_entry)]
    with store.engine.begin() as connection:
        for instance_id, key in zip(ids, ("0001", "0002"), strict=True):
            connection.execute(
                sa.text("INSERT INTO verdicts (instance_id, at, reviewer, verdict, true_view) "
                        "VALUES (:id, :at, 'ana', 'wrong', 'PA')"),
                {"id": instance_id, "at": datetime(2026, 11, 25)})
            connection.execute(sa.text("INSERT INTO previews (decision_key, at, png) "
                                       "VALUES (:key, :at, :png)"),
                               {"key": key, "at": datetime(2026, 11, 25), "png": b"\x89PNG"})
    with pytest.raises(DBAPIError, match="append-only"), store.engine.begin() as connection:
        connection.execute(sa.text("UPDATE verdicts SET verdict = 'right'"))
    assert [r[0] for r in fetch(store, "SELECT verdict FROM verdicts")] == ["wrong", "wrong"]
    result = store.purge(30, now=now, requested_by="test")
    assert result.verdicts_deleted == 1
    assert [r[0] for r in fetch(store, "SELECT instance_id FROM verdicts")] == [ids[1]]
    purges = fetch(store, "SELECT instances_deleted, verdicts_deleted FROM purges")
    assert [tuple(r) for r in purges] == [(1, 1)]
    assert [r[0] for r in fetch(store, "SELECT decision_key FROM previews")] == ["0002"]


def test_schema_newer_than_known_is_refused(db_url):
    LogStore.open(db_url).close()
    engine = sa.create_engine(db_url)
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE alembic_version SET version_num = '9999_future'"))
    engine.dispose()
    with pytest.raises(schema.SchemaTooNewError, match="9999_future"):
        LogStore.open(db_url)


def test_reopen_keeps_rows_and_schema_at_head(db_url):
    with LogStore.open(db_url) as log:
        log.record_instance(make_entry(1))
    with LogStore.open(db_url) as log:
        assert log.revision == schema.head_revision()
        assert fetch(log, "SELECT count(*) FROM instances")[0][0] == 1


def test_worker_threads_write_concurrently(store):
    ids: list[int] = []
    errors: list[BaseException] = []

    def worker(offset: int) -> None:
        try:
            for n in range(offset, offset + 25):
                ids.append(store.record_instance(make_entry(n)))
                store.record_forward(ids[-1], make_entry(n).sop_instance_uid, "PACS", "sent", 0,
                                     None, 1, datetime.now(timezone.utc))
        except BaseException as exc:  # surfaced below: a thread's exception is otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k * 100,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(set(ids)) == 100
    assert fetch(store, "SELECT count(*) FROM forward_attempts")[0][0] == 100


def write_as_node(url: str, node: str, count: int, barrier) -> None:
    """One node: its own process, its own LogStore, opened at the same moment as the other."""
    barrier.wait()
    with LogStore.open(url) as log:
        for n in range(count):
            entry = make_entry(n, calling_ae=node, sop_instance_uid=f"2.25.{ord(node[-1])}.{n}")
            instance_id = log.record_instance(entry)
            log.record_forward(instance_id, entry.sop_instance_uid, "PACS", "sent", 0, None, 1,
                               datetime.now(timezone.utc))


def test_two_nodes_in_separate_processes_keep_a_complete_log(db_url):
    count = 150
    context = multiprocessing.get_context("spawn")  # a fresh interpreter, as a second node would be
    barrier = context.Barrier(2)
    nodes = [
        context.Process(target=write_as_node, args=(db_url, name, count, barrier))
        for name in ("NODE_A", "NODE_B")
    ]
    for process in nodes:
        process.start()
    for process in nodes:
        process.join(timeout=300)
    assert [process.exitcode for process in nodes] == [0, 0]
    with LogStore.open(db_url) as log:
        per_node = dict(
            fetch(log, "SELECT calling_ae, count(DISTINCT sop_instance_uid) FROM instances "
                       "GROUP BY calling_ae")
        )
        assert per_node == {"NODE_A": count, "NODE_B": count}
        assert fetch(log, "SELECT count(*) FROM instances")[0][0] == 2 * count
        # every delivery points at the row of its own instance
        mismatched = fetch(
            log,
            "SELECT count(*) FROM forward_attempts f JOIN instances i ON i.id = f.instance_id "
            "WHERE i.sop_instance_uid <> f.sop_instance_uid",
        )[0][0]
        assert mismatched == 0
        assert fetch(log, "SELECT count(*) FROM forward_attempts")[0][0] == 2 * count
        assert fetch(log, "SELECT count(*) FROM model_versions")[0][0] == 1


def test_retention_worker_purges_on_start_and_records_it(store):
    from dicomnode.config_file import parse_config
    from dicomnode.logdb.retention import start_retention

    now = datetime.now(timezone.utc)
    store.record_instance(make_entry(1, received_at=now - timedelta(days=100)))
    store.record_instance(make_entry(2, received_at=now))
    assert start_retention(store, parse_config("log: {}\n").log) is None
    worker = start_retention(store, parse_config("log:\n  retention_days: 90\n").log)
    try:
        for _ in range(200):  # the first purge runs at start; wait for it without a fixed sleep
            if worker.purges:
                break
            threading.Event().wait(0.05)
    finally:
        worker.stop()
    assert worker.purges >= 1
    assert fetch(store, "SELECT count(*) FROM instances")[0][0] == 1
    assert fetch(store, "SELECT requested_by, instances_deleted FROM purges")[0] == ("retention", 1)


def test_migrations_downgrade_to_empty_and_upgrade_again(db_url):
    from alembic import command

    with LogStore.open(db_url) as log:
        log.record_instance(make_entry(1))
        config = schema.alembic_config()
        with log.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.downgrade(config, "base")
        assert "instances" not in sa.inspect(log.engine).get_table_names()
    with LogStore.open(db_url) as log:
        assert log.revision == schema.head_revision()
        assert {"instances", "forward_attempts", "model_versions", "purges"} <= set(
            sa.inspect(log.engine).get_table_names()
        )


def test_readers_open_without_creating_or_migrating(db_url, tmp_path):
    missing = tmp_path / "absent" / "log.db"
    with pytest.raises(FileNotFoundError, match="no log database"):
        LogStore.open(f"sqlite:///{missing}", upgrade=False)
    assert not missing.exists() and not missing.parent.exists()
    if db_url.startswith("postgresql"):  # an empty database has no schema to read
        with pytest.raises(schema.SchemaNotCurrentError, match="no dicomnode log schema"):
            LogStore.open(db_url, upgrade=False)
    LogStore.open(db_url).close()
    with LogStore.open(db_url, upgrade=False) as reader:
        assert reader.revision == schema.head_revision()
    from alembic import command

    engine = sa.create_engine(normalise_url(db_url))
    config = schema.alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "base")
    engine.dispose()
    with pytest.raises(schema.SchemaNotCurrentError, match="Start the node"):
        LogStore.open(db_url, upgrade=False)


def test_journal_writes_auditor_fields_and_preview_once_on_each_backend(store, tmp_path):
    """A journaled decision with AccessionNumber, BodyPartExamined and a preview PNG reaches
    the log (PostgreSQL bytea as SQLite BLOB), and a replay of its file writes neither twice."""
    import shutil

    from dicomnode.log_journal import LogJournal

    folder, tmp, saved = tmp_path / "journal", tmp_path / "tmp", tmp_path / "saved"
    tmp.mkdir()
    saved.mkdir()
    png = bytes(range(256)) * 40  # any bytes, NULs included
    entry = make_entry(1, decision_key="00000000000000000007-000007",
                       accession_number="ACC-0007", body_part_examined="HAND")
    journal = LogJournal(store, folder, tmp)
    journal.record_instance(entry, preview=png)
    journal.record_instance(make_entry(2, decision_key="00000000000000000008-000008"))
    for path in journal.pending():
        shutil.copy(path, saved / path.name)
    journal.start().stop()
    for path in saved.iterdir():  # a crash after the insert, before the files went
        shutil.copy(path, folder / path.name)
    LogJournal(store, folder, tmp).start().stop()
    rows = fetch(store, "SELECT decision_key, accession_number, body_part_examined "
                        "FROM instances ORDER BY id")
    assert [tuple(r) for r in rows] == [("00000000000000000007-000007", "ACC-0007", "HAND"),
                                        ("00000000000000000008-000008", None, None)]
    assert fetch(store, "SELECT count(*) FROM previews")[0][0] == 1
    assert store.preview(entry.decision_key) == png
    assert store.preview("00000000000000000008-000008") is None
