"""What the `dicomnode log` commands share: the --db and --config options, opening the log read
only, one-line failures, times and cells as the auditor reads them."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

import typer

from dicomnode.logdb.store import LogStore

DbOption = Annotated[
    str | None,
    typer.Option("--db", help="Log database URL or SQLite path (default: log.url of the config)"),
]
ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Node config: the log URL and the patient ID form"),
]


def fail(message: str) -> typer.Exit:
    typer.echo(f"dicomnode log: {message}", err=True)
    return typer.Exit(2)


def load_log_config(config_path: Path | None) -> Any | None:
    """The node config's `log` section, or None when there is no config to read."""
    try:
        from dicomnode.config import DEFAULT_CONFIG_PATH, ConfigError
        from dicomnode.config_file import load_config
    except ImportError:  # pragma: no cover - a checkout without the node's config module
        return None
    if config_path is None and not DEFAULT_CONFIG_PATH.exists():
        return None
    try:
        return load_config(config_path).log
    except ConfigError as exc:
        raise fail(str(exc)) from None


def open_store(db: str | None, config_path: Path | None, upgrade: bool = False) -> LogStore:
    """Auditor commands read an existing log as it is (no file created, no schema migrated)."""
    url = db
    if url is None:
        log_config = load_log_config(config_path)
        if log_config is None:
            raise fail("no --db given and no config file to take log.url from")
        url = log_config.url
    try:
        return LogStore.open(url, upgrade=upgrade)
    except Exception as exc:  # shown to the auditor as one line, not a traceback
        raise fail(f"cannot open log database: {exc}") from None


def parse_time(value: str | None, option: str) -> datetime | None:
    """ISO date or date-time; no zone means UTC (the log's own time zone)."""
    if value is None:
        return None
    text = value.strip().replace("Z", "+00:00")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise fail(f"{option}: {value!r} is not an ISO date or date-time (e.g. 2026-11-20 or "
                   "2026-11-20T08:30)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return str(value)
