"""The review loop in the web view: reviewers, verdicts, previews, queue, export, CSRF, TLS.

Real parts only: a real log (SQLite, and PostgreSQL where marked), the real uvicorn server on
127.0.0.1, headless Debian Chromium through Playwright, urllib for plain HTTP.
"""

from __future__ import annotations

import csv
import http.client
import http.cookiejar
import io
import json
import os
import re
import ssl
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from PIL import Image
from playwright.sync_api import sync_playwright
from sqlalchemy import func, insert, select

from dicomnode.logdb import review
from dicomnode.logdb.models import InstanceRow, PreviewRow, VerdictRow
from dicomnode.logdb.query import LogFilter, count_instances
from dicomnode.logdb.store import LogStore
from dicomnode.web.passwords import hash_password, verify_password
from dicomnode.web.server import start_web
from dicomnode.web.settings import WebConfigError
from tests.browser import CHROMIUM, CHROMIUM_ARGS
from tests.logdb_helpers import MODEL_A, MODEL_B, make_entry, populate

pytest_plugins = ["tests.fixtures_postgres"]

TOKEN = "auditor-token-0123456789"
PASSWORD = "correct horse battery"
REVIEWERS = {"ana": hash_password(PASSWORD)}
MANIFEST = json.loads((Path(__file__).parent.parent / "models" / "manifest.json").read_text())
WRITTEN = 60  # written decisions beyond populate()'s: more than a page of 50


def png_224(shade: int) -> bytes:
    image = Image.new("L", (224, 224), shade)
    image.paste(255 - shade, (40, 40, 184, 184))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def insert_decision(store: LogStore, n: int, **fields) -> int:
    """A decision row with the columns the pipeline's new fields fill (written directly)."""
    extra = {k: fields.pop(k) for k in ("accession_number", "body_part_examined") if k in fields}
    values = LogStore._instance_values(make_entry(n, **fields))
    values.update(extra)
    with store.engine.begin() as connection:
        return connection.execute(
            insert(InstanceRow).values(**values).returning(InstanceRow.id)
        ).scalar_one()


def add_preview(store: LogStore, key: str, shade: int) -> None:
    with store.engine.begin() as connection:
        connection.execute(insert(PreviewRow).values(
            decision_key=key, at=datetime(2026, 11, 23), png=png_224(shade)))


def review_log(store: LogStore, spool: Path) -> dict[str, int]:
    """populate()'s six decisions, plus: r1 uncertain CHEST and r2 disagrees HAND (previews; r2
    still in the spool), and WRITTEN written decisions over two regions and two ISO weeks."""
    ids = populate(store)
    store.register_model(MODEL_A, MANIFEST)
    store.register_model(MODEL_B, {"name": "older view model", "version": "v1",
                                   "date": "2026-01-05T00:00:00+00:00"})  # fmt: skip
    day = datetime(2026, 11, 23, 8, tzinfo=timezone.utc)
    spooled = spool / "sent" / "PACS" / "k-r2.dcm"  # forwarded: no longer in processing/
    spooled.parent.mkdir(parents=True)
    spooled.write_bytes(b"\0" * 128 + b"DICM" + b"fake dataset")
    ids["r1"] = insert_decision(store, 100, action="uncertain", label=None, confidence=0.52,
                                received_at=day, decision_key="k-r1",
                                accession_number="ACC-1001", body_part_examined="CHEST",
                                routing={"rules": ["chest-rule"], "destinations": []})
    ids["r2"] = insert_decision(store, 101, action="disagrees", label="LAT", confidence=0.9,
                                received_at=day + timedelta(hours=1), decision_key="k-r2",
                                accession_number="ACC-1002", body_part_examined="HAND",
                                spool_path=str(spool / "processing" / "k-r2.dcm"),
                                view_position_before="AP",
                                routing={"rules": ["hand-rule"], "destinations": ["PACS"]})
    add_preview(store, "k-r1", 60)
    add_preview(store, "k-r2", 120)
    for i in range(WRITTEN):
        ids[f"w{i}"] = insert_decision(
            store, 200 + i, action="written", decision_key=f"k-w{i}",
            received_at=day + timedelta(days=7 * (i % 2), minutes=i),
            accession_number=f"ACC-2{i:03d}", body_part_examined=("SPINE", "KNEE")[i % 2],
            model_sha256=(MODEL_A, MODEL_B)[i % 2])  # fmt: skip
    return ids


