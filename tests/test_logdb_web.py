"""The auditor's browser view: served over loopback, driven in headless Debian Chromium."""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from email.message import Message

import itsdangerous
import pytest
from playwright.sync_api import sync_playwright

from dicomnode.logdb.store import LogStore
from dicomnode.web.server import start_web
from dicomnode.web.sessions import SESSION_S
from dicomnode.web.settings import WebConfigError
from tests.browser import CHROMIUM, CHROMIUM_ARGS
from tests.logdb_helpers import STUDY_A, populate

pytest_plugins = ["tests.fixtures_postgres"]

TOKEN = "auditor-token-0123456789"
SECRET = "session-secret-for-tests-0123456789abcdef"


@pytest.fixture
def populated_store(db_url):
    store = LogStore.open(db_url)
    try:
        populate(store)
        yield store
    finally:
        store.close()


@pytest.fixture
def view(populated_store):
    server = start_web(populated_store, host="127.0.0.1", port=0)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def token_view(populated_store):
    server = start_web(populated_store, host="127.0.0.1", port=0, token=TOKEN,
                       session_secret=SECRET)
    try:
        yield server
    finally:
        server.stop()


def fetch(url: str, headers: dict[str, str] | None = None,
          method: str = "GET") -> tuple[int, str, Message]:
    """(status, body, headers); the headers look up names case-insensitively."""
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode(), response.headers
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(), error.headers


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_browser_search_open_study_and_summary(view, tmp_path):
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page()
            page.goto(view.url)
            assert "6 matching instances" in page.inner_text("#count")

            page.fill("input[name=study]", STUDY_A)
            page.select_option("select[name=delivery]", "failed")
            page.click("#search")
            page.wait_for_url("**/?*study=*")
            assert "1 matching instances" in page.inner_text("#count")
            rows = page.locator("#results tr")
            assert rows.count() == 2  # header + a3
            assert "disagrees" in rows.nth(1).inner_text()

            page.click(f"#results a[href*='{STUDY_A}']")
            page.wait_for_url(f"**/study/{STUDY_A}")
            assert page.inner_text("#study-uid") == STUDY_A
            instances = page.locator("section.instance")
            assert instances.count() == 3
            a3 = instances.nth(2)
            assert "disagrees" in a3.inner_text()
            assert "LL" in a3.locator("table.coercion").inner_text()
            deliveries = a3.locator("table.deliveries").inner_text()
            assert "failed" in deliveries and "retry" in deliveries and "0xA700" in deliveries
            shot = tmp_path / "study.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000

            page.click("nav a[href='/summary']")
            assert "Last 30 days" in page.inner_text("#window")
            page.fill("input[name=since]", "2026-11-01")
            page.click("#summarise")
            page.wait_for_url("**/summary?*since=2026-11-01*")
            assert "6 instances" in page.inner_text("#totals")
            assert page.inner_text("#disagreement") == "66.7%"
            assert page.locator("svg[role=img]").count() >= 6
            assert "PACS" in page.inner_text("#delivery")
            page.screenshot(path=str(tmp_path / "summary.png"), full_page=True)
        finally:
            browser.close()


