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
from training.cache import load_data_cached
from training.card import write_card
from training.data import LABELS, shared_dir
from training.export import VARIANTS, export_all, representative_images
from training.features import recipe_features
from training.fit import train
from training.model import Parts, check_weights
from training.recipes import Recipe

DEFAULT_VARIANT = "int8"


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
            "int8_fp32_agreement", "folds", "per_class_n", "wall_time_s", "recipe")
    return {k: data.get(k) for k in keys}


def refresh_card(out_dir: Path, images: Path | None, report_dir: Path | None = None,
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
    """Classify the reference DICOM files with every shipped variant, through the node's loader."""
    results: dict[str, dict[str, dict]] = {}
    for path in check_files():
        grey = preprocess_file(path)
        results[path.name] = {}
        for variant in variants:
            prediction = ViewClassifier.from_manifest(models_dir, variant).predict(grey)
            results[path.name][variant] = {
                "label": prediction.label,
                "p_AP": round(prediction.probabilities["AP"], 4),
            }
    return results


def ship(recipe: Recipe, images: Path | None, dicom: Path | None, weights: Path, out_dir: Path,
         runs_dir: Path, limit_per_class: int | None = None, variants=VARIANTS,
         report_dir: Path | None = None, latency_invokes: int = 300) -> dict:
    started = time.monotonic()
    check_weights(weights)
    cache_dir = runs_dir / "cache"
    dataset = load_data_cached(images, dicom, limit_per_class, cache_dir)
    if len(set(dataset.labels.tolist())) < 2:
        raise ValueError("training data needs both AP and LA images")
    pooled, activations = recipe_features(recipe, dataset.pixels, weights, cache_dir)
    y = dataset.labels
    print(f"training {recipe.name} on {len(y)} images x {len(recipe.train_views)} views",
          file=sys.stderr, flush=True)
    parts = Parts(weights, recipe.scaling, recipe.split_layer, recipe.dense_units, recipe.dropout)
    history = train(parts, recipe, pooled, y, np.arange(len(y)), activations)
    representative = representative_images(dataset.pixels, recipe.representative_samples,
                                            recipe.seed)
    build_dir = runs_dir / "ship"
    build_dir.mkdir(parents=True, exist_ok=True)
    parts.full.save(build_dir / "model.keras")  # kept out of git: models/ holds TFLite only
    files = export_all(parts.full, build_dir, representative, variants=variants,
                       log=lambda m: print(m, file=sys.stderr, flush=True))
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
            "input_range": "0-255 grey repeated to 3 channels (scaling is inside the model)",
            "output": "float32 softmax probabilities in the order of `labels`",
        }
    cv_metrics = load_cv_metrics(report_dir or out_dir / "report", recipe.name)
    manifest = {
        "name": "dicomnode view classifier (MobileNetV2 1.0, AP vs LA)",
        "labels": list(LABELS),
        "default_variant": DEFAULT_VARIANT if DEFAULT_VARIANT in entries else next(iter(entries)),
        "variants": entries,
        "preprocessing": dict(PREPROCESSING_SPEC),
        "recipe": recipe.to_json(),
        "versions": package_versions(),
        "training_data_sha256": dataset.fingerprint,
        "training_data": {
            "images": str(images) if images else None,
            "dicom": str(dicom) if dicom else None,
            "n": len(y),
            "per_class_n": {label: int((y == i).sum()) for i, label in enumerate(LABELS)},
            "skipped": len(dataset.skipped),
        },
        "weights_sha256": sha256_file(weights),
        "training": history,
        "cv_metrics": cv_metrics,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    manifest["checks"] = check_variants(out_dir, entries)
    manifest["wall_time_s"] = round(time.monotonic() - started, 1)
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    write_card(out_dir, manifest, images, latency_invokes)
    return manifest
