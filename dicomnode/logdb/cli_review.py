"""`dicomnode log web` and `dicomnode log export-reviews`: the reviewers' side of the log (the web
view served until interrupted; reviewed films as training data)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from dicomnode.logdb.cli_common import ConfigOption, DbOption, fail, open_store


def load_web_settings(config_path: Path | None) -> dict[str, Any]:
    """The web view's settings from the node config (reviewers, TLS, secret), if there is one."""
    try:
        from dicomnode.config import DEFAULT_CONFIG_PATH, ConfigError
        from dicomnode.config_file import load_config
        from dicomnode.web.server import settings_from_config
    except ImportError:  # pragma: no cover
        return {}
    if config_path is None and not DEFAULT_CONFIG_PATH.exists():
        return {}
    try:
        node_config = load_config(config_path)
    except ConfigError as exc:
        raise fail(str(exc)) from None
    return settings_from_config(node_config.web, node_config.log, node_config.spool.path)


def web_command(
    db: DbOption = None,
    config: ConfigOption = None,
    port: Annotated[int | None, typer.Option(help="TCP port (default: web.port, 8480)")] = None,
    host: Annotated[
        str | None,
        typer.Option(help="bind address (default: web.host, 127.0.0.1); non-loopback needs "
                          "--token or reviewers, and TLS"),
    ] = None,
    token: Annotated[
        str | None, typer.Option(envvar="DICOMNODE_WEB_TOKEN", help="read-only bearer token")
    ] = None,
    tls_cert: Annotated[str | None, typer.Option(help="PEM certificate (web.tls_cert)")] = None,
    tls_key: Annotated[str | None, typer.Option(help="PEM private key (web.tls_key)")] = None,
) -> None:
    """Serve the auditor's web view until interrupted (SIGINT or SIGTERM). Reviewers, TLS and
    the session secret come from the config's `web` block; the options override it."""
    import signal
    import threading

    from dicomnode.web.server import start_web
    from dicomnode.web.settings import WebConfigError

    # Own handlers, not KeyboardInterrupt: a process started with SIGINT ignored (a background
    # job of a non-interactive shell, nohup) never gets one, and SIGTERM must stop it too.
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    settings = load_web_settings(config)
    overrides = {"host": host, "port": port, "token": token, "tls_cert": tls_cert,
                 "tls_key": tls_key}  # fmt: skip
    settings.update({k: v for k, v in overrides.items() if v is not None})
    settings.setdefault("host", "127.0.0.1")
    settings.setdefault("port", 8480)
    store = open_store(db, config)
    try:
        server = start_web(store, **settings)
    except (WebConfigError, OSError) as exc:
        store.close()
        raise fail(str(exc)) from None
    typer.echo(f"auditor view on {server.url}", err=True)
    try:
        while server.thread.is_alive() and not stop.wait(0.5):
            pass
    finally:
        server.stop()
        store.close()


def export_reviews_command(
    out: Annotated[Path, typer.Option("--out", help="folder for labels.csv and reviews/<label>/")],
    archive: Annotated[
        Path | None,
        typer.Option(help="folder tree of DICOM files, searched by SOP Instance UID for films "
                          "no longer in the spool"),
    ] = None,
    spool: Annotated[
        Path | None,
        typer.Option(help="the node's spool, where it is not at the logged spool path"),
    ] = None,
    db: DbOption = None,
    config: ConfigOption = None,
) -> None:
    """Reviewed films (each instance's newest verdict) as training data in the xray-views
    layout: OUT/reviews/<label>/<name>.jpg and OUT/labels.csv, for `python -m training cv|ship
    --data ../shared/data/xray-views --data OUT`. Films found nowhere are listed, not fatal."""
    from dicomnode.logdb.review_export import export_reviews

    if archive is not None and not archive.is_dir():
        raise fail(f"--archive {archive}: not a folder")
    store = open_store(db, config)
    try:
        result = export_reviews(store, out, archive=archive, spool=spool)
    except OSError as exc:
        raise fail(f"cannot write {out}: {exc}") from None
    finally:
        store.close()
    for row in result.written:
        typer.echo(f"wrote {row['file']} ({row['label']}, view {row['view']}, region "
                   f"{row['region']})")
    for reviewed, why in result.missing:
        typer.echo(f"missing: instance {reviewed.instance_id} (SOP Instance UID "
                   f"{reviewed.sop_instance_uid}): {why}")
    typer.echo(f"{len(result.written)} reviewed films written to {out / 'labels.csv'}; "
               f"{len(result.missing)} missing")
