"""Jinja2 templates (autoescaped) and the context every page gets."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.templating import Jinja2Templates

from dicomnode.logdb.models import TRUE_VIEWS, VERDICTS
from dicomnode.web.csrf import csrf_token

TEMPLATES_DIR = Path(__file__).parent / "templates"
STATIC_DIR = Path(__file__).parent / "static"


def text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def percent(rate: float | None) -> str:
    return "n/a" if rate is None else f"{100 * rate:.1f}%"


def dimse_status(status: int | None) -> str:
    return "" if status is None else f"0x{status:04X}"


def thresholds_text(thresholds: dict | None) -> str:
    if not thresholds:
        return ""
    source = thresholds.get("source", "?")
    values = ", ".join(f"{k} {v}" for k, v in thresholds.items() if k != "source")
    return f"{values} ({source})"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,  # every template, whatever its name
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(text=text, percent=percent, dimse=dimse_status,
                       thresholds=thresholds_text, urlpart=lambda v: quote(str(v), safe=""),
                       query=lambda d: urlencode(d))  # fmt: skip
    env.globals.update(VERDICTS=VERDICTS, TRUE_VIEWS=TRUE_VIEWS)
    return env


templates = Jinja2Templates(env=_environment())


def render(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
    user = getattr(request.state, "user", None)
    context.setdefault("title", "")
    context.setdefault("csrf", csrf_token(request) if user and user.reviewer else "")
    context.update(request=request, user=user)
    return templates.TemplateResponse(request, name, context, status_code=status)


def message(request: Request, status: int, title: str, text_: str) -> HTMLResponse:
    return render(request, "message.html", status=status, title=title, message=text_)
