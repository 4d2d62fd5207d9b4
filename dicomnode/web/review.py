"""Review pages: the queue of decisions to judge, recording a verdict, the review summary."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from dicomnode.logdb import review
from dicomnode.logdb.models import TRUE_VIEWS, VERDICTS
from dicomnode.web.auth import to_login, wants_html
from dicomnode.web.csrf import checked_form
from dicomnode.web.filters import BadRequest
from dicomnode.web.pages import log_filter_of, params_of, store_of
from dicomnode.web.render import message, render

DEFAULT_SAMPLE_PERCENT = 5.0
REVIEW_SUMMARY_FIELDS = (("since", "Received from (UTC)"), ("until", "Received before (UTC)"),
                  ("model", "Model sha256 (prefix)"))  # fmt: skip


def _number(value: str | None, default: float, low: float, high: float) -> float:
    try:
        return min(high, max(low, float(value))) if value else default
    except ValueError:
        return default


def queue(request: Request) -> Response:
    seed = int(_number(request.query_params.get("seed"), 1, 0, 10**9))
    sample = _number(request.query_params.get("sample"), DEFAULT_SAMPLE_PERCENT, 0, 100)
    sections = review.review_queue(store_of(request), seed=seed, sample_percent=sample)
    return render(request, "review_queue.html", title="Review queue", sections=sections,
                  seed=seed, sample=sample)  # fmt: skip


async def record_verdict(request: Request) -> Response:
    user = request.state.user
    if not (user and user.reviewer) and wants_html(request):  # the session ended: log in again
        return to_login(f"/decision/{request.path_params['id']}")
    form = await checked_form(request)  # reviewers only, CSRF checked: 403 otherwise
    instance_id = request.path_params["id"]
    verdict, true_view = form.get("verdict", ""), form.get("true_view", "")
    if verdict not in VERDICTS or true_view not in TRUE_VIEWS:
        return message(request, 400, "Incomplete verdict",
                       f"Choose {' or '.join(VERDICTS)} and a true view "
                       f"({', '.join(TRUE_VIEWS)}).")  # fmt: skip
    try:
        await run_in_threadpool(store_of(request).record_verdict, instance_id,
                                request.state.user.name, verdict, true_view,
                                form.get("note"))  # fmt: skip
    except LookupError:
        return message(request, 404, "Decision not found", "No such decision in the log.")
    return RedirectResponse(f"/decision/{instance_id}?saved=1", status_code=303)


def summary(request: Request) -> Response:
    params = params_of(request)
    context = {"title": "Review summary", "fields": REVIEW_SUMMARY_FIELDS, "params": params}
    try:
        log_filter = log_filter_of(request, {k: v for k, v in params.items()
                                             if k in dict(REVIEW_SUMMARY_FIELDS)})  # fmt: skip
    except BadRequest as exc:
        return render(request, "review_summary.html", error=str(exc), r=None, **context)
    store = store_of(request)
    return render(request, "review_summary.html", error="", models=review.model_info(store),
                  r=review.review_summary(store, log_filter), **context)  # fmt: skip
