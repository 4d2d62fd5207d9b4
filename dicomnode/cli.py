"""Command line: `dicomnode serve | classify | echo` (typer).

Other modules mount their command groups on `app` with app.add_typer. Flags override the
config file, as DCMTK users expect.
"""

from __future__ import annotations

import gc
import json
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated

import typer

from dicomnode.cli_queue import queue_app
from dicomnode.cli_rules import rules_app
from dicomnode.config import ConfigError, NodeConfig
from dicomnode.config_file import load_config
from dicomnode.config_routing import DicomDestination, FolderDestination
from dicomnode.logdb.cli import log_app
from dicomnode.web.cli import web_app

app = typer.Typer(
    help="dicomnode: an edge DICOM node that tags X-ray views (AP, PA, lateral, or abstains).",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(log_app, name="log")
app.add_typer(rules_app, name="rules")
app.add_typer(queue_app, name="queue")
app.add_typer(web_app, name="web")

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="YAML config file (default: the embedded config/dicomnode.yaml)"
    ),
]


def _load(config: Path | None) -> NodeConfig:
    try:
        return load_config(config)
    except ConfigError as exc:
        typer.echo(f"dicomnode: {exc}", err=True)
        raise typer.Exit(2) from None


def apply_overrides(
    config: NodeConfig,
    host: str | None = None,
    port: int | None = None,
    ae_title: str | None = None,
    outbox: Path | None = None,
    db: str | None = None,
) -> NodeConfig:
    """Command-line flags over the file's values (re-validated, so bad flags fail like bad YAML)."""
    data = config.model_dump()
    receive = data["receive"]
    if host is not None:
        receive["host"] = host
    if port is not None:
        receive["port"] = port
    if ae_title is not None:
        receive["ae_title"] = ae_title
    if db is not None:
        data["log"]["url"] = db
    if outbox is not None:
        # --outbox adds a folder destination (or moves the one called "outbox")
        data["destinations"] = [d for d in data["destinations"] if d["name"] != "outbox"]
        data["destinations"].append({"name": "outbox", "type": "folder", "path": outbox})
    try:
        return NodeConfig.model_validate(data)
    except ValueError as exc:
        typer.echo(f"dicomnode: invalid option: {exc}", err=True)
        raise typer.Exit(2) from None


