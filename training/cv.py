"""`python -m training cv`: stratified k-fold CV of a recipe, all variants run with LiteRT."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dicomnode.view_policy import head_probabilities
from training.cache import load_data_cached
from training.data import Dataset
from training.export import VARIANTS, export_all, representative_images
from training.features import recipe_features
from training.fit import predict, train
from training.litert_eval import run_tflite, time_keras
from training.model import Parts, check_weights
from training.recipes import Recipe

ALL_VARIANTS = ("keras", *VARIANTS)


def stratified_folds(y: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Fold number per sample; each class is spread evenly over the k folds."""
    if k < 2:
        raise ValueError("need at least 2 folds")
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), dtype=np.int64)
    for cls in np.unique(y):
        members = np.flatnonzero(y == cls)
        if len(members) < k:
            raise ValueError(f"class {cls} has {len(members)} images, fewer than {k} folds")
        fold[rng.permutation(members)] = np.arange(len(members)) % k
    return fold


def grouped_folds(strata: list[str], groups: list[str], k: int, seed: int = 0) -> np.ndarray:
    """Fold number per sample: no group (patient) in two folds, strata spread evenly
    (scikit-learn's StratifiedGroupKFold)."""
    import warnings

    from sklearn.model_selection import StratifiedGroupKFold

    if k < 2:
        raise ValueError("need at least 2 folds")
    if len(set(groups)) < k:
        raise ValueError(f"{len(set(groups))} patient groups, fewer than {k} folds")
    fold = np.empty(len(strata), dtype=np.int64)
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # rare strata (spine laterals) cannot fill every fold
        warnings.simplefilter("ignore", UserWarning)
        for number, (_, test) in enumerate(splitter.split(np.zeros(len(strata)), strata,
                                                          groups)):
            fold[test] = number
    return fold


def family_accuracy(probabilities: np.ndarray, families: np.ndarray) -> float:
    """Frontal vs lateral accuracy: binary outputs as they are; view outputs by the larger of
    p(frontal) and p(lateral), over frontal and lateral films (obliques have no such truth)."""
    rows = families < 2
    if not rows.any():
        return float("nan")
    predicted = probabilities[rows][:, :2].argmax(axis=1)
    return float((predicted == families[rows]).mean())


