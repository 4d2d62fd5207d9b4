"""`dicomnode queue list | retry | purge`: see and steer the store-and-forward queue.

Works on the spool folders directly, so it can be used while the node runs (the forwarders pick
up retried images within a second) or while it is stopped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from dicomnode import queue_ops
from dicomnode.config import ConfigError
from dicomnode.config_file import load_config
from dicomnode.spool import FAILED, OUTGOING, SENT, Spool

queue_app = typer.Typer(help="List, retry and purge queued images.", no_args_is_help=True)

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML config file (for the spool path)")
]
SpoolOption = Annotated[
    Path | None, typer.Option("--spool", help="spool folder (instead of the config's)")
]
DestOption = Annotated[str | None, typer.Option("--dest", "-d", help="only this destination")]


def _spool(config: Path | None, spool: Path | None) -> Spool:
    if spool is not None:
        path = spool
    else:
        try:
            path = load_config(config).spool.path
        except ConfigError as exc:
            typer.echo(f"dicomnode: {exc}", err=True)
            raise typer.Exit(2) from None
    if not Path(path).is_dir():
        typer.echo(f"dicomnode: no spool at {path}", err=True)
        raise typer.Exit(2)
    return Spool(path)


@queue_app.command("list")
def list_(
    config: ConfigOption = None,
    spool: SpoolOption = None,
    dest: DestOption = None,
    state: Annotated[
        list[str] | None,
        typer.Option(help="incoming, processing, outgoing, sent, failed (repeatable)"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
    summary: Annotated[bool, typer.Option(help="only the counts per state")] = False,
) -> None:
    """Where every image is: one line per image (default: all but sent/), or the counts."""
    the_spool = _spool(config, spool)
    if summary:
        for key, count in the_spool.counts().items():
            typer.echo(f"{key:40s} {count}")
        return
    states = tuple(state) if state else tuple(s for s in queue_ops.STATES if s != SENT)
    unknown = [s for s in states if s not in queue_ops.STATES]
    if unknown:
        typer.echo(f"dicomnode: unknown state {unknown}; valid: {queue_ops.STATES}", err=True)
        raise typer.Exit(2)
    for item in queue_ops.items(the_spool, states, dest):
        row = item.as_row()
        if as_json:
            typer.echo(json.dumps(row))
            continue
        where = f"{row['state']}/{row['destination']}" if row["destination"] else row["state"]
        due = row["next_attempt_in_s"]
        next_text = f" next in {due:.0f}s" if due is not None and due > 0 else ""
        status = f" {row['last_status']}" if row["last_status"] else ""
        line = (
            f"{where:24s} {row['name']} {row['sop_instance_uid']} "
            f"attempts={row['attempts']}{status}{next_text} {row['last_detail']}"
        )
        typer.echo(line.rstrip())


@queue_app.command("retry")
def retry(
    names: Annotated[
        list[str] | None, typer.Argument(help="spool names or SOP Instance UIDs (default: all)")
    ] = None,
    config: ConfigOption = None,
    spool: SpoolOption = None,
    dest: DestOption = None,
) -> None:
    """Send failed images again (failed/<dest>/ -> outgoing/<dest>/, attempts reset) and make
    waiting ones due now."""
    touched = queue_ops.retry(_spool(config, spool), dest, names or None)
    for item in touched:
        typer.echo(f"retry {item.state}/{item.destination} {item.name} {item.sop_instance_uid}")
    typer.echo(f"{len(touched)} image(s) queued for another attempt")


@queue_app.command("purge")
def purge(
    state: Annotated[str, typer.Argument(help="sent or failed (outgoing only with names)")],
    names: Annotated[
        list[str] | None, typer.Argument(help="spool names or SOP Instance UIDs (default: all)")
    ] = None,
    config: ConfigOption = None,
    spool: SpoolOption = None,
    dest: DestOption = None,
    older_than_days: Annotated[float | None, typer.Option(help="only files older than")] = None,
    yes: Annotated[bool, typer.Option("--yes", help="really delete")] = False,
) -> None:
    """Delete images from sent/ or failed/ (with --yes; without it, show what would go)."""
    if state not in (SENT, FAILED, OUTGOING):
        typer.echo("dicomnode: purge takes sent, failed or outgoing", err=True)
        raise typer.Exit(2)
    the_spool = _spool(config, spool)
    older = older_than_days * 86400 if older_than_days is not None else None
    if not yes:
        chosen = [
            i for i in queue_ops.items(the_spool, (state,), dest)
            if not names or i.name in names or i.sop_instance_uid in names
        ]  # fmt: skip
        typer.echo(f"would delete {len(chosen)} image(s) from {state}/ (add --yes)")
        return
    try:
        removed = queue_ops.purge(the_spool, state, dest, older, names or None)
    except ValueError as exc:
        typer.echo(f"dicomnode: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"deleted {len(removed)} image(s) from {state}/")
