"""`dicomnode log query | summary | purge | associations`: the auditor's terminal access to the
log (`web` and `export-reviews`: dicomnode.logdb.cli_review)."""

from __future__ import annotations

import csv
import json
import sys
from datetime import datetime, time, timedelta, timezone
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from dicomnode.logdb.cli_common import (
    ConfigOption,
    DbOption,
    cell,
    fail,
    load_log_config,
    open_store,
    parse_time,
)
from dicomnode.logdb.cli_review import export_reviews_command, web_command
from dicomnode.logdb.entry import ASSOCIATION_OUTCOMES, patient_id_in_configured_form
from dicomnode.logdb.query import (
    DELIVERY_STATUSES,
    LIST_COLUMNS,
    LogFilter,
    count_instances,
    find_instances,
    iter_instances,
    summarise,
)
from dicomnode.view_policy import CLASSES

log_app = typer.Typer(
    help="Query, summarise and purge the classification log.", no_args_is_help=True
)


class OutputFormat(str, Enum):
    table = "table"
    csv = "csv"
    jsonl = "jsonl"


class SummaryFormat(str, Enum):
    text = "text"
    json = "json"


def stored_patient_id(patient: str | None, config_path: Path | None) -> str | None:
    """Turn the patient ID an auditor types into the form the node logged (plain or hashed)."""
    if patient is None:
        return None
    log_config = load_log_config(config_path)
    if log_config is None:
        return patient
    if log_config.patient_id == "omit":
        raise fail("the node is configured with log.patient_id: omit; no patient IDs are logged")
    return patient_id_in_configured_form(patient, log_config.patient_id, log_config.patient_id_salt)


def build_filter(
    since: str | None = None,
    until: str | None = None,
    day: str | None = None,
    study: str | None = None,
    series: str | None = None,
    sop: str | None = None,
    patient: str | None = None,
    calling_ae: str | None = None,
    modality: str | None = None,
    label: str | None = None,
    action: str | None = None,
    min_confidence: float | None = None,
    max_confidence: float | None = None,
    model: str | None = None,
    delivery: str | None = None,
    accession: str | None = None,
) -> LogFilter:
    start, end = parse_time(since, "--since"), parse_time(until, "--until")
    known_labels = (*CLASSES, "LA")  # LA: the first model's lateral class
    if label is not None and label not in known_labels:
        raise fail(f"--label {label!r} matches no logged class; use one of "
                   f"{', '.join(known_labels)} (LA: rows of the earlier AP/LA model)")
    if day is not None:
        first = parse_time(day, "--day")
        start = datetime.combine(first.date(), time(), tzinfo=timezone.utc)
        end = start + timedelta(days=1)
    try:
        return LogFilter(
            since=start, until=end, study_uid=study, series_uid=series, sop_uid=sop,
            patient_id=patient, calling_ae=calling_ae, modality=modality, label=label,
            action=action, min_confidence=min_confidence, max_confidence=max_confidence,
            model_sha256=model, delivery=delivery, accession_number=accession,
        )  # fmt: skip
    except ValueError as exc:
        raise fail(str(exc)) from None


