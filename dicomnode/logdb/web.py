"""Read-only auditor view of the log in the browser (stdlib HTTP server, server-rendered HTML).

Off by default. Without a token it binds loopback only; with a token it may bind other addresses
and every request must carry the token (Authorization: Bearer, or ?token= once, which sets a
cookie). Only GET/HEAD exist: the view cannot change the log. No scripts, no external assets
(the node has no internet): charts are inline SVG.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from dataclasses import dataclass
from datetime import datetime, time, timedelta, timezone
from html import escape
from http import HTTPStatus
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from time import time as wall_clock
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

from dicomnode.addresses import is_loopback
from dicomnode.logdb.entry import ACTIONS, patient_id_in_configured_form
from dicomnode.logdb.query import (
    DELIVERY_STATUSES,
    LogFilter,
    count_instances,
    find_instances,
    study_detail,
    summarise,
)
from dicomnode.logdb.store import LogStore
from dicomnode.security import MIN_SECRET_LENGTH

PAGE_SIZE = 50
SUMMARY_DEFAULT_DAYS = 30
TOKEN_COOKIE = "dicomnode_session"
SESSION_S = 12 * 3600.0  # a browser session signed in with ?token= lasts a working day
FILTER_FIELDS = (
    # (query parameter, label, input type)
    ("since", "Received from (UTC)", "text"),
    ("until", "Received before (UTC)", "text"),
    ("day", "Day (UTC)", "date"),
    ("study", "Study UID", "text"),
    ("series", "Series UID", "text"),
    ("sop", "SOP Instance UID", "text"),
    ("patient", "Patient ID", "text"),
    ("calling_ae", "Calling AE", "text"),
    ("modality", "Modality", "text"),
    ("label", "Label", "select:AP,LA"),
    ("action", "Action", "select:" + ",".join(ACTIONS)),
    ("min_confidence", "Confidence ≥", "number"),
    ("max_confidence", "Confidence ≤", "number"),
    ("model", "Model sha256 (prefix)", "text"),
    ("delivery", "Delivery", "select:" + ",".join(DELIVERY_STATUSES)),
)
STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
nav a{margin-right:1em} table{border-collapse:collapse;font-size:.85em}
td,th{border:1px solid #ccc;padding:.2em .45em;text-align:left;vertical-align:top}
th{background:#eef} form.filters{display:grid;grid-template-columns:repeat(5,auto);gap:.3em .8em}
form.filters label{font-size:.8em;display:flex;flex-direction:column}
.uid{font-family:monospace;font-size:.9em} .failed{color:#b00} .delivered,.sent{color:#070}
.pending,.retry{color:#a60} .error{color:#b00;font-weight:bold} section{margin:1.5em 0}
"""


class WebConfigError(ValueError):
    """The web view's settings would expose the log (e.g. a public address without a token)."""


class BadRequest(ValueError):
    pass


def parse_time(value: str, name: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"{name}: {value!r} is not an ISO date or date-time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def parse_float(value: str, name: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise BadRequest(f"{name}: {value!r} is not a number") from None


@dataclass
class ViewSettings:
    patient_form: str = "plain"
    patient_salt: str = ""


def filter_from_params(params: dict[str, str], settings: ViewSettings) -> LogFilter:
    def get(name: str) -> str | None:
        value = params.get(name, "").strip()
        return value or None

    since = parse_time(get("since"), "since") if get("since") else None
    until = parse_time(get("until"), "until") if get("until") else None
    if get("day"):
        start = datetime.combine(parse_time(get("day"), "day").date(), time(), timezone.utc)
        since, until = start, start + timedelta(days=1)
    patient = get("patient")
    if patient is not None:
        if settings.patient_form == "omit":
            raise BadRequest("patient IDs are not logged (log.patient_id: omit)")
        patient = patient_id_in_configured_form(
            patient, settings.patient_form, settings.patient_salt
        )
    try:
        return LogFilter(
            since=since, until=until, study_uid=get("study"), series_uid=get("series"),
            sop_uid=get("sop"), patient_id=patient, calling_ae=get("calling_ae"),
            modality=get("modality"), label=get("label"), action=get("action"),
            min_confidence=parse_float(get("min_confidence"), "min_confidence")
            if get("min_confidence") else None,
            max_confidence=parse_float(get("max_confidence"), "max_confidence")
            if get("max_confidence") else None,
            model_sha256=get("model"), delivery=get("delivery"),
        )  # fmt: skip
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


def text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return escape(value.strftime("%Y-%m-%d %H:%M:%S"))
    if isinstance(value, float):
        return f"{value:.3f}"
    return escape(str(value))


def page(title: str, body: str) -> str:
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{escape(title)} · dicomnode log</title><style>{STYLE}</style></head><body>"
        "<nav><a href='/'>Search</a><a href='/summary'>Summary</a></nav>"
        f"<h1>{escape(title)}</h1>{body}</body></html>"
    )