@pytest.fixture
def review_store(db_url, tmp_path):
    store = LogStore.open(db_url)
    try:
        ids = review_log(store, tmp_path / "spool")
        yield store, ids
    finally:
        store.close()


@pytest.fixture
def server(review_store, tmp_path):
    store, _ = review_store
    web = start_web(store, host="127.0.0.1", port=0, reviewers=REVIEWERS,
                    spool_root=str(tmp_path / "spool"))
    try:
        yield web
    finally:
        web.stop()


@pytest.fixture
def token_server(review_store, tmp_path):
    store, _ = review_store
    web = start_web(store, host="127.0.0.1", port=0, token=TOKEN, reviewers=REVIEWERS,
                    spool_root=str(tmp_path / "spool"))
    try:
        yield web
    finally:
        web.stop()


def verdict_count(store: LogStore) -> int:
    with store.engine.connect() as connection:
        return connection.execute(select(func.count()).select_from(VerdictRow)).scalar_one()


class Browser:
    """A urllib client with a cookie jar (a browser session without a browser)."""

    def __init__(self, base: str, headers: dict | None = None) -> None:
        self.base = base
        self.headers = headers or {}
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))

    def request(self, path: str, form: dict | None = None):
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        request = urllib.request.Request(self.base + path, data=data, headers=self.headers)
        try:
            with self.opener.open(request, timeout=30) as response:
                return response.status, response.read().decode(errors="replace"), response.headers
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode(), error.headers

    def csrf(self, path: str) -> str:
        status, body, _ = self.request(path)
        assert status == 200, body
        return re.search(r'name="csrf" value="([^"]+)"', body).group(1)

    def login(self) -> None:
        token = self.csrf("login")
        status, body, _ = self.request("login", {"csrf": token, "name": "ana",
                                                 "password": PASSWORD, "next": "/review"})
        assert status == 200 and 'id="reviewer">ana<' in body, body


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_reviewer_session_in_chromium(server, review_store, tmp_path):
    """Log in, open the queue, see the preview, mark a decision wrong with the true view, export
    CSV (all rows, and a filtered search), log out; the search table fits 1366 px."""
    store, ids = review_store
    shots = Path(os.environ.get("DICOMNODE_SCREENSHOTS") or tmp_path)  # to look at them
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            context = browser.new_context(viewport={"width": 1366, "height": 768},
                                          accept_downloads=True)  # fmt: skip
            page = context.new_page()
            page.goto(server.url + "login")
            page.fill("input[name=name]", "ana")
            page.fill("input[name=password]", "wrong password here")
            page.click("#login")
            assert "Wrong name or password" in page.inner_text("#login-error")
            page.fill("input[name=name]", "ana")
            page.fill("input[name=password]", PASSWORD)
            page.click("#login")
            page.wait_for_url("**/review")
            assert page.inner_text("#reviewer") == "ana"

            disagrees = page.inner_text("#queue-disagrees")
            assert "ACC-1002" in disagrees and "HAND" in disagrees
            assert "ACC-1001" in page.inner_text("#queue-uncertain")
            thumb = page.locator("#queue-uncertain img.thumb").first
            thumb.wait_for()
            page.wait_for_function("[...document.images].every(i => i.complete)")
            assert thumb.evaluate("i => i.naturalWidth") == 224

            page.locator("#queue-disagrees tr", has_text="ACC-1002").locator("a.review").click()
            page.wait_for_url(f"**/decision/{ids['r2']}")
            preview = page.locator("img.preview")
            page.wait_for_function("[...document.images].every(i => i.complete)")
            assert preview.evaluate("i => i.naturalWidth") == 224
            assert page.locator("#full-image").count() == 1
            info = page.inner_text("td.model-info")
            assert MANIFEST["name"] in info and MANIFEST["date"] in info
            assert "hand-rule" in page.inner_text("td.routing")
            page.screenshot(path=str(shots / "decision-1366.png"), full_page=True)

            page.check("input[name=verdict][value=wrong]")
            page.select_option("select[name=true_view]", "PA")
            page.fill("input[name=note]", "a PA hand, not lateral")
            page.click("#record-verdict")
            page.wait_for_url(f"**/decision/{ids['r2']}?saved=1")
            history = page.inner_text("table.history")
            assert "wrong" in history and "PA" in history and "ana" in history
            with store.engine.connect() as connection:
                rows = connection.execute(select(VerdictRow)).mappings().all()
            assert [(r["instance_id"], r["reviewer"], r["verdict"], r["true_view"], r["note"])
                    for r in rows] == [(ids["r2"], "ana", "wrong", "PA", "a PA hand, not lateral")]

            page.goto(server.url + "review")
            assert "ACC-1002" not in page.inner_text("#queue-disagrees")  # reviewed: left

            page.goto(server.url)
            total = count_instances(store, LogFilter())
            assert total > 50 and f"{total} matching instances" in page.inner_text("#count")
            width = page.evaluate("document.documentElement.scrollWidth")
            right = page.evaluate("document.querySelector('#results').getBoundingClientRect()"
                                  ".right")  # fmt: skip
            assert width <= 1366 and right <= 1366, (width, right)
            page.screenshot(path=str(shots / "search-1366.png"))
            with page.expect_download() as download:
                page.click("#export-csv")
            every = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
            assert len(every) == total  # all matching rows, not one page

            page.fill("input[name=accession]", "ACC-1002")
            page.click("#search")
            page.wait_for_url("**/?*accession=ACC-1002*")
            assert "1 matching instances" in page.inner_text("#count")
            with page.expect_download() as download:
                page.click("#export-csv")
            (row,) = csv.DictReader(io.StringIO(Path(download.value.path()).read_text()))
            assert (row["accession_number"], row["body_part_examined"], row["verdict"],
                    row["true_view"], row["reviewer"], row["rules"], row["never_delivered"]) == (
                "ACC-1002", "HAND", "wrong", "PA", "ana", "hand-rule", "True")
            assert row["model_name"] == MANIFEST["name"] and row["model_date"] == MANIFEST["date"]

            page.click("#logout")
            page.wait_for_url("**/login")
            page.goto(server.url + f"decision/{ids['r2']}")
            assert page.locator("form.verdict").count() == 0  # read-only again
            assert "reviewer login" in page.inner_text("nav")
        finally:
            browser.close()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_read_only_users_cannot_post(token_server, server, review_store):
    store, ids = review_store
    path = f"decision/{ids['r2']}/verdict"
    form = {"verdict": "wrong", "true_view": "PA", "csrf": "x"}
    bearer = Browser(token_server.url, {"Authorization": f"Bearer {TOKEN}"})
    assert bearer.request(f"decision/{ids['r2']}")[0] == 200  # reads
    assert bearer.request(path, form)[0] == 403
    session = Browser(token_server.url)  # the ?token= session of a browser
    assert session.request(f"?token={TOKEN}")[0] == 200
    assert session.request(path, form)[0] == 403
    assert Browser(token_server.url).request(path, form)[0] == 401  # nobody at all
    anonymous = Browser(server.url)  # loopback without a token: read-only
    assert anonymous.request(f"decision/{ids['r2']}")[0] == 200
    status, body, _ = anonymous.request(path, form)
    assert status == 403 and "only reviewers" in body
    assert verdict_count(store) == 0


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_forged_csrf_token_is_refused_and_nothing_is_written(token_server, review_store):
    store, ids = review_store
    client = Browser(token_server.url)
    token = client.csrf("login")
    forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    login = {"name": "ana", "password": PASSWORD}
    assert client.request("login", {**login, "csrf": forged})[0] == 403
    assert client.request("login", login)[0] == 403  # missing
    client.login()
    token = client.csrf(f"decision/{ids['r1']}")
    path = f"decision/{ids['r1']}/verdict"
    verdict = {"verdict": "right", "true_view": "AP"}
    assert client.request(path, {**verdict, "csrf": forged})[0] == 403
    assert client.request(path, verdict)[0] == 403
    other = Browser(token_server.url)  # another reviewer session's token is no good here
    other.login()
    assert client.request(path, {**verdict, "csrf": other.csrf("review")})[0] == 403
    assert verdict_count(store) == 0
    status, body, _ = client.request(path, {**verdict, "csrf": token})  # the control
    assert status == 200 and 'id="saved"' in body and verdict_count(store) == 1
    assert client.request("logout", {"csrf": forged})[0] == 403


