"""`python -m training <command>`: cv (cross-validate a recipe) and ship (write models/)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from training.cache import DEFAULT_RUNS_DIR, REPO_ROOT
from training.data import default_images_dir, default_weights_path
from training.export import VARIANTS
from training.model import WeightsMissingError
from training.recipes import RECIPES, get_recipe

app = typer.Typer(help="Train, cross-validate and ship the AP/LA view classifier.",
                  no_args_is_help=True, add_completion=False)

# typer needs Optional[...] at run time on Python 3.10 (PEP 604 unions in Annotated are fine
# from 3.10, but keep one spelling for all options).
ImagesOpt = Annotated[Optional[list[Path]], typer.Option(  # noqa: UP045
    "--data", "--images",
    help="Labelled image folder with labels.csv (the xray-views layout); repeat for several, "
    "e.g. --data ../shared/data/xray-views --data reviews/ (an export-reviews folder). Default: "
    "$DICOMNODE_SHARED/data/xray-views unless --dicom is given.")]
DicomOpt = Annotated[Optional[Path], typer.Option(  # noqa: UP045
    help="DICOM folder tree, labelled by each file's ViewPosition (AP/PA -> AP, LL/RL -> LA).")]
WeightsOpt = Annotated[Optional[Path], typer.Option(  # noqa: UP045
    help="MobileNetV2 1.0 ImageNet no-top .h5 weights (never downloaded; default "
    "$DICOMNODE_SHARED/weights/...).")]
RecipeOpt = Annotated[str, typer.Option(help=f"Training recipe: {', '.join(RECIPES)}.")]
RunsOpt = Annotated[Path, typer.Option(help="Work folder (feature caches, Keras files).")]
LimitOpt = Annotated[Optional[int], typer.Option(  # noqa: UP045
    help="Use at most N images per class (quick runs, tests).")]
SetOpt = Annotated[Optional[list[str]], typer.Option(  # noqa: UP045
    "--set", help="Change one recipe field for this run, e.g. --set epochs=10 (repeatable); "
    "the report records the recipe used.")]
ScalingOpt = Annotated[Optional[str], typer.Option(  # noqa: UP045
    help="Override the recipe's pixel scaling: unit (x/255) or symmetric ([-1, 1]).")]


@app.callback()
def main() -> None:
    """Train, cross-validate and ship the AP/LA view classifier (needs the `training` extra)."""


def _inputs(images: list[Path] | None,
            dicom: Path | None) -> tuple[Path | list[Path] | None, Path | None]:
    """One folder as itself (its data sha256 as before), several as a list."""
    if not images:
        return (default_images_dir() if dicom is None else None), dicom
    missing = [str(f) for f in images if not (Path(f) / "labels.csv").is_file()]
    if missing:
        _fail(f"no labels.csv in {', '.join(missing)} (--data takes folders in the xray-views "
              "layout)")
    return (images[0] if len(images) == 1 else list(images)), dicom


def _variants(text: str) -> tuple[str, ...]:
    chosen = tuple(v.strip() for v in text.split(",") if v.strip() and v.strip() != "none")
    unknown = set(chosen) - set(VARIANTS)
    if unknown:
        _fail(f"unknown variant(s) {sorted(unknown)}; known: {', '.join(VARIANTS)}")
    return chosen


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


@app.command()
def ship(
    images: ImagesOpt = None,
    dicom: DicomOpt = None,
    weights: WeightsOpt = None,
    recipe: RecipeOpt = "shipped",
    out: Annotated[Path, typer.Option(help="Folder for TFLite files + manifest.")] = (
        REPO_ROOT / "models"),
    runs_dir: RunsOpt = DEFAULT_RUNS_DIR,
    limit_per_class: LimitOpt = None,
    scaling: ScalingOpt = None,
    overrides: SetOpt = None,
) -> None:
    """Train on all data (class-weighted), export every variant, write manifest.json into --out."""
    from training.ship import ship as run_ship

    images, dicom = _inputs(images, dicom)
    try:
        manifest = run_ship(get_recipe(recipe, scaling, overrides), images, dicom,
                            weights or default_weights_path(), out, runs_dir, limit_per_class)
    except (WeightsMissingError, FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    summary = {k: manifest[k] for k in ("default_variant", "training_data_sha256", "checks",
                                        "wall_time_s")}
    summary["sizes_kb"] = {k: round(v["size_bytes"] / 1024) for k, v in
                           manifest["variants"].items()}
    json.dump(summary, sys.stdout, indent=2)
    print()


@app.command()
def cv(
    images: ImagesOpt = None,
    dicom: DicomOpt = None,
    weights: WeightsOpt = None,
    recipe: RecipeOpt = "paper",
    folds: Annotated[int, typer.Option(help="Number of stratified folds.")] = 5,
    balanced: Annotated[Optional[int], typer.Option(  # noqa: UP045
        help="Draw N images per class (the paper's protocol); default: all images, "
        "class-weighted.")] = None,
    report_dir: Annotated[Path, typer.Option(help="Where the report files go.")] = (
        REPO_ROOT / "models" / "report"),
    report_name: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="Report file stem (default: the recipe name).")] = None,
    runs_dir: RunsOpt = DEFAULT_RUNS_DIR,
    limit_per_class: LimitOpt = None,
    scaling: ScalingOpt = None,
    overrides: SetOpt = None,
    steady_invokes: Annotated[int, typer.Option(help="Invokes for the steady-state median.")] = 100,
    variants: Annotated[str, typer.Option(
        help="Comma-separated TFLite variants to export and evaluate (none: Keras only, for "
        "quick recipe trials).")] = ",".join(VARIANTS),
) -> None:
    """Stratified k-fold CV: train, export all variants, evaluate with LiteRT, write a report."""
    from training.cv import cross_validate
    from training.report import write_report

    images, dicom = _inputs(images, dicom)
    try:
        result = cross_validate(get_recipe(recipe, scaling, overrides), images, dicom,
                                weights or default_weights_path(), runs_dir, folds, balanced,
                                limit_per_class, variants=_variants(variants),
                                steady_invokes=steady_invokes)
    except (WeightsMissingError, FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    summary = write_report(result, report_dir, report_name)
    brief = {k: summary[k] for k in ("protocol", "variants", "per_body_part",
                                     "int8_fp32_agreement", "overall_int8_accuracy",
                                     "wall_time_s")}
    json.dump(brief, sys.stdout, indent=2)
    print()


@app.command()
def card(
    images: ImagesOpt = None,
    out: Annotated[Path, typer.Option(help="Folder with manifest.json and report/.")] = (
        REPO_ROOT / "models"),
) -> None:
    """Refresh manifest.json's CV metrics and the model card (README.md) from report/*.json."""
    from training.ship import refresh_card

    folders = _inputs(images, None)[0]
    try:
        manifest = refresh_card(out, folders)
    except FileNotFoundError as exc:
        _fail(str(exc))
    typer.echo(f"card written; cv_metrics from {manifest['recipe']['name']!r}: "
               f"{bool(manifest['cv_metrics'])}")
