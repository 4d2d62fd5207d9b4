"""Frozen-base activations, computed once per image and view and cached in training-runs/cache."""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path

import numpy as np

VIEWS = ("orig", "flip", "invert", "invert_flip")


def view_of(pixels: np.ndarray, view: str) -> np.ndarray:
    """uint8 (n,224,224) -> float32 (n,224,224,3) 0-255 as the node feeds it, in one view."""
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}")
    grey = pixels
    if "invert" in view:
        grey = 255 - grey
    if "flip" in view:
        grey = grey[:, :, ::-1]
    return np.repeat(grey[..., np.newaxis], 3, axis=3).astype(np.float32)


def pixels_key(pixels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()[:16]


def predict_batched(model, pixels: np.ndarray, view: str = "orig", batch: int = 32,
                    label: str = "") -> np.ndarray:
    """Run a Keras model over uint8 grey images in one view, a batch at a time (bounded memory)."""
    import tensorflow as tf

    run = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    chunks = []
    started = time.monotonic()
    for start in range(0, len(pixels), batch):
        chunks.append(run(tf.constant(view_of(pixels[start:start + batch], view))).numpy())
        done = min(start + batch, len(pixels))
        if label and (done == len(pixels) or (start // batch) % 8 == 0):
            rate = done / max(time.monotonic() - started, 1e-6)
            print(f"\r  {label}: {done}/{len(pixels)} images ({rate:.1f}/s)", end="",
                  file=sys.stderr, flush=True)
    if label:
        print(file=sys.stderr)
    return np.concatenate(chunks) if chunks else np.zeros((0,), np.float32)


class FeatureCache:
    """Outputs of a frozen `lower` model for every image and view, keyed by pixels and tag."""

    def __init__(self, cache_dir: Path, lower, tag: str) -> None:
        self.cache_dir = Path(cache_dir)
        self.lower = lower
        self.tag = tag

    def get(self, pixels: np.ndarray, view: str) -> np.ndarray:
        path = self.cache_dir / f"features-{self.tag}-{pixels_key(pixels)}-{view}.npy"
        if path.is_file():
            return np.load(path)
        features = predict_batched(self.lower, pixels, view, label=f"{self.tag} {view}")
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, features.astype(np.float32))
        tmp.replace(path)  # atomic: a killed run never leaves a half-written cache file
        return features.astype(np.float32)


def weights_key(weights: Path) -> str:
    digest = hashlib.sha256()
    with open(weights, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def recipe_features(recipe, pixels: np.ndarray, weights: Path, cache_dir: Path
                    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
    """(pooled base features per training view, split activations per fine-tuning view or None).

    Pooled features of the frozen ImageNet base serve the head stage of every recipe; the
    split-layer activations feed the fine-tuning stage. Both are computed once per view.
    """
    from training.model import POOLED_LAYER, Parts

    wkey = weights_key(weights)
    views = sorted(set(recipe.train_views) | {"orig"})
    pooled_parts = Parts(weights, recipe.scaling, POOLED_LAYER)
    cache = FeatureCache(cache_dir, pooled_parts.lower, f"{recipe.scaling}-{POOLED_LAYER}-{wkey}")
    pooled = {v: cache.get(pixels, v) for v in views}
    if recipe.split_layer == POOLED_LAYER or not recipe.fine_tune_epochs:
        return pooled, None
    split_parts = Parts(weights, recipe.scaling, recipe.split_layer)
    cache = FeatureCache(cache_dir, split_parts.lower,
                         f"{recipe.scaling}-{recipe.split_layer}-{wkey}")
    tune_views = sorted(set(recipe.fine_tune_views or recipe.train_views) | {"orig"})
    return pooled, {v: cache.get(pixels, v) for v in tune_views}