def balanced_subset(y: np.ndarray, per_class: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    picks = []
    for cls in np.unique(y):
        members = np.flatnonzero(y == cls)
        if len(members) < per_class:
            raise ValueError(f"--balanced {per_class}: class {cls} has only {len(members)} images")
        picks.append(rng.choice(members, size=per_class, replace=False))
    return np.sort(np.concatenate(picks))


@dataclass
class FoldResult:
    fold: int
    n_train: int
    n_test: int
    accuracy: dict[str, float] = field(default_factory=dict)
    size_kb: dict[str, float] = field(default_factory=dict)
    warmup_ms: dict[str, float] = field(default_factory=dict)
    steady_ms: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0


@dataclass
class CVResult:
    recipe: Recipe
    dataset: Dataset  # the samples cross-validated (after --balanced)
    folds: int
    fold_of: np.ndarray
    fold_results: list[FoldResult]
    # out-of-fold probabilities per variant, row i = dataset.samples[i]
    oof: dict[str, np.ndarray]
    wall_time_s: float
    balanced: int | None
    skipped: list


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cross_validate(recipe: Recipe, images: Path | list[Path] | None, dicom: Path | None,
                   weights: Path, runs_dir: Path, folds: int = 5, balanced: int | None = None,
                   limit_per_class: int | None = None, variants=VARIANTS,
                   steady_invokes: int = 100) -> CVResult:
    import keras

    started = time.monotonic()
    check_weights(weights)
    cache_dir = runs_dir / "cache"
    full = load_data_cached(images, dicom, limit_per_class, cache_dir)
    views_task = recipe.heads == "views"
    # The paper's task has two classes: obliques are neither and stay out of it.
    pool = (np.arange(len(full.samples)) if views_task
            else np.flatnonzero(full.families < 2))
    keep = (pool[balanced_subset(full.families[pool], balanced, recipe.seed)] if balanced
            else pool)
    data = full.subset(keep)
    y = data.labels
    if views_task:
        fold_of = grouped_folds([f"{s.region}/{s.label}" for s in data.samples],
                                [s.group for s in data.samples], folds, recipe.seed)
    else:
        fold_of = stratified_folds(y, folds, recipe.seed)
    log(f"cv {recipe.name}: {len(y)} images (frontal {int((y == 0).sum())}, lateral "
        f"{int((y == 1).sum())}, oblique {int((y == 2).sum())}), {folds} folds"
        f"{' grouped by patient' if views_task else ''}, views {list(recipe.train_views)}, "
        f"scaling {recipe.scaling}, heads {recipe.heads}")
    all_pooled, all_activations = recipe_features(recipe, full.pixels, weights, cache_dir)
    pooled = {v: f[keep] for v, f in all_pooled.items()}
    activations = ({v: f[keep] for v, f in all_activations.items()}
                   if all_activations is not None else None)
    names = ("keras", *variants)
    width = 7 if views_task else 2
    oof = {name: np.full((len(y), width), np.nan, dtype=np.float32) for name in names}
    results = []
    for k in range(folds):
        fold_started = time.monotonic()
        keras.backend.clear_session()
        train_idx = np.flatnonzero(fold_of != k)
        test_idx = np.flatnonzero(fold_of == k)
        log(f"fold {k + 1}/{folds}: train {len(train_idx)}, test {len(test_idx)}")
        parts = Parts(weights, recipe.scaling, recipe.split_layer, recipe.dense_units,
                      recipe.dropout, recipe.heads, recipe.ap_pa_units)
        history = train(parts, recipe, pooled, y, train_idx, activations,
                        balanced=balanced is not None, samples=data.samples)
        result = FoldResult(k, len(train_idx), len(test_idx))
        oof["keras"][test_idx] = (
            predict(parts.upper, activations["orig"][test_idx]) if parts.fine_tuned
            else predict(parts.head, pooled["orig"][test_idx]))
        fold_dir = runs_dir / f"cv-{recipe.name}-{recipe.scaling}" / f"fold{k + 1}"
        fold_dir.mkdir(parents=True, exist_ok=True)
        keras_path = fold_dir / "model.keras"
        parts.full.save(keras_path)
        result.size_kb["keras"] = keras_path.stat().st_size / 1024
        result.warmup_ms["keras"], result.steady_ms["keras"] = time_keras(parts.full,
                                                                          steady_invokes)
        representative = representative_images(data.pixels[train_idx],
                                                recipe.representative_samples, recipe.seed + k)
        files = export_all(parts.exported, fold_dir, representative, variants=variants, log=log,
                           int8_float_stem_blocks=recipe.int8_float_stem_blocks)
        eval_started = time.monotonic()
        for variant, path in files.items():
            run = run_tflite(path, data.pixels[test_idx], steady_invokes=steady_invokes)
            # view model: the exported logits become per-head probabilities as in the node
            oof[variant][test_idx] = (head_probabilities(run.probabilities, "logits")
                                      if views_task else run.probabilities)
            result.size_kb[variant] = run.size_kb
            result.warmup_ms[variant] = run.warmup_ms
            result.steady_ms[variant] = run.steady_ms
        log(f"  evaluated {len(files)} LiteRT variants ({time.monotonic() - eval_started:.0f}s)")
        for name in names:
            result.accuracy[name] = family_accuracy(oof[name][test_idx], y[test_idx])
        result.wall_s = time.monotonic() - fold_started
        log("  " + ", ".join(f"{n} {result.accuracy[n] * 100:.1f}%" for n in names)
            + f" ({result.wall_s:.0f}s; train {history})")
        results.append(result)
    # Out-of-fold outputs kept beside the fold models, for looking at them again without
    # retraining (training-runs/ is git-ignored).
    np.savez_compressed(runs_dir / f"cv-{recipe.name}-{recipe.scaling}" / "oof.npz",
                        fold_of=fold_of, **oof)
    return CVResult(recipe, data, folds, fold_of, results, oof,
                    time.monotonic() - started, balanced, full.skipped)
