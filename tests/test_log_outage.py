"""The audit log is never silently incomplete: a PostgreSQL outage mid-stream (a real server the
test stops and starts) leaves every decision and delivery attempt in the database exactly once
afterwards, with one line when it starts and one when it ends; a replay after a crash writes
nothing twice."""

from __future__ import annotations

import logging
import shutil
import time
from datetime import datetime, timezone

import pytest
import sqlalchemy as sa

from dicomnode.log_journal import LogJournal
from dicomnode.logdb.entry import InstanceLogEntry
from dicomnode.logdb.store import LogStore
from tests.fixtures_postgres import running_postgres
from tests.node_helpers import send_files
from tests.shared_data import SHARED
from tests.store_forward_helpers import make_images, uid_of

pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared data not at {SHARED}")

NO_CLASSIFY = {"classify": {"modalities": []}}


def rows(url: str) -> tuple[list, list]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            instances = connection.execute(sa.text(
                "SELECT id, sop_instance_uid, decision_key, accession_number, body_part_examined"
                " FROM instances ORDER BY id")).all()
            attempts = connection.execute(sa.text(
                "SELECT instance_id, sop_instance_uid, outcome FROM forward_attempts")).all()
    finally:
        engine.dispose()
    return instances, attempts


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_postgresql_outage_mid_stream_leaves_every_decision_exactly_once(start_node, tmp_path,
                                                                         caplog):
    outbox = {"name": "outbox", "type": "folder", "path": str(tmp_path / "outbox")}
    images = make_images(tmp_path / "images", 50)
    uids = [uid_of(p) for p in images]
    with running_postgres("-c fsync=off") as server:
        url = server.url(server.create_database())
        with caplog.at_level(logging.INFO):
            node = start_node([outbox], log={"url": url}, **NO_CLASSIFY)
            assert send_files(node.port, *images[:20]) == [0] * 20
            assert node.wait_idle(60)
            assert len(rows(url)[0]) == 20
            server.stop()  # the outage: mid-stream, between two associations
            assert send_files(node.port, *images[20:]) == [0] * 30  # still acknowledged
            assert node.wait_idle(60)  # ... and delivered
            assert len(list((tmp_path / "outbox").glob("*.dcm"))) == 50
            journal = node.journal
            # 30 decisions, 30 delivery attempts, and the association that brought them
            assert len(journal.pending()) == 61
            assert node.metrics.log_database_up._value.get() == 0
            server.start()
            wait_until(lambda: not journal.pending(), 60, "the journal was never written")
            assert node.metrics.log_database_up._value.get() == 1
            associations = node.log_store.associations()
        instances, attempts = rows(url)
    assert [a.outcome for a in associations] == ["accepted", "accepted"]
    assert [r.sop_instance_uid for r in instances] == uids  # in order, each once
    assert len({r.decision_key for r in instances}) == 50
    # the auditor's fields travel through the journal too (the small CR: accession 2, CSPINE)
    assert {(r.accession_number, r.body_part_examined) for r in instances} == {("2", "CSPINE")}
    assert sorted(a.sop_instance_uid for a in attempts) == sorted(uids)
    by_uid = {r.sop_instance_uid: r.id for r in instances}
    assert all(a.instance_id == by_uid[a.sop_instance_uid] and a.outcome == "sent"
               for a in attempts)  # every attempt linked to its decision
    ours = [r for r in caplog.records if r.name.startswith("dicomnode")]
    down = [r for r in ours if "log database unavailable" in r.getMessage()]
    back = [r for r in ours if "log database answers again" in r.getMessage()]
    assert len(down) == 1 and down[0].levelno == logging.ERROR
    assert len(back) == 1 and "61 journaled events written" in back[0].getMessage()
    assert not [r for r in ours if r.exc_info], "a traceback reached the service log"