def test_verdicts_are_append_only_and_summarised_on_both_backends(server, review_store):
    store, ids = review_store
    client = Browser(server.url)
    client.login()
    decision = f"decision/{ids['w0']}"
    for verdict, view in (("right", "AP"), ("wrong", "LAT")):
        status, _, _ = client.request(decision + "/verdict", {"verdict": verdict,
                                      "true_view": view, "csrf": client.csrf(decision)})
        assert status == 200
    store.record_verdict(ids["w1"], "bo", "wrong", "OTHER", "oblique")
    store.record_verdict(ids["a1"], "bo", "right", "AP")
    with pytest.raises(ValueError, match="true view"):
        store.record_verdict(ids["a1"], "bo", "right", "SIDEWAYS")
    with pytest.raises(LookupError):
        store.record_verdict(10**9, "bo", "right", "AP")
    history = review.verdict_history(store, ids["w0"])
    assert [(v["reviewer"], v["verdict"], v["true_view"]) for v in history] == [
        ("ana", "right", "AP"), ("ana", "wrong", "LAT")]  # the first is kept, not edited
    assert verdict_count(store) == 4
    _, body, _ = client.request(decision)
    assert body.count('class="verdict right"') == 1 and body.count('class="verdict wrong"') == 2

    summary = review.review_summary(store)
    # newest verdicts: w0 wrong (written, SPINE, model A, week 48), w1 wrong (written, KNEE,
    # model B, week 49), a1 right (written, no region, model A, week 47)
    assert summary["total"]["reviewed"] == 3 and summary["total"]["right"] == 1
    assert summary["total"]["wrong_write_rate"] == pytest.approx(2 / 3)
    assert summary["model"][MODEL_A]["accuracy"] == 0.5
    assert summary["model"][MODEL_B]["wrong_write_rate"] == 1.0
    assert summary["region"]["SPINE"]["wrong_writes"] == 1
    assert summary["region"][""]["accuracy"] == 1.0
    assert set(summary["week"]) == {"2026-W47", "2026-W48", "2026-W49"}
    status, body, _ = client.request("review/summary")
    assert status == 200 and '<b id="accuracy">33.3%</b>' in body
    assert '<b id="wrong-write-rate">66.7%</b>' in body and "2026-W49" in body

    queue = review.review_queue(store, seed=3, sample_percent=100)
    assert ids["w0"] not in {r["id"] for r in queue["written"]}
    assert len(queue["written"]) == WRITTEN - 2  # a1, w0, w1 reviewed; 61 written in all
    first = [r["id"] for r in review.review_queue(store, seed=3, sample_percent=20)["written"]]
    again = [r["id"] for r in review.review_queue(store, seed=3, sample_percent=20)["written"]]
    assert first == again and 0 < len(first) < WRITTEN - 2  # a stable, partial sample
    assert review.review_queue(store, sample_percent=0)["written"] == []


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_security_headers_on_every_response(token_server, review_store):
    _, ids = review_store
    bearer = Browser(token_server.url, {"Authorization": f"Bearer {TOKEN}"})
    responses = {
        "search": bearer.request(""), "study": bearer.request(f"decision/{ids['r2']}"),
        "preview": bearer.request("preview/k-r2"),
        "export": bearer.request("export.jsonl"), "missing": bearer.request("study/9.9"),
        "unauthorised": Browser(token_server.url).request(""),
        "login": Browser(token_server.url).request("login"),
        "forbidden": bearer.request(f"decision/{ids['r2']}/verdict", {"csrf": "x"}),
    }  # fmt: skip
    assert [r[0] for r in responses.values()] == [200, 200, 200, 200, 404, 401, 200, 403]
    for name, (_, _, headers) in responses.items():
        csp = headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "script-src 'none'" in csp, name
        assert "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp, name
        assert headers["X-Content-Type-Options"] == "nosniff", name
        assert headers["X-Frame-Options"] == "DENY", name
        assert headers["Referrer-Policy"] == "no-referrer", name
        assert headers["Cache-Control"] == "no-store", name
        assert headers["Server"] is None, name
    _, body, _ = responses["search"]
    assert "<script" not in body and " style=" not in body


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_previews_only_to_authenticated_users(token_server):
    status, _, _ = Browser(token_server.url).request("preview/k-r2")
    assert status == 401
    request = urllib.request.Request(token_server.url + "preview/k-r2",
                                     headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.headers["Content-Type"] == "image/png"
        image = Image.open(io.BytesIO(response.read()))
    assert image.size == (224, 224)
    assert Browser(token_server.url, {"Authorization": f"Bearer {TOKEN}"}).request(
        "preview/no-such-key")[0] == 404


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_full_image_only_while_the_spool_holds_it(token_server, review_store, tmp_path):
    _, ids = review_store
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    request = urllib.request.Request(token_server.url + f"decision/{ids['r2']}/image",
                                     headers=bearer)
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.headers["Content-Type"] == "application/dicom"
        assert response.read()[128:132] == b"DICM"
    (tmp_path / "spool" / "sent" / "PACS" / "k-r2.dcm").unlink()
    client = Browser(token_server.url, bearer)
    assert client.request(f"decision/{ids['r2']}/image")[0] == 404
    _, body, _ = client.request(f"decision/{ids['r2']}")
    assert 'id="full-image"' not in body and "no longer holds" in body
    assert Browser(token_server.url).request(f"decision/{ids['r2']}/image")[0] == 401


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_exposure_beyond_loopback_needs_auth_and_tls(review_store, tmp_path):
    from dicomnode.config import ConfigError
    from dicomnode.config_file import parse_config

    store, _ = review_store
    with pytest.raises(WebConfigError, match=r"web\.tls_cert and web\.tls_key"):
        start_web(store, host="0.0.0.0", port=0, token=TOKEN)
    with pytest.raises(WebConfigError, match=r"web\.token .*or web\.reviewers"):
        start_web(store, host="0.0.0.0", port=0, tls_cert="c.pem", tls_key="k.pem")
    with pytest.raises(WebConfigError, match="go together"):
        start_web(store, port=0, tls_cert="c.pem")
    with pytest.raises(WebConfigError, match="cannot load"):
        start_web(store, port=0, tls_cert=str(tmp_path / "none.pem"),
                  tls_key=str(tmp_path / "none.key"))
    text = (f"web:\n  host: 10.1.2.3\n  reviewers:\n    - name: ana\n"
            f"      password_hash: \"{REVIEWERS['ana']}\"\n")  # fmt: skip
    with pytest.raises(ConfigError, match=r"web: .*10\.1\.2\.3.*TLS.*web\.tls_cert"):
        parse_config(text, "node.yaml")
    ok = parse_config(text + "  tls_cert: /c.pem\n  tls_key: /k.pem\n", "node.yaml")
    assert ok.web.reviewers[0].name == "ana"
    with pytest.raises(ConfigError, match="scrypt"):
        parse_config("web:\n  reviewers:\n    - {name: bo, password_hash: plain}\n")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_https_with_a_self_signed_certificate(review_store, tmp_path):
    store, _ = review_store
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)  # fmt: skip
    web = start_web(store, host="127.0.0.1", port=0, reviewers=REVIEWERS, tls_cert=str(cert),
                    tls_key=str(key))  # fmt: skip
    try:
        assert web.url.startswith("https://127.0.0.1:")
        context = ssl.create_default_context(cafile=str(cert))
        with urllib.request.urlopen(web.url + "login", context=context, timeout=30) as response:
            assert response.status == 200 and b'name="csrf"' in response.read()
            assert "secure" in response.headers["Set-Cookie"].lower()
            assert response.headers["Strict-Transport-Security"].startswith("max-age=")
        with pytest.raises(urllib.error.URLError):  # unverified: refused by the client
            urllib.request.urlopen(web.url, timeout=30)
        plain = web.url.replace("https://", "http://")
        with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
            urllib.request.urlopen(plain, timeout=30).read()
    finally:
        web.stop()


def test_hash_password_command():
    result = subprocess.run([sys.executable, "-m", "dicomnode", "web", "hash-password"],
                            input=PASSWORD + "\n", capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    stored = result.stdout.strip()
    assert stored.startswith("scrypt$") and PASSWORD not in stored
    assert verify_password(PASSWORD, stored) and not verify_password(PASSWORD + "x", stored)
    assert stored != hash_password(PASSWORD)  # a random salt each time
    short = subprocess.run([sys.executable, "-m", "dicomnode", "web", "hash-password"],
                           input="short\n", capture_output=True, text=True, timeout=60)
    assert short.returncode == 2 and "at least" in short.stderr