class OnePeerLine(logging.Filter):
    """pynetdicom logs a full traceback for each connection a peer resets, stalls or cuts short;
    in the service log one line with the error says as much, without flooding it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("pynetdicom") and record.exc_info:
            error = record.exc_info[1]
            record.msg, record.args = f"{record.getMessage()}: {error!r}", ()
            record.exc_info = record.exc_text = None
        return True


@app.command()
def serve(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="address to listen on")] = None,
    port: Annotated[int | None, typer.Option(help="TCP port to listen on")] = None,
    ae_title: Annotated[str | None, typer.Option("--ae-title", help="the node's AE title")] = None,
    outbox: Annotated[
        Path | None, typer.Option(help="add a folder destination writing here")
    ] = None,
    db: Annotated[str | None, typer.Option(help="log database URL (SQLAlchemy)")] = None,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING")] = "INFO",
) -> None:
    """Run the node: receive, classify, tag, log and forward until Ctrl-C / SIGTERM."""
    from dicomnode.node import Node
    from dicomnode.repeat_limiter import RepeatFilter

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    logging.captureWarnings(True)  # pydicom warns (warnings module) once per odd value it reads
    repeats = RepeatFilter()  # one peer's thousand odd UIDs: a few lines and a count
    for handler in logging.getLogger().handlers:
        handler.addFilter(OnePeerLine())
        handler.addFilter(repeats)
    from dicomnode.watch import file_bytes

    # what the node starts with: the watcher, which starts only once the node listens, reloads
    # at once if the file changed in between (an edit made during start-up was lost before)
    loaded = file_bytes(config) if config is not None else None
    node_config = apply_overrides(_load(config), host, port, ae_title, outbox, db)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    node = Node(node_config)
    try:
        node.start()
    except Exception as exc:
        typer.echo(f"dicomnode: cannot start: {exc}", err=True)
        raise typer.Exit(1) from None
    # What start-up built (libraries, the model, tables) lives as long as the process: out of
    # the garbage collector's way, so the full collections pynetdicom forces every 60
    # connections walk only what came after (~150 ms each before, stalling the accept loop
    # under a connection storm).
    gc.collect()
    gc.freeze()
    host_, port_ = node.address
    dests = ", ".join(d.name for d in node_config.destinations) or "none"
    typer.echo(
        f"dicomnode: {node_config.receive.ae_title} listening on {host_}:{port_}; "
        f"spool {node_config.spool.path}; log {node_config.log.url}; destinations: {dests}",
        err=True,
    )
    watcher = None
    if config is not None and node_config.watch.config:
        from dicomnode.watch import ConfigWatcher, apply_config

        def reload_config() -> NodeConfig:  # same flags over the new file
            return apply_overrides(load_config(config), host, port, ae_title, outbox, db)

        watcher = ConfigWatcher(config, reload_config, lambda new: apply_config(node, new),
                                loaded=loaded)
        watcher.start()
    try:
        stop.wait()
    finally:
        typer.echo("dicomnode: stopping: no new associations; finishing the images in hand",
                   err=True)  # fmt: skip
        if watcher is not None:
            watcher.stop()
        node.stop()
        typer.echo("dicomnode: stopped; what was not finished stays in the spool for the next "
                   "start", err=True)  # fmt: skip


@app.command()
def classify(
    paths: Annotated[list[Path], typer.Argument(help="DICOM, PNG or JPEG files")],
    config: ConfigOption = None,
    models_dir: Annotated[Path | None, typer.Option(help="folder with manifest.json")] = None,
    variant: Annotated[str | None, typer.Option(help="model variant in the manifest")] = None,
) -> None:
    """Classify files; one JSON line per file: label, view (the model's best view term),
    probabilities of every class, confidence, would_write (the ViewPosition the node writes into
    an empty one with the shipped defaults, null = abstain, or a SOP class the node never
    tags) and reason, node (what `serve` with
    this config does with the file as it is), model_sha256, ms. Same code path as the node."""
    from dicomnode.classify import DEFAULT_MODELS_DIR, ModelError, ViewClassifier
    from dicomnode.preprocess import PreprocessError, preprocess_file

    node_config = _load(config)
    try:
        classifier = ViewClassifier.from_manifest(
            models_dir or node_config.classify.models_dir or DEFAULT_MODELS_DIR,
            variant or node_config.classify.variant,
        )
    except ModelError as exc:
        typer.echo(f"dicomnode: {exc}", err=True)
        raise typer.Exit(1) from None
    failed = 0
    for path in paths:
        try:
            grey = preprocess_file(path)
            prediction = classifier.predict(grey)
            overrides = node_config.tag.threshold_overrides()
            configured = classifier.predict(grey, overrides) if overrides else prediction
        except (PreprocessError, OSError) as exc:
            failed += 1
            typer.echo(json.dumps({"path": str(path), "error": str(exc)}))
            continue
        typer.echo(json.dumps(classify_line(path, prediction, configured, node_config,
                                            classifier.sha256)))
    if failed:
        raise typer.Exit(1)


def classify_line(path: Path, prediction, configured, node_config, sha256: str) -> dict:
    """One `classify` output line: the shipped-default view call and what serve would do."""
    from dicomnode import tag
    from dicomnode.config import TagConfig

    before, body_part, sop_class = _header_view(path)
    skipped = tag.not_taggable(sop_class) if sop_class is not None else None
    if skipped is not None:  # what the node does with such a file: nothing
        shipped = node = tag.TagDecision("skipped", before, before, skipped)
    else:
        shipped = tag.decide(None, prediction, TagConfig())
        node = tag.decide(before, configured, node_config.tag, body_part)
    call = prediction.call
    view = {"LAT": TagConfig().la_term, "OTHER": None}.get(prediction.label, prediction.label)
    return {
        "path": str(path),
        "label": prediction.label,
        "view": view,
        "probabilities": {k: round(v, 6) for k, v in prediction.probabilities.items()},
        "heads": call.heads() if call else None,
        "confidence": round(prediction.confidence, 6),
        "would_write": shipped.after if shipped.writes else None,
        "reason": shipped.reason,
        "thresholds": prediction.thresholds,
        "node": {"action": node.action, "before": before, "after": node.after,
                 "reason": node.reason},
        "model_sha256": sha256,
        "ms": round(prediction.inference_ms, 3),
    }


def _header_view(path: Path) -> tuple[str | None, str | None, str | None]:
    """(current view, BodyPartExamined, SOP Class UID) of a DICOM file; Nones for PNG/JPEG."""
    import pydicom

    from dicomnode import tag

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # not DICOM (PNG, JPEG): no view recorded
        return None, None, None
    sop_class = str(ds.get("SOPClassUID", "") or ds.file_meta.get("MediaStorageSOPClassUID", ""))
    return tag.current_view(ds), tag.body_part_of(ds), sop_class


@app.command()
def echo(
    destination: Annotated[
        str | None,
        typer.Argument(help="a destination name from the config; default: the node itself"),
    ] = None,
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="peer host (instead of a name)")] = None,
    port: Annotated[int | None, typer.Option(help="peer port")] = None,
    called_ae: Annotated[str | None, typer.Option("--called-ae", help="peer AE title")] = None,
    timeout: Annotated[float, typer.Option(help="seconds")] = 10.0,
) -> None:
    """C-ECHO a DICOM destination (or the node's own listener) and print the status."""
    from pynetdicom import evt
    from pynetdicom.sop_class import Verification

    from dicomnode.identity import node_ae
    from dicomnode.receive import set_tcp_nodelay

    node_config = _load(config)
    calling = node_config.receive.ae_title
    if destination is not None:
        try:
            dest = node_config.destination(destination)
        except KeyError:
            names = [d.name for d in node_config.destinations]
            typer.echo(f"dicomnode: no destination {destination!r}; known: {names}", err=True)
            raise typer.Exit(2) from None
        if isinstance(dest, FolderDestination):
            ok = Path(dest.path).is_dir() or not Path(dest.path).exists()
            typer.echo(f"{dest.name}: folder {dest.path} ({'ok' if ok else 'not a folder'})")
            raise typer.Exit(0 if ok else 1)
        assert isinstance(dest, DicomDestination)
        target = (dest.host, dest.port, dest.ae_title)
        calling = dest.calling_ae_title or calling
    else:
        recv = node_config.receive
        target = (
            recv.host if recv.host not in ("0.0.0.0", "") else "127.0.0.1",
            recv.port,
            recv.ae_title,
        )
    target = (host or target[0], port or target[1], called_ae or target[2])
    ae = node_ae(calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(Verification)
    assoc = ae.associate(
        target[0],
        target[1],
        ae_title=target[2],
        evt_handlers=[(evt.EVT_CONN_OPEN, set_tcp_nodelay)],
    )
    if not assoc.is_established:
        typer.echo(f"C-ECHO {target[2]}@{target[0]}:{target[1]}: association failed", err=True)
        raise typer.Exit(1)
    status = assoc.send_c_echo()
    assoc.release()
    code = int(status.Status) if "Status" in status else None
    ok = code == 0
    shown = f"0x{code:04X}" if code is not None else "no response"
    typer.echo(
        f"C-ECHO {target[2]}@{target[0]}:{target[1]}: {'success' if ok else 'failed'} ({shown})"
    )
    if not ok:
        raise typer.Exit(1)


@app.command()
def health(
    config: ConfigOption = None,
    timeout: Annotated[float, typer.Option(help="seconds for the C-ECHO and the database")] = 10.0,
    min_free_mib: Annotated[
        float, typer.Option("--min-free-mib", help="unhealthy below this free space on the spool")
    ] = 512.0,
    max_failing_min: Annotated[
        float, typer.Option("--max-failing-min",
                            help="unhealthy when a destination has failed this long")
    ] = 10.0,
    discarded_window_min: Annotated[
        float, typer.Option("--discarded-window-min",
                            help="DEGRADED while a discard rule dropped images this recently")
    ] = 60.0,
) -> None:
    """Check the running node: C-ECHO its listener (TLS when configured), the log database,
    the spool's free space, and each destination (reachable, queue, oldest waiting, failing
    for how long). One line: OK, DEGRADED (failed/ not empty, recent discards, restart
    needed) or FAIL; exit 1 on FAIL only (systemd, Docker restart on non-zero)."""
    from dicomnode.health import check_health

    report = check_health(_load(config), timeout, int(min_free_mib * 1024 * 1024),
                          max_failing_min * 60.0, discarded_window_min * 60.0)  # fmt: skip
    typer.echo(report.line)
    raise typer.Exit(0 if report.ok else 1)


def main() -> None:  # pragma: no cover - console entry point
    sys.exit(app())
