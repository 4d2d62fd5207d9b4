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
    """Activations of `parts.lower` for every image and view, keyed by pixels, scaling and layer."""

    def __init__(self, cache_dir: Path, parts, scaling: str, split_layer: str,
                 weights_key: str) -> None:
        self.cache_dir = Path(cache_dir)
        self.parts = parts
        self.tag = f"{scaling}-{split_layer}-{weights_key}"

    def get(self, pixels: np.ndarray, view: str) -> np.ndarray:
        path = self.cache_dir / f"features-{self.tag}-{pixels_key(pixels)}-{view}.npy"
        if path.is_file():
            return np.load(path)
        features = predict_batched(
            self.parts.lower, pixels, view, label=f"features {view}"
        ).astype(np.float32)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, features)
        tmp.replace(path)  # atomic: a killed run never leaves a half-written cache file
        return features


def predict_batched_arrays(model, x: np.ndarray, batch: int = 256) -> np.ndarray:
    import tensorflow as tf

    run = tf.function(lambda t: model(t, training=False), reduce_retracing=True)
    return np.concatenate([run(tf.constant(x[s:s + batch])).numpy()
                           for s in range(0, len(x), batch)])