def test_a_replay_after_a_crash_writes_nothing_twice(tmp_path):
    store = LogStore.open(f"sqlite:///{tmp_path / 'log.sqlite3'}")
    folder, tmp, saved = tmp_path / "journal", tmp_path / "tmp", tmp_path / "saved"
    tmp.mkdir()
    saved.mkdir()
    journal = LogJournal(store, folder, tmp)
    journal._outage_since = time.monotonic()  # as during an outage: events stay journaled
    entry = InstanceLogEntry(
        received_at=datetime.now(timezone.utc), calling_ae="MODALITY", called_ae="DICOMNODE",
        peer_address="127.0.0.1:1", sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
        sop_instance_uid="1.2.3.4", study_instance_uid=None, series_instance_uid=None,
        modality="CR", patient_id=None, transfer_syntax_uid=None, action="skipped",
        decision_key="00000000000000000001-000001", accession_number="ACC-1",
        body_part_examined="KNEE")  # fmt: skip
    png = b"\x89PNG\r\n\x1a\n a preview"
    assert journal.record_instance(entry, preview=png) is None
    journal.record_forward(None, "1.2.3.4", "pacs", "sent", 0, "success", 1,
                           datetime.now(timezone.utc), decision_key=entry.decision_key)
    files = journal.pending()
    assert len(files) == 2
    for path in files:
        shutil.copy(path, saved / path.name)
    journal.start().stop()  # the database answers: both written, files removed
    assert journal.pending() == []
    for path in saved.iterdir():  # a crash after the inserts, before the files went
        shutil.copy(path, folder / path.name)
    LogJournal(store, folder, tmp).start().stop()
    with store.engine.connect() as connection:
        counts = [connection.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar()
                  for table in ("instances", "forward_attempts", "previews")]  # fmt: skip
        linked = connection.execute(sa.text(
            "SELECT count(*) FROM forward_attempts WHERE instance_id IS NOT NULL")).scalar()
        fields = connection.execute(sa.text(
            "SELECT accession_number, body_part_examined FROM instances")).one()
    assert counts == [1, 1, 1] and linked == 1
    assert tuple(fields) == ("ACC-1", "KNEE")
    assert store.preview(entry.decision_key) == png
    assert list(folder.glob("*.json")) == []
    store.close()


def test_an_event_the_database_refuses_is_kept_and_the_rest_of_its_batch_written(tmp_path):
    store = LogStore.open(f"sqlite:///{tmp_path / 'log.sqlite3'}")
    folder, tmp = tmp_path / "journal", tmp_path / "tmp"
    tmp.mkdir()
    journal = LogJournal(store, folder, tmp)  # not started: the three wait for one batch

    def entry(n: int, action: str) -> InstanceLogEntry:
        return InstanceLogEntry(
            received_at=datetime.now(timezone.utc), calling_ae="MODALITY", called_ae="DICOMNODE",
            peer_address="127.0.0.1:1", sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
            sop_instance_uid=f"1.2.3.{n}", study_instance_uid=None, series_instance_uid=None,
            modality="CR", patient_id=None, transfer_syntax_uid=None, action=action,
            decision_key=f"0000000000000000000{n}-000001")  # fmt: skip

    for n, action in enumerate(("skipped", "not-an-action", "written")):
        journal.record_instance(entry(n, action))
    journal.record_forward(None, "1.2.3.2", "pacs", "sent", 0, "success", 1,
                           datetime.now(timezone.utc), decision_key=entry(2, "").decision_key)
    assert len(journal.pending()) == 4
    journal.start().stop()
    assert journal.pending() == []
    assert [p.name for p in (folder / "rejected").iterdir()] == [
        "00000000000000000001-000001.decision.json"]
    instances, attempts = rows(store.url)
    assert [r.sop_instance_uid for r in instances] == ["1.2.3.0", "1.2.3.2"]
    assert [(a.instance_id, a.sop_instance_uid) for a in attempts] == [(instances[1].id,
                                                                        "1.2.3.2")]
    store.close()
