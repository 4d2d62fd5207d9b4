"""`python -m training ship`: train on the whole pool, export every variant, write models/."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from dicomnode.classify import ViewClassifier, sha256_file
from dicomnode.preprocess import MODEL_SIZE, PREPROCESSING_SPEC, preprocess_file
from dicomnode.view_policy import CLASSES, HEADS
from training.cache import load_data_cached
from training.card import write_card
from training.data import FAMILIES, LABELS, data_origin, shared_dir
from training.export import VARIANTS, export_all, quantisation_of, representative_images
from training.features import recipe_features
from training.fit import train
from training.model import Parts, check_weights
from training.recipes import Recipe

DEFAULT_VARIANT = "int8"
VIEWS_NAME = "dicomnode view model (MobileNetV2 1.0: AP, PA, lateral, other)"
OUTPUT_VIEWS = ("float32 (1, 7): the logits of three heads, family [frontal, lateral, other], "
                "ap_pa [AP, PA], region [chest, other]; softmax per head in the reader "
                "(dicomnode.view_policy.head_probabilities)")


def package_versions() -> dict[str, str]:
    found = {}
    for name in ("tensorflow-cpu", "tensorflow", "keras", "ai-edge-litert", "numpy", "pydicom",
                 "pillow"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def load_cv_metrics(report_dir: Path, recipe_name: str) -> dict:
    """The CV report of the recipe (python -m training cv), as far as the manifest carries it."""
    report = report_dir / f"{recipe_name}.json"
    if not report.is_file():
        return {}
    data = json.loads(report.read_text())
    keys = ("protocol", "variants", "overall_int8_accuracy", "per_body_part", "per_source",
            "int8_fp32_agreement", "folds", "per_class_n", "wall_time_s", "recipe", "overall",
            "per_region", "int8_fp32_would_write_agreement", "policy")
    return {k: data.get(k) for k in keys}


def refresh_card(out_dir: Path, images: Path | list[Path] | None, report_dir: Path | None = None,
                 latency_invokes: int = 300) -> dict:
    """Re-read the CV reports into manifest.json (cv_metrics) and the model card, leaving the
    model files and their hashes alone (CV and ship can run in either order)."""
    manifest_path = out_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["cv_metrics"] = load_cv_metrics(report_dir or out_dir / "report",
                                             manifest["recipe"]["name"])
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    write_card(out_dir, manifest, images, latency_invokes)
    return manifest


def check_files() -> list[Path]:
    folder = shared_dir() / "dicom"
    return [p for p in (folder / "cr-chest-pa.dcm", folder / "cr-chest-pa-monochrome1.dcm")
            if p.is_file()]


def check_variants(models_dir: Path, variants) -> dict[str, dict[str, dict]]:
    """Classify the reference DICOM files with every shipped variant, through the node's loader
    and tag policy (shipped defaults, empty ViewPosition)."""
    from dicomnode import tag
    from dicomnode.config import TagConfig

    results: dict[str, dict[str, dict]] = {}
    for path in check_files():
        grey = preprocess_file(path)
        results[path.name] = {}
        for variant in variants:
            prediction = ViewClassifier.from_manifest(models_dir, variant).predict(grey)
            decision = tag.decide(None, prediction, TagConfig())
            results[path.name][variant] = {
                "label": prediction.label,
                "probabilities": {k: round(v, 4) for k, v in prediction.probabilities.items()},
                "would_write": decision.after if decision.writes else None,
            }
    return results


def policy_from_report(report_dir: Path, recipe: Recipe, fingerprint: str) -> dict:
    """Calibration and thresholds from the CV report of this recipe on this very data."""
    path = report_dir / f"{recipe.name}.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"no CV report {path}: the view model's calibration and write thresholds come from "
            f"cross-validation; run `python -m training cv --recipe {recipe.name}` on the same "
            "data first (the node refuses a model without them)")
    report = json.loads(path.read_text())
    if report.get("training_data_sha256") != fingerprint:
        raise ValueError(
            f"{path} was made on other data (training data sha256 "
            f"{report.get('training_data_sha256')}, now {fingerprint}): rerun `python -m "
            f"training cv --recipe {recipe.name}` on these data so the thresholds fit them")
    return report["policy"]


def ship(recipe: Recipe, images: Path | list[Path] | None, dicom: Path | None, weights: Path,
         out_dir: Path,
         runs_dir: Path, limit_per_class: int | None = None, variants=VARIANTS,
         report_dir: Path | None = None, latency_invokes: int = 300) -> dict:
    started = time.monotonic()
    check_weights(weights)
    cache_dir = runs_dir / "cache"
    dataset = load_data_cached(images, dicom, limit_per_class, cache_dir)
    views_task = recipe.heads == "views"
    if not views_task:  # the paper's two classes: obliques are neither
        dataset = dataset.subset(np.flatnonzero(dataset.families < 2))
    if not {0, 1} <= set(dataset.families.tolist()):
        raise ValueError("training data needs both frontal and lateral images")
    report_dir = report_dir or out_dir / "report"
    policy = (policy_from_report(report_dir, recipe, dataset.fingerprint) if views_task
              else None)
    pooled, activations = recipe_features(recipe, dataset.pixels, weights, cache_dir)
    y = dataset.labels
    print(f"training {recipe.name} on {len(y)} images x {len(recipe.train_views)} views",
          file=sys.stderr, flush=True)
    parts = Parts(weights, recipe.scaling, recipe.split_layer, recipe.dense_units, recipe.dropout,
                  recipe.heads, recipe.ap_pa_units)
    history = train(parts, recipe, pooled, y, np.arange(len(y)), activations,
                    samples=dataset.samples)
    representative = representative_images(dataset.pixels, recipe.representative_samples,
                                            recipe.seed)
    build_dir = runs_dir / "ship"
    build_dir.mkdir(parents=True, exist_ok=True)
    parts.full.save(build_dir / "model.keras")  # kept out of git: models/ holds TFLite only
    files = export_all(parts.exported, build_dir, representative, variants=variants,
                       log=lambda m: print(m, file=sys.stderr, flush=True),
                       int8_float_stem_blocks=recipe.int8_float_stem_blocks)
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = {}
    for variant, path in files.items():
        target = out_dir / path.name
        shutil.copyfile(path, target)
        entries[variant] = {
            "file": target.name,
            "sha256": sha256_file(target),
            "size_bytes": target.stat().st_size,
            "input_shape": [1, MODEL_SIZE, MODEL_SIZE, 3],
            "input_dtype": "float32",
            "quantisation": quantisation_of(variant, recipe.int8_float_stem_blocks),
            "input_range": "0-255 grey repeated to 3 channels (scaling is inside the model)",
            "output": (OUTPUT_VIEWS if views_task
                       else "float32 softmax probabilities in the order of `labels`"),
        }
    cv_metrics = load_cv_metrics(report_dir, recipe.name)
    head_fields = ({"heads": "views", "outputs": {k: list(v) for k, v in HEADS.items()},
                    "scores": "logits",
                    "calibration": policy["calibration"], "thresholds": policy["thresholds"],
                    "thresholds_chosen": {k: policy[k] for k in (
                        "max_wrong_write_rate", "chosen_on", "min_int8_fp32_agreement",
                        "int8_fp32_agreement") if k in policy}}
                   if views_task and policy else {"heads": "binary"})
    manifest = {
        "name": (VIEWS_NAME if views_task
                 else "dicomnode view classifier (MobileNetV2 1.0, AP vs LA)"),
        "labels": list(CLASSES) if views_task else list(LABELS),
        **head_fields,
        "default_variant": DEFAULT_VARIANT if DEFAULT_VARIANT in entries else next(iter(entries)),
        "variants": entries,
        "preprocessing": dict(PREPROCESSING_SPEC),
        "recipe": recipe.to_json(),
        "versions": package_versions(),
        "training_data_sha256": dataset.fingerprint,
        "training_data": {
            "images": ([str(f) for f in images] if isinstance(images, list)
                       else str(images) if images else None),
            "dicom": str(dicom) if dicom else None,
            "n": len(y),
            "per_class_n": {f: int((y == i).sum()) for i, f in enumerate(FAMILIES)},
            "ap_pa_known_n": sum(s.view in ("AP", "PA") for s in dataset.samples),
            "patients": len({s.group for s in dataset.samples}),
            "skipped": len(dataset.skipped),
            **data_origin(dataset.samples),
        },
        "weights_sha256": sha256_file(weights),
        "training": history,
        "cv_metrics": cv_metrics,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    manifest["checks"] = check_variants(out_dir, entries) if views_task else {}
    manifest["wall_time_s"] = round(time.monotonic() - started, 1)
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    write_card(out_dir, manifest, images, latency_invokes)
    return manifest