def filter_form(params: dict[str, str]) -> str:
    inputs = []
    for name, label, kind in FILTER_FIELDS:
        value = params.get(name, "")
        if kind.startswith("select:"):
            options = ["<option value=''>any</option>"] + [
                f"<option{' selected' if value == o else ''}>{escape(o)}</option>"
                for o in kind.removeprefix("select:").split(",")
            ]
            control = f"<select name='{name}'>{''.join(options)}</select>"
        else:
            step = " step='0.01' min='0' max='1'" if kind == "number" else ""
            control = f"<input type='{kind}' name='{name}' value='{escape(value)}'{step}>"
        inputs.append(f"<label>{escape(label)}{control}</label>")
    return (
        f"<form class='filters' method='get' action='/'>{''.join(inputs)}"
        "<button type='submit' id='search'>Search</button></form>"
    )


def study_link(uid: str | None) -> str:
    if not uid:
        return ""
    return f"<a class='uid' href='/study/{quote(uid, safe='')}'>{escape(uid)}</a>"


def search_page(store: LogStore, params: dict[str, str], settings: ViewSettings) -> str:
    body = filter_form(params)
    try:
        log_filter = filter_from_params(params, settings)
        page_number = max(1, int(params.get("page", "1") or 1))
    except (BadRequest, ValueError) as exc:
        return page("Search the log", body + f"<p class='error'>{escape(str(exc))}</p>")
    total = count_instances(store, log_filter)
    rows = find_instances(store, log_filter, limit=PAGE_SIZE, offset=(page_number - 1) * PAGE_SIZE)
    header = (
        "<tr><th>Received (UTC)</th><th>Calling AE</th><th>Mod</th><th>Patient</th>"
        "<th>Study</th><th>SOP Instance</th><th>Action</th><th>Label</th><th>Conf.</th>"
        "<th>VP before → after</th><th>Model</th><th>Delivery</th></tr>"
    )
    lines = [
        f"<tr><td>{text(r['received_at'])}</td><td>{text(r['calling_ae'])}</td>"
        f"<td>{text(r['modality'])}</td><td>{text(r['patient_id'])}</td>"
        f"<td>{study_link(r['study_instance_uid'])}</td>"
        f"<td class='uid'>{text(r['sop_instance_uid'])}</td><td>{text(r['action'])}</td>"
        f"<td>{text(r['label'])}</td><td>{text(r['confidence'])}</td>"
        f"<td>{text(r['view_position_before']) or '—'} → {text(r['view_position_after']) or '—'}"
        f"</td><td class='uid'>{text((r['model_sha256'] or '')[:12])}</td>"
        f"<td class='{r['delivery']}'>{r['delivery']}</td></tr>"
        for r in rows
    ]
    pages = max(1, -(-total // PAGE_SIZE))
    kept = {k: v for k, v in params.items() if v and k != "page"}
    pager = []
    if page_number > 1:
        pager.append(f"<a rel='prev' href='/?{urlencode({**kept, 'page': page_number - 1})}'>"
                     "‹ previous</a>")  # fmt: skip
    if page_number < pages:
        pager.append(f"<a rel='next' href='/?{urlencode({**kept, 'page': page_number + 1})}'>"
                     "next ›</a>")  # fmt: skip
    first = (page_number - 1) * PAGE_SIZE + 1 if rows else 0
    last = first + len(rows) - 1 if rows else 0
    body += (
        f"<p id='count'>{total} matching instances; showing {first}–{last}"
        f" (page {page_number} of {pages}) {' '.join(pager)}</p>"
        f"<table id='results'>{header}{''.join(lines)}</table>"
    )
    return page("Search the log", body)


def thresholds_text(thresholds: dict | None) -> str | None:
    if not thresholds:
        return None
    source = thresholds.get("source", "?")
    values = ", ".join(f"{k} {v}" for k, v in thresholds.items() if k != "source")
    return f"{values} ({source})"


def dimse_status(status: int | None) -> str:
    return "" if status is None else f"0x{status:04X}"


def study_page(store: LogStore, study_uid: str) -> tuple[int, str]:
    detail = study_detail(store, study_uid)
    if not detail["instances"]:
        return 404, page("Study not found", f"<p>No instances logged for {text(study_uid)}.</p>")
    blocks = []
    for r in detail["instances"]:
        attempts = "".join(
            f"<tr><td>{text(a['at'])}</td><td>{text(a['destination'])}</td>"
            f"<td class='{escape(a['outcome'])}'>{text(a['outcome'])}</td><td>{text(a['attempt'])}"
            f"</td><td>{dimse_status(a['dimse_status'])}</td>"
            f"<td>{text(a['detail'])}</td></tr>"
            for a in r["attempts"]
        ) or "<tr><td colspan='6'>no delivery attempt recorded</td></tr>"
        missing = (
            "<p class='pending'>Routed but not attempted: "
            f"{text(', '.join(r['not_attempted']))}</p>"
            if r["not_attempted"] else ""
        )  # fmt: skip
        probabilities = " / ".join(
            f"{name} {text(r.get(key))}" for name, key in (
                ("AP", "probability_ap"), ("PA", "probability_pa"), ("LAT", "probability_la"),
                ("OTHER", "probability_other")) if r.get(key) is not None
        ) or "—"  # fmt: skip
        blocks.append(
            f"<section class='instance'><h3 class='uid'>{text(r['sop_instance_uid'])}</h3>"
            "<table><tr><th>Received (UTC)</th><th>Series</th><th>From</th><th>Action</th>"
            "<th>Label</th><th>Confidence</th><th>Probabilities</th><th>Model</th>"
            "<th>Inference ms</th></tr>"
            f"<tr><td>{text(r['received_at'])}</td><td class='uid'>"
            f"{text(r['series_instance_uid'])}</td>"
            f"<td>{text(r['calling_ae'])} ({text(r['peer_address'])})</td>"
            f"<td>{text(r['action'])}</td><td>{text(r['label'])}</td>"
            f"<td>{text(r['confidence'])}</td><td>{probabilities}</td>"
            f"<td class='uid'>{text(r['model_sha256'])}</td><td>{text(r['inference_ms'])}</td>"
            "</tr></table>"
            "<h4>Coercion (ViewPosition 0018,5101)</h4><table class='coercion'>"
            "<tr><th>Before</th><th>After</th><th>Reason</th><th>Thresholds</th><th>Error</th>"
            "</tr>"
            f"<tr><td>{text(r['view_position_before']) or '(absent)'}</td>"
            f"<td>{text(r['view_position_after']) or '(absent)'}</td>"
            f"<td>{text(r.get('decision_reason'))}</td>"
            f"<td>{text(thresholds_text(r.get('thresholds')))}</td>"
            f"<td>{text(r['error'])}</td></tr></table>"
            "<h4>Deliveries</h4><table class='deliveries'><tr><th>At (UTC)</th>"
            "<th>Destination</th><th>Outcome</th><th>Attempt</th><th>DIMSE status</th>"
            f"<th>Detail</th></tr>{attempts}</table>{missing}</section>"
        )
    first = detail["instances"][0]
    body = (
        f"<p>Study <span class='uid' id='study-uid'>{text(study_uid)}</span>, patient "
        f"{text(first['patient_id']) or '(not logged)'}, {len(detail['instances'])} instances."
        f"</p>{''.join(blocks)}"
    )
    return 200, page("Study", body)


def svg_bars(title: str, items: list[tuple[str, float]], value_format: str = "{:g}") -> str:
    """Horizontal bar chart as inline SVG (no scripts, no external assets)."""
    if not items:
        return f"<figure><figcaption>{escape(title)}</figcaption><p>no data</p></figure>"
    peak = max(v for _, v in items) or 1
    row, label_width, bar_width = 18, 200, 320
    height = row * len(items) + 4
    bars = []
    for i, (label, value) in enumerate(items):
        y = i * row + 2
        width = bar_width * value / peak
        bars.append(
            f"<text x='{label_width - 6}' y='{y + 12}' text-anchor='end' font-size='11'>"
            f"{escape(label[:32])}</text>"
            f"<rect x='{label_width}' y='{y}' width='{width:.1f}' height='{row - 4}' "
            "fill='#4a7bd0'>"
            f"<title>{escape(label)}: {escape(value_format.format(value))}</title></rect>"
            f"<text x='{label_width + width + 4:.1f}' y='{y + 12}' font-size='11'>"
            f"{escape(value_format.format(value))}</text>"
        )
    return (
        f"<figure><figcaption>{escape(title)}</figcaption><svg role='img' "
        f"aria-label='{escape(title)}' xmlns='http://www.w3.org/2000/svg' "
        f"width='{label_width + bar_width + 80}' height='{height}'>{''.join(bars)}</svg></figure>"
    )


def percent(rate: float | None) -> str:
    return "n/a" if rate is None else f"{100 * rate:.1f}%"


SUMMARY_FIELDS = ("since", "until", "calling_ae", "modality", "model")


def summary_form(params: dict[str, str]) -> str:
    inputs = "".join(
        f"<label>{escape(label)}<input type='text' name='{name}' "
        f"value='{escape(params.get(name, ''))}'></label>"
        for name, label, _ in FILTER_FIELDS
        if name in SUMMARY_FIELDS
    )
    return (
        f"<form class='filters' method='get' action='/summary'>{inputs}"
        "<button type='submit' id='summarise'>Summarise</button></form>"
    )


def summary_page(store: LogStore, params: dict[str, str], settings: ViewSettings) -> str:
    params = dict(params)
    note = ""
    if not any(params.get(k) for k in ("since", "until", "day")):
        # why: a summary scans every matching row (seconds over millions); default to a window
        start = datetime.now(timezone.utc) - timedelta(days=SUMMARY_DEFAULT_DAYS)
        params["since"] = start.strftime("%Y-%m-%dT%H:%M")
        note = (
            f"<p id='window'>Last {SUMMARY_DEFAULT_DAYS} days; set “Received from” for "
            "another period.</p>"
        )
    body = summary_form(params) + note
    try:
        log_filter = filter_from_params(params, settings)
    except BadRequest as exc:
        return page("Summary", body + f"<p class='error'>{escape(str(exc))}</p>")
    s = summarise(store, log_filter)
    d, u = s["disagreement"], s["uncertain"]
    charts = [
        svg_bars("Instances per day (UTC)", [(k, v) for k, v in s["by_day"].items()]),
        svg_bars("By label", [(k or "(none)", v) for k, v in s["by_label"].items()]),
        svg_bars("By action", [(k, v) for k, v in s["by_action"].items()]),
        svg_bars("By calling AE", [(k, v) for k, v in s["by_calling_ae"].items()]),
        svg_bars("By model", [(k[:12] or "(none)", v) for k, v in s["by_model"].items()]),
        svg_bars(
            "Confidence histogram",
            [(f"{b['low']:.2f}–{b['high']:.2f}", b["count"]) for b in s["confidence_histogram"]
             if b["count"] or b["low"] >= 0.5],
        ),
        svg_bars(
            "Delivery success rate per destination (%)",
            [(k, 100 * (v["success_rate"] or 0)) for k, v in s["delivery_by_destination"].items()],
            "{:.1f}%",
        ),
    ]
    destinations = "".join(
        f"<tr><td>{text(k)}</td><td>{percent(v['success_rate'])}</td><td>{v['delivered']}</td>"
        f"<td>{v['failed']}</td><td>{v['pending']}</td><td>{v['attempts']}</td></tr>"
        for k, v in s["delivery_by_destination"].items()
    )
    models = "".join(
        f"<tr><td class='uid'>{text(m['sha256'])}</td><td>{text(m['first_seen'])}</td>"
        f"<td>{text(m['last_seen'])}</td></tr>"
        for m in s["models"]
    )
    purges = "".join(
        f"<tr><td>{text(p['at'])}</td><td>{p['older_than_days']:g}</td>"
        f"<td>{p['instances_deleted']}</td><td>{p['forward_attempts_deleted']}</td></tr>"
        for p in s["purges"]
    )
    body += (
        f"<p id='totals'>{s['instances']} instances. Disagreement with the modality: "
        f"<b id='disagreement'>{percent(d['rate'])}</b> ({d['count']} of {d['compared']}). "
        f"Uncertain: <b id='uncertain'>{percent(u['rate'])}</b> ({u['count']} of "
        f"{u['classified']}).</p>{''.join(charts)}"
        "<section><h2>Delivery per destination</h2><table id='delivery'><tr><th>Destination</th>"
        "<th>Success</th><th>Delivered</th><th>Failed</th><th>Pending</th><th>Attempts</th></tr>"
        f"{destinations}</table></section><section><h2>Model versions</h2><table><tr>"
        f"<th>sha256</th><th>First seen</th><th>Last seen</th></tr>{models}</table></section>"
        "<section><h2>Purges</h2><table><tr><th>At</th><th>Older than (days)</th>"
        f"<th>Instances</th><th>Attempts</th></tr>{purges}</table></section>"
    )
    return page("Summary", body)


def new_session(token: str, now: float | None = None) -> str:
    """A signed session value for the cookie: issue time and an HMAC of it keyed by the token.
    The token cannot be read back from it, and it expires (SESSION_S)."""
    issued = str(int(wall_clock() if now is None else now))
    mac = hmac.new(token.encode(), f"dicomnode-web-session:{issued}".encode(), hashlib.sha256)
    return f"{issued}.{mac.hexdigest()}"


def session_valid(token: str, value: str, now: float | None = None) -> bool:
    issued, _, _mac = value.partition(".")
    if not issued.isdigit():
        return False
    age = (wall_clock() if now is None else now) - int(issued)
    expected = new_session(token, int(issued))
    return 0 <= age <= SESSION_S and hmac.compare_digest(expected.encode(), value.encode())


def make_handler(store: LogStore, token: str | None, settings: ViewSettings):
    class AuditorHandler(BaseHTTPRequestHandler):
        server_version = "dicomnode-log"
        sys_version = ""

        def log_message(self, format: str, *args: Any) -> None:
            # why: request lines carry UIDs and patient IDs; keep them out of the node's logs
            return

        def loopback_host_header(self) -> bool:
            host = self.headers.get("Host", "")
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            return is_loopback(name.strip("[]"))

        def authorised(self, query: dict[str, str]) -> tuple[bool, bool]:
            """(allowed, set_cookie)"""
            if token is None:
                return True, False
            offered = []
            header = self.headers.get("Authorization", "")
            if header.startswith("Bearer "):
                offered.append(header.removeprefix("Bearer ").strip())
            from_query = query.get("token")
            if from_query:
                offered.append(from_query)
            ok = any(hmac.compare_digest(o.encode(), token.encode()) for o in offered)
            if not ok:  # a session cookie from an earlier ?token=, never the token itself
                cookie = SimpleCookie(self.headers.get("Cookie", ""))
                ok = TOKEN_COOKIE in cookie and session_valid(token, cookie[TOKEN_COOKIE].value)
            return ok, ok and bool(from_query)

        def send_page(self, status: int, html: str, cookie: bool = False) -> None:
            payload = html.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Referrer-Policy", "no-referrer")
            self.send_header(
                "Content-Security-Policy",
                "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
                "frame-ancestors 'none'",
            )
            if cookie and token is not None:
                self.send_header(
                    "Set-Cookie", f"{TOKEN_COOKIE}={new_session(token)}; HttpOnly; "
                    f"SameSite=Strict; Path=/; Max-Age={int(SESSION_S)}")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            if token is None and not self.loopback_host_header():
                # why: without a token, loopback is the only protection; a page on another site
                # could reach it by DNS rebinding, which shows up as a foreign Host header
                self.send_page(403, page("Forbidden", "<p>Use http://127.0.0.1 or localhost.</p>"))
                return
            allowed, set_cookie = self.authorised(query)
            if not allowed:
                self.send_page(401, page("Token required", "<p>This view needs the token.</p>"))
                return
            query.pop("token", None)
            try:
                if url.path == "/":
                    self.send_page(200, search_page(store, query, settings), set_cookie)
                elif url.path == "/summary":
                    self.send_page(200, summary_page(store, query, settings), set_cookie)
                elif url.path.startswith("/study/"):
                    status, html = study_page(store, unquote(url.path.removeprefix("/study/")))
                    self.send_page(status, html, set_cookie)
                else:
                    self.send_page(404, page("Not found", "<p>No such page.</p>"))
            except Exception:  # the page says so; the server thread stays up for the next request
                self.send_page(500, page("Error", "<p class='error'>The log query failed.</p>"))

        do_HEAD = do_GET

        def refuse(self) -> None:
            self.send_response(HTTPStatus.METHOD_NOT_ALLOWED)
            self.send_header("Allow", "GET, HEAD")
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_POST = do_PUT = do_DELETE = do_PATCH = refuse

    return AuditorHandler


class WebServer:
    """A running auditor view; stop() shuts it down and frees the port."""

    def __init__(self, httpd: ThreadingHTTPServer) -> None:
        self.httpd = httpd
        self.thread = threading.Thread(
            target=httpd.serve_forever, name="dicomnode-log-web", daemon=True
        )
        self.thread.start()

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def url(self) -> str:
        host = self.httpd.server_address[0]
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}/"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


def start_web(
    store: LogStore,
    host: str = "127.0.0.1",
    port: int = 8480,
    token: str | None = None,
    patient_form: str = "plain",
    patient_salt: str = "",
) -> WebServer:
    """Serve the view on host:port (port 0: any free port) in a background thread."""
    token = token or None
    if token is not None and len(token) < MIN_SECRET_LENGTH:  # the config's rule, for --token too
        raise WebConfigError(f"web view: the token must be at least {MIN_SECRET_LENGTH} "
                             "characters (e.g. python -c 'import secrets; "
                             "print(secrets.token_urlsafe(24))')")
    if token is None and not is_loopback(host):
        raise WebConfigError(
            f"web view: host {host!r} is not loopback; configure a token (web.token) to bind it"
        )
    handler = make_handler(store, token, ViewSettings(patient_form, patient_salt))
    server_class = ThreadingHTTPServer
    if ":" in host:
        import socket

        class ServerV6(ThreadingHTTPServer):
            address_family = socket.AF_INET6

        server_class = ServerV6
    try:
        httpd = server_class((host, port), handler)
    except OSError as exc:  # name the listener: the node has several
        raise OSError(f"web view listener (web.host/port) cannot bind {host}:{port}: "
                      f"{exc.strerror or exc}") from None
    httpd.daemon_threads = True
    return WebServer(httpd)


def start_web_from_config(store: LogStore, web_config: Any, log_config: Any) -> WebServer | None:
    """For the node: start the view if `web.enabled`, with the log's patient ID form."""
    if not getattr(web_config, "enabled", False):
        return None
    return start_web(
        store,
        host=web_config.host,
        port=web_config.port,
        token=web_config.token,
        patient_form=getattr(log_config, "patient_id", "plain"),
        patient_salt=getattr(log_config, "patient_id_salt", ""),
    )