def jsonable(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


TABLE_COLUMNS = (
    ("id", "id"), ("received_at", "received (UTC)"), ("calling_ae", "calling AE"),
    ("modality", "mod"), ("study_instance_uid", "study UID"), ("sop_instance_uid", "SOP UID"),
    ("action", "action"), ("label", "label"), ("confidence", "conf"),
    ("view_position_before", "VP before"), ("view_position_after", "VP after"),
    ("model_sha256", "model"), ("delivery", "delivery"),
)  # fmt: skip


def print_table(rows: list[dict[str, Any]]) -> None:
    cells = [
        [
            cell(row[key])[:12] if key == "model_sha256" else cell(row[key])
            for key, _ in TABLE_COLUMNS
        ]
        for row in rows
    ]
    headers = [title for _, title in TABLE_COLUMNS]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    typer.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    typer.echo("  ".join("-" * w for w in widths))
    for row in cells:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


@log_app.command("query")
def query_command(
    db: DbOption = None,
    config: ConfigOption = None,
    since: Annotated[str | None, typer.Option(help="received at or after (ISO, UTC)")] = None,
    until: Annotated[str | None, typer.Option(help="received before (ISO, UTC)")] = None,
    day: Annotated[str | None, typer.Option(help="one UTC day, e.g. 2026-11-20")] = None,
    study: Annotated[str | None, typer.Option(help="Study Instance UID")] = None,
    series: Annotated[str | None, typer.Option(help="Series Instance UID")] = None,
    sop: Annotated[str | None, typer.Option(help="SOP Instance UID")] = None,
    accession: Annotated[str | None, typer.Option(help="Accession number")] = None,
    patient: Annotated[
        str | None, typer.Option(help="patient ID as typed; hashed like the node if configured")
    ] = None,
    calling_ae: Annotated[str | None, typer.Option("--calling-ae")] = None,
    modality: Annotated[str | None, typer.Option()] = None,
    label: Annotated[str | None, typer.Option(help="AP or LA")] = None,
    action: Annotated[str | None, typer.Option(help="written, agrees, disagrees, ...")] = None,
    min_confidence: Annotated[float | None, typer.Option("--min-confidence")] = None,
    max_confidence: Annotated[float | None, typer.Option("--max-confidence")] = None,
    model: Annotated[str | None, typer.Option(help="model sha256 (or 6+ digit prefix)")] = None,
    delivery: Annotated[
        str | None, typer.Option(help=f"delivery status: {', '.join(DELIVERY_STATUSES)}")
    ] = None,
    limit: Annotated[int, typer.Option(help="rows to show; 0 = all")] = 100,
    offset: Annotated[int, typer.Option()] = 0,
    output: Annotated[OutputFormat, typer.Option("--format", "-f")] = OutputFormat.table,
) -> None:
    """List logged decisions matching every given filter, newest first."""
    log_filter = build_filter(
        since, until, day, study, series, sop, stored_patient_id(patient, config), calling_ae,
        modality, label, action, min_confidence, max_confidence, model, delivery, accession,
    )  # fmt: skip
    store = open_store(db, config)
    try:
        if limit > 0:
            rows = find_instances(store, log_filter, limit=limit, offset=offset)
        else:
            rows = list(iter_instances(store, log_filter))
        if output is OutputFormat.table:
            print_table(rows)
            total = count_instances(store, log_filter)
            typer.echo(f"{len(rows)} of {total} matching rows", err=True)
        elif output is OutputFormat.csv:
            writer = csv.writer(sys.stdout)
            writer.writerow([*LIST_COLUMNS, "routing"])
            for row in rows:
                writer.writerow([cell(row[c]) for c in (*LIST_COLUMNS, "routing")])
        else:
            for row in rows:
                typer.echo(json.dumps({k: jsonable(v) for k, v in row.items()}, sort_keys=True))
    finally:
        store.close()


def percent(rate: float | None) -> str:
    return "n/a" if rate is None else f"{100 * rate:.1f}%"


def print_summary(summary: dict[str, Any]) -> None:
    typer.echo(f"instances: {summary['instances']}")
    for title, key in (("by day (UTC)", "by_day"), ("by label", "by_label"),
                       ("by action", "by_action"), ("by calling AE", "by_calling_ae"),
                       ("by model", "by_model")):  # fmt: skip
        typer.echo(f"\n{title}:")
        for name, count in summary[key].items():
            typer.echo(f"  {name or '(none)':<66} {count:>9}")
    disagreement, uncertain = summary["disagreement"], summary["uncertain"]
    typer.echo(
        f"\ndisagreement with modality: {percent(disagreement['rate'])} "
        f"({disagreement['count']} of {disagreement['compared']} with a modality view position)"
    )
    typer.echo(
        f"uncertain: {percent(uncertain['rate'])} "
        f"({uncertain['count']} of {uncertain['classified']} classified)"
    )
    typer.echo("\nconfidence histogram:")
    peak = max([b["count"] for b in summary["confidence_histogram"]] + [1])
    for bin_ in summary["confidence_histogram"]:
        if bin_["count"] or bin_["low"] >= 0.5:
            bar = "#" * round(40 * bin_["count"] / peak)
            typer.echo(f"  {bin_['low']:.2f}-{bin_['high']:.2f} {bin_['count']:>9} {bar}")
    typer.echo("\ndelivery by destination:")
    for name, d in summary["delivery_by_destination"].items():
        typer.echo(
            f"  {name:<24} success {percent(d['success_rate']):>7}  delivered {d['delivered']}"
            f"  failed {d['failed']}  pending {d['pending']}  attempts {d['attempts']}"
        )
    if summary["purges"]:
        typer.echo("\npurges:")
        for purge in summary["purges"]:
            typer.echo(
                f"  {cell(purge['at'])} older than {purge['older_than_days']:g} days: "
                f"{purge['instances_deleted']} instances, "
                f"{purge['forward_attempts_deleted']} delivery attempts, "
                f"{purge['verdicts_deleted']} verdicts"
            )


@log_app.command("summary")
def summary_command(
    db: DbOption = None,
    config: ConfigOption = None,
    since: Annotated[str | None, typer.Option(help="received at or after (ISO, UTC)")] = None,
    until: Annotated[str | None, typer.Option(help="received before (ISO, UTC)")] = None,
    day: Annotated[str | None, typer.Option(help="one UTC day")] = None,
    calling_ae: Annotated[str | None, typer.Option("--calling-ae")] = None,
    modality: Annotated[str | None, typer.Option()] = None,
    model: Annotated[str | None, typer.Option(help="model sha256 (or prefix)")] = None,
    output: Annotated[SummaryFormat, typer.Option("--format", "-f")] = SummaryFormat.text,
) -> None:
    """Counts by day, label, action, calling AE and model; disagreement and uncertain rates;
    confidence histogram; delivery success per destination."""
    log_filter = build_filter(since, until, day, calling_ae=calling_ae, modality=modality,
                              model=model)  # fmt: skip
    store = open_store(db, config)
    try:
        summary = summarise(store, log_filter)
    finally:
        store.close()
    if output is SummaryFormat.json:
        typer.echo(json.dumps(summary, default=jsonable, indent=2, sort_keys=True))
    else:
        print_summary(summary)


@log_app.command("purge")
def purge_command(
    older_than: Annotated[
        float | None,
        typer.Option("--older-than", help="days; default: log.retention_days of the config"),
    ] = None,
    db: DbOption = None,
    config: ConfigOption = None,
) -> None:
    """Delete log rows older than the retention age; the purge itself is recorded."""
    if older_than is None:
        log_config = load_log_config(config)
        older_than = getattr(log_config, "retention_days", None)
        if older_than is None:
            raise fail("give --older-than DAYS (no log.retention_days configured)")
    if older_than < 0:
        raise fail("--older-than must be zero or more days")
    store = open_store(db, config)
    try:
        result = store.purge(older_than, requested_by="dicomnode log purge")
    finally:
        store.close()
    typer.echo(
        f"purged {result.instances_deleted} instances, {result.forward_attempts_deleted} "
        f"delivery attempts and {result.verdicts_deleted} verdicts received before "
        f"{cell(result.cutoff)}"
    )


@log_app.command("associations")
def associations_command(
    outcome: Annotated[
        str | None, typer.Option(help="accepted, rejected or aborted (default: all)")
    ] = None,
    limit: Annotated[int, typer.Option(help="newest rows shown")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
    db: DbOption = None,
    config: ConfigOption = None,
) -> None:
    """Association requests the node answered, newest first: when, accepted or rejected (with
    the A-ASSOCIATE-RJ result/source/reason), and accepted ones that ended in an abort (who
    aborted, how); calling and called AE title, peer address."""
    if outcome is not None and outcome not in ASSOCIATION_OUTCOMES:
        raise fail(f"--outcome {outcome!r}: use one of {', '.join(ASSOCIATION_OUTCOMES)}")
    store = open_store(db, config)
    try:
        rows = store.associations(outcome=outcome, limit=limit)
    finally:
        store.close()
    for row in rows:
        values = {"at": cell(row.at), "outcome": row.outcome, "calling_ae": row.calling_ae,
                  "called_ae": row.called_ae, "peer_address": row.peer_address,
                  "reason": row.reason}  # fmt: skip
        if as_json:
            typer.echo(json.dumps(values))
        else:
            typer.echo("  ".join(str(v) for v in values.values() if v is not None))


log_app.command("web")(web_command)
log_app.command("export-reviews")(export_reviews_command)
