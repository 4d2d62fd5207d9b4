"""The read-only pages: search, study, decision, summary, preview PNG and the spooled file."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, Response

from dicomnode.logdb import review
from dicomnode.logdb.query import (
    LogFilter,
    count_instances,
    find_instances,
    study_detail,
    summarise,
)
from dicomnode.logdb.store import LogStore
from dicomnode.spool import locate
from dicomnode.web.access import record
from dicomnode.web.charts import bars
from dicomnode.web.filters import (
    FILTER_FIELDS,
    SUMMARY_FIELDS,
    BadRequest,
    filter_from_params,
    kept_params,
)
from dicomnode.web.render import message, render
from dicomnode.web.settings import WebSettings

PAGE_SIZE = 50
SUMMARY_DEFAULT_DAYS = 30


def store_of(request: Request) -> LogStore:
    return request.app.state.store


def settings_of(request: Request) -> WebSettings:
    return request.app.state.settings


def params_of(request: Request) -> dict[str, str]:
    return {k: v for k, v in request.query_params.items() if k != "token"}


def log_filter_of(request: Request, params: dict[str, str] | None = None) -> LogFilter:
    settings = settings_of(request)
    return filter_from_params(params if params is not None else params_of(request),
                              settings.patient_form, settings.patient_salt)  # fmt: skip


def search(request: Request) -> Response:
    params = params_of(request)
    context: dict[str, Any] = {"title": "Search the log", "fields": FILTER_FIELDS,
                               "params": params, "rows": None}  # fmt: skip
    try:
        log_filter = log_filter_of(request, params)
        page_number = max(1, int(params.get("page", "1") or 1))
    except (BadRequest, ValueError) as exc:
        return render(request, "search.html", error=str(exc), **context)
    store = store_of(request)
    total = count_instances(store, log_filter)
    rows = find_instances(store, log_filter, limit=PAGE_SIZE, offset=(page_number - 1) * PAGE_SIZE)
    review.annotate(store, rows)
    pages = max(1, -(-total // PAGE_SIZE))
    first = (page_number - 1) * PAGE_SIZE + 1 if rows else 0
    kept = kept_params(params)
    context.update(rows=rows, total=total, page=page_number, pages=pages, first=first,
                   last=first + len(rows) - 1 if rows else 0, kept=kept,
                   prev_query={**kept, "page": page_number - 1} if page_number > 1 else None,
                   next_query={**kept, "page": page_number + 1} if page_number < pages else None)
    return render(request, "search.html", error="", **context)


def study(request: Request) -> Response:
    uid = request.path_params["uid"]
    store = store_of(request)
    detail = study_detail(store, uid)
    if not detail["instances"]:
        return message(request, 404, "Study not found", f"No instances logged for {uid}.")
    review.annotate(store, detail["instances"])
    record(request, f"{len(detail['instances'])} decisions")
    return render(request, "study.html", title="Study", study_uid=uid,
                  instances=detail["instances"], first=detail["instances"][0])


def spooled_file(request: Request, row: dict[str, Any]) -> Path | None:
    """The received file while the node's spool still holds it (wherever in the spool it has
    moved); never a file outside the spool, whatever the row's spool_path says."""
    root = settings_of(request).spool_root
    if root is None:
        return None
    return locate(root, row.get("spool_path"), row.get("decision_key"))


def decision(request: Request) -> Response:
    store = store_of(request)
    row = review.instance(store, request.path_params["id"])
    if row is None:
        return message(request, 404, "Decision not found", "No such decision in the log.")
    same_study = study_detail(store, row["study_instance_uid"] or "")["instances"]
    detail = next((r for r in same_study if r["id"] == row["id"]), {})
    record(request, f"id {row['id']}")
    row["attempts"] = detail.get("attempts", [])
    row["not_attempted"] = detail.get("not_attempted", [])
    return render(request, "decision.html", title="Decision", row=row,
                  history=review.verdict_history(store, row["id"]),
                  has_file=spooled_file(request, row) is not None,
                  saved=request.query_params.get("saved") == "1")  # fmt: skip


def preview(request: Request) -> Response:
    png = review.preview_png(store_of(request), request.path_params["key"])
    if png is None:
        return Response("no preview", status_code=404, media_type="text/plain")
    record(request, f"key {request.path_params['key']}")
    return Response(png, media_type="image/png")


async def image(request: Request) -> Response:
    row = await run_in_threadpool(review.instance, store_of(request), request.path_params["id"])
    path = await run_in_threadpool(spooled_file, request, row) if row else None
    if path is None:
        return message(request, 404, "File gone", "The spool no longer holds this image.")
    record(request, f"id {row['id']}")
    name = f"{row['sop_instance_uid']}.dcm"
    return FileResponse(path, media_type="application/dicom", filename=name)


def summary(request: Request) -> Response:
    params = params_of(request)
    window = False
    if not any(params.get(k) for k in ("since", "until", "day")):
        # why: a summary scans every matching row (seconds over millions); default to a window
        start = datetime.now(timezone.utc) - timedelta(days=SUMMARY_DEFAULT_DAYS)
        params["since"] = start.strftime("%Y-%m-%dT%H:%M")
        window = True
    fields = [f for f in FILTER_FIELDS if f[0] in SUMMARY_FIELDS]
    context = {"title": "Summary", "fields": fields, "params": params, "window": window,
               "days": SUMMARY_DEFAULT_DAYS, "s": None}  # fmt: skip
    try:
        log_filter = log_filter_of(request, params)
    except BadRequest as exc:
        return render(request, "summary.html", error=str(exc), **context)
    store = store_of(request)
    s = summarise(store, log_filter)
    models = review.model_info(store)

    def model_label(sha256: str) -> str:
        name = (models.get(sha256) or {}).get("version")
        return f"{sha256[:12]} {name}" if name else (sha256[:12] or "(none)")

    charts = [
        bars("Instances per day (UTC)", list(s["by_day"].items())),
        bars("By label", [(k or "(none)", v) for k, v in s["by_label"].items()]),
        bars("By action", list(s["by_action"].items())),
        bars("By calling AE", list(s["by_calling_ae"].items())),
        bars("By model", [(model_label(k), v) for k, v in s["by_model"].items()]),
        bars("Confidence histogram",
             [(f"{b['low']:.2f}–{b['high']:.2f}", b["count"]) for b in s["confidence_histogram"]
              if b["count"] or b["low"] >= 0.5]),
        bars("Delivery success rate per destination (%)",
             [(k, 100 * (v["success_rate"] or 0))
              for k, v in s["delivery_by_destination"].items()], "{:.1f}%"),
    ]  # fmt: skip
    for m in s["models"]:
        m["info"] = models.get(m["sha256"], {})
    return render(request, "summary.html", error="", charts=charts, **{**context, "s": s})