def test_pages_over_http_on_both_backends(view):
    status, body, headers = fetch(view.url + "?calling_ae=CR_ROOM2")
    assert status == 200 and "2 matching instances" in body
    csp = headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "script-src 'none'" in csp and "unsafe" not in csp
    status, body, _ = fetch(view.url + "summary?day=2026-11-20")
    assert status == 200 and "3 instances" in body
    status, body, _ = fetch(view.url + f"study/{STUDY_A}")
    assert status == 200 and body.count('class="instance"') == 3
    assert fetch(view.url + "study/9.9.9")[0] == 404
    status, body, _ = fetch(view.url + "?since=yesterday")
    assert status == 200 and "since: &#39;yesterday&#39; is not an ISO date" in body


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_view_is_read_only(view):
    for method in ("POST", "PUT", "DELETE"):
        assert fetch(view.url, method=method)[0] == 405


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_tokenless_view_refuses_foreign_host_headers(view):
    # a DNS-rebinding page reaches 127.0.0.1 under its own name
    assert fetch(view.url, {"Host": f"evil.example:{view.port}"})[0] == 403
    assert fetch(view.url, {"Host": f"localhost:{view.port}"})[0] == 200


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_token_is_required_when_configured(token_view):
    assert fetch(token_view.url)[0] == 401
    assert fetch(token_view.url, {"Authorization": "Bearer wrong-token-xxxxxxxx"})[0] == 401
    status, body, _ = fetch(token_view.url, {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and "6 matching instances" in body
    status, _, headers = fetch(token_view.url + f"?token={TOKEN}")
    set_cookie = headers["Set-Cookie"]
    assert status == 200 and "httponly" in set_cookie.lower()
    assert "samesite=strict" in set_cookie.lower() and f"Max-Age={SESSION_S}" in set_cookie
    cookie = set_cookie.split(";")[0]
    assert fetch(token_view.url + "summary", {"Cookie": cookie})[0] == 200
    name, value = cookie.split("=", 1)
    payload, issued, signature = value.split(".")
    assert TOKEN not in set_cookie and TOKEN not in base64.b64decode(payload).decode()
    # a signed session value: another payload under the same signature is refused
    forged = base64.b64encode(json.dumps({"reader": "x" * 24}).encode()).decode()
    assert fetch(token_view.url, {"Cookie": f"{name}={forged}.{issued}.{signature}"})[0] == 401
    assert fetch(token_view.url, {"Cookie": f"{name}={TOKEN}"})[0] == 401  # the token itself
    # signed with another secret, or signed with ours but older than a working day: refused
    session = base64.b64decode(payload)

    class Stale(itsdangerous.TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time() - SESSION_S - 60)

    other = itsdangerous.TimestampSigner("another-secret-0123456789abcdef").sign(
        base64.b64encode(session)).decode()
    assert fetch(token_view.url, {"Cookie": f"{name}={other}"})[0] == 401
    stale = Stale(SECRET).sign(base64.b64encode(session)).decode()
    assert fetch(token_view.url, {"Cookie": f"{name}={stale}"})[0] == 401
    fresh = itsdangerous.TimestampSigner(SECRET).sign(base64.b64encode(session)).decode()
    assert fetch(token_view.url, {"Cookie": f"{name}={fresh}"})[0] == 200  # the control


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_short_token_is_refused_on_the_command_line_too(populated_store):
    with pytest.raises(WebConfigError, match="at least 16 characters"):
        start_web(populated_store, token="short")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_public_address_without_token_is_refused(populated_store):
    with pytest.raises(WebConfigError, match="token"):
        start_web(populated_store, host="0.0.0.0", port=0)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_node_config_starts_the_view_only_when_enabled(populated_store):
    from dicomnode.config_file import parse_config
    from dicomnode.web.server import start_web_from_config

    off = parse_config("log:\n  url: sqlite:///x.db\n")
    assert off.web.enabled is False
    assert start_web_from_config(populated_store, off.web, off.log) is None

    on = parse_config("web:\n  enabled: true\n  port: 0\nlog:\n  patient_id: hash\n"
                      "  patient_id_salt: 5f0c9e2a7b3d41e8a6c2\n")  # fmt: skip
    server = start_web_from_config(populated_store, on.web, on.log)
    try:
        assert server.url.startswith("http://127.0.0.1:")
        # the typed patient ID is hashed like the node stores it: plain "PAT-B" matches nothing
        status, body, _ = fetch(server.url + "?patient=PAT-B")
        assert status == 200 and "0 matching instances" in body
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("stop_signal", "sigint_ignored"),
    [("SIGINT", False), ("SIGTERM", False), ("SIGINT", True)],
    ids=["sigint", "sigterm", "sigint-inherited-as-ignored"],
)
def test_dicomnode_log_web_command_serves_until_interrupted(tmp_path, stop_signal, sigint_ignored):
    """Stops cleanly on SIGINT and SIGTERM, also when started from a background shell job, which
    inherits SIGINT ignored (Python then raises no KeyboardInterrupt)."""
    import re
    import signal
    import subprocess
    import sys

    db = tmp_path / "log.db"
    with LogStore.open(str(db)) as store:
        populate(store)

    def ignore_sigint() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    process = subprocess.Popen(
        [sys.executable, "-m", "dicomnode", "log", "web", "--db", str(db), "--port", "0"],
        stderr=subprocess.PIPE, text=True, preexec_fn=ignore_sigint if sigint_ignored else None,
    )  # fmt: skip
    try:
        line = process.stderr.readline()
        match = re.search(r"http://127\.0\.0\.1:\d+/", line)
        assert match, line
        status, body, _ = fetch(match.group(0) + f"study/{STUDY_A}")
        assert status == 200 and body.count('class="instance"') == 3
    finally:
        process.send_signal(getattr(signal, stop_signal))
        try:
            assert process.wait(timeout=30) == 0
        finally:
            if process.poll() is None:  # never leave a server behind, even when the test fails
                process.kill()
                process.wait()
            process.stderr.close()


def test_config_refuses_a_public_web_address_without_token():
    from dicomnode.config import ConfigError
    from dicomnode.config_file import parse_config

    with pytest.raises(ConfigError, match=r"node.yaml:2: web: .*0\.0\.0\.0.*web\.token"):
        parse_config("web:\n  enabled: true\n  host: 0.0.0.0\n", "node.yaml")
    with pytest.raises(ConfigError, match=r"web\.token: .*16 characters"):
        parse_config("web:\n  token: short\n", "node.yaml")
    needs_tls = r"web: .*0\.0\.0\.0.*TLS.*web\.tls_cert and web\.tls_key"
    with pytest.raises(ConfigError, match=needs_tls):
        parse_config(f"web:\n  host: 0.0.0.0\n  token: {TOKEN}\n", "node.yaml")
    public = parse_config(f"web:\n  host: 0.0.0.0\n  token: {TOKEN}\n  tls_cert: /etc/c.pem\n"
                          "  tls_key: /etc/k.pem\n", "node.yaml")
    assert public.web.token == TOKEN
