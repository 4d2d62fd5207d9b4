"""CSV and JSON-lines download of any search: the search page's filters, every matching row
(keyset pages, streamed), with the auditor fields and the newest verdict."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from dicomnode.logdb import review
from dicomnode.logdb.query import LogFilter, iter_instances
from dicomnode.logdb.store import LogStore
from dicomnode.web.access import counted
from dicomnode.web.filters import BadRequest
from dicomnode.web.pages import log_filter_of, store_of
from dicomnode.web.render import message

COLUMNS = (
    "id", "received_at", "calling_ae", "modality", "patient_id", "accession_number",
    "body_part_examined", "study_instance_uid", "series_instance_uid", "sop_instance_uid",
    "action", "label", "confidence", "probability_ap", "probability_pa", "probability_la",
    "probability_other", "view_position_before", "view_position_after", "decision_reason",
    "model_sha256", "model_name", "model_version", "model_date", "rules", "destinations",
    "delivery", "routed_nowhere", "never_delivered", "verdict", "true_view", "reviewer",
    "verdict_at", "verdict_note",
)  # fmt: skip
BATCH = 500
# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection): calling
# AE, patient ID, accession number, body part and the reviewer's note come from outside.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def flat(row: dict[str, Any]) -> dict[str, Any]:
    model, verdict = row.get("model") or {}, row.get("verdict") or {}
    values = {name: row.get(name) for name in COLUMNS}
    values.update(model_name=model.get("name"), model_version=model.get("version"),
                  model_date=model.get("date"), verdict=verdict.get("verdict"),
                  true_view=verdict.get("true_view"), reviewer=verdict.get("reviewer"),
                  verdict_at=verdict.get("at"), verdict_note=verdict.get("note"))  # fmt: skip
    return values


def rows(store: LogStore, log_filter: LogFilter) -> Iterator[dict[str, Any]]:
    models = review.model_info(store)
    batch: list[dict[str, Any]] = []
    for row in iter_instances(store, log_filter):
        batch.append(row)
        if len(batch) == BATCH:
            yield from (flat(r) for r in review.annotate(store, batch, models))
            batch = []
    yield from (flat(r) for r in review.annotate(store, batch, models))


def _cell(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list):
        value = ";".join(str(v) for v in value)
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value  # shown as text, never evaluated (OWASP's advice for CSV)
    return value


def as_csv(values: Iterator[dict[str, Any]]) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    for count, row in enumerate(values, 1):
        writer.writerow({k: _cell(v) for k, v in row.items()})
        if count % 200 == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def as_jsonl(values: Iterator[dict[str, Any]]) -> Iterator[str]:
    for row in values:
        yield json.dumps({k: v.isoformat() if isinstance(v, datetime) else v
                          for k, v in row.items()}) + "\n"  # fmt: skip


def export(request: Request) -> Response:
    kind = request.path_params["kind"]
    if kind not in ("csv", "jsonl"):
        return message(request, 404, "Not found", "Export as export.csv or export.jsonl.")
    try:
        log_filter = log_filter_of(request)
    except BadRequest as exc:
        return message(request, 400, "Export", str(exc))
    values = counted(request, rows(store_of(request), log_filter))
    if kind == "csv":
        body, media = as_csv(values), "text/csv; charset=utf-8"
    else:
        body, media = as_jsonl(values), "application/x-ndjson"
    name = f"dicomnode-log.{kind}"
    return StreamingResponse(body, media_type=media,
                             headers={"Content-Disposition": f'attachment; filename="{name}"'})
