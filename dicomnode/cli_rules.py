"""`dicomnode rules check CONFIG` and `dicomnode rules test CONFIG FILE.dcm`."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated

import typer

from dicomnode.config import ConfigError, NodeConfig
from dicomnode.config_file import load_config

rules_app = typer.Typer(help="Check routing rules and try them on files.", no_args_is_help=True)


def _load(config: Path) -> NodeConfig:
    try:
        return load_config(config)
    except ConfigError as exc:
        typer.echo(f"dicomnode: {exc}", err=True)
        raise typer.Exit(2) from None


@rules_app.command("check")
def check(config: Annotated[Path, typer.Argument(help="YAML config file")]) -> None:
    """Validate the config; errors name the rule, the key and the line. Exit 0 when valid."""
    node_config = _load(config)
    rules = node_config.routing.rules
    default = node_config.routing.default
    typer.echo(f"{config}: valid; {len(rules)} rule(s), {len(node_config.destinations)} "
               f"destination(s)")  # fmt: skip
    for index, rule in enumerate(rules, 1):
        where = ", ".join(rule.destinations) if rule.action == "forward" else "nowhere"
        more = " (continue)" if rule.continue_ else ""
        typer.echo(f"  {index}. {rule.name}: {rule.action} -> {where}{more}")
    if default.action == "discard":
        typer.echo("  default: discard")
    else:
        names = default.destinations
        shown = ", ".join(names) if names is not None else "every destination"
        typer.echo(f"  default: forward -> {shown}")


@rules_app.command("test")
def test(
    config: Annotated[Path, typer.Argument(help="YAML config file")],
    files: Annotated[list[Path], typer.Argument(help="DICOM files")],
    calling_ae: Annotated[str, typer.Option(help="calling AE title to assume")] = "MODALITY",
    called_ae: Annotated[
        str | None, typer.Option(help="called AE title (default: the node's)")
    ] = None,
    peer: Annotated[str, typer.Option(help="peer IP address to assume")] = "127.0.0.1",
    classify: Annotated[
        bool, typer.Option("--classify", help="run the node's classifier and tag policy")
    ] = False,
    label: Annotated[
        str | None, typer.Option(help="assume this predicted label (AP, PA, LAT, OTHER)")
    ] = None,
    confidence: Annotated[float | None, typer.Option(help="assume this confidence")] = None,
    action: Annotated[str | None, typer.Option(help="assume this tag action")] = None,
) -> None:
    """Print which rules match each file and where it would go (nothing is sent)."""
    import pydicom

    from dicomnode import route as routing
    from dicomnode.logdb.entry import InstanceLogEntry

    node_config = _load(config)
    classifier = _classifier(node_config) if classify else None
    for path in files:
        try:
            ds = pydicom.dcmread(path)
        except Exception as exc:
            typer.echo(f"{path}: not readable as DICOM ({exc}); routed as unreadable")
            ds = None
        entry = InstanceLogEntry(
            received_at=datetime.now(timezone.utc),
            calling_ae=calling_ae,
            called_ae=called_ae or node_config.receive.ae_title,
            peer_address=f"{peer}:0",  # as receive records it: address:port
            sop_class_uid=str(ds.get("SOPClassUID", "")) if ds is not None else "",
            sop_instance_uid=str(ds.get("SOPInstanceUID", "")) if ds is not None else "",
            study_instance_uid=None,
            series_instance_uid=None,
            modality=str(ds.get("Modality", "")) if ds is not None else None,
            patient_id=None,
            transfer_syntax_uid=None,
            action="skipped" if ds is not None else "unreadable",
        )
        if classifier is not None and ds is not None:
            _classify(entry, ds, classifier, node_config)
        entry.label = label or entry.label
        entry.confidence = confidence if confidence is not None else entry.confidence
        entry.action = action or entry.action
        typer.echo(f"{path}: label {entry.label}, confidence {entry.confidence}, "
                   f"action {entry.action}")  # fmt: skip
        stopped = False
        for rule in node_config.routing.rules:
            if stopped:
                typer.echo(f"  -  {rule.name}: not tried (an earlier rule decided)")
                continue
            failed = routing.failed_conditions(rule.when, entry, ds)
            if failed:
                typer.echo(f"  no {rule.name}: " + "; ".join(failed))
            else:
                stopped = not rule.continue_
                typer.echo(f"  YES {rule.name}: {rule.action}"
                           + (" (continue)" if rule.continue_ else ""))  # fmt: skip
        decision = routing.route(node_config, entry, ds)
        where = ", ".join(decision.destinations) or "nowhere"
        typer.echo(f"  => {decision.action} -> {where} (rules: {', '.join(decision.rules)})")


def _classifier(node_config: NodeConfig):  # type: ignore[no-untyped-def]
    from dicomnode.classify import DEFAULT_MODELS_DIR, ViewClassifier

    return ViewClassifier.from_manifest(
        Path(node_config.classify.models_dir or DEFAULT_MODELS_DIR), node_config.classify.variant
    )


def _classify(entry, ds, classifier, node_config: NodeConfig) -> None:  # type: ignore[no-untyped-def]
    """The pipeline's classify + tag decision, without writing anything."""
    from dicomnode import tag
    from dicomnode.preprocess import PreprocessError, preprocess_dataset

    if (entry.modality or "").upper() not in {m.upper() for m in node_config.classify.modalities}:
        return
    try:
        prediction = classifier.predict(preprocess_dataset(ds),
                                        node_config.tag.threshold_overrides())
    except PreprocessError as exc:
        entry.action, entry.error = "unreadable", str(exc)
        return
    entry.label, entry.confidence = prediction.label, prediction.confidence
    before = tag.current_view(ds)
    entry.action = tag.decide(before, prediction, node_config.tag, tag.body_part_of(ds)).action
