"""Keras model -> the four TFLite variants of the paper (float input and output kept)."""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

VARIANTS = ("fp32", "fp16", "dynamic", "int8")


def representative_images(pixels: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """A varied calibration set from training pixels: random images in all four views."""
    from training.features import VIEWS, view_of

    rng = np.random.default_rng(seed)
    pick = rng.choice(len(pixels), size=min(count, len(pixels)), replace=False)
    views = [VIEWS[i % len(VIEWS)] for i in range(len(pick))]
    return np.concatenate([view_of(pixels[i:i + 1], v) for i, v in zip(pick, views, strict=True)])


def convert(model, variant: str, representative: np.ndarray | None = None) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if variant == "fp32":
        pass
    elif variant == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif variant == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif variant == "int8":
        if representative is None or len(representative) == 0:
            raise ValueError("int8 needs a representative dataset")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]

        def dataset():
            for i in range(len(representative)):
                yield [representative[i:i + 1]]

        converter.representative_dataset = dataset
        # Integer kernels everywhere (per-channel weights are the converter default); the
        # float input/output stay so the node feeds 0-255 floats to every variant alike.
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.float32
        converter.inference_output_type = tf.float32
    else:
        raise ValueError(f"unknown variant {variant!r}; known: {VARIANTS}")
    # Keras prints every captured variable of the SavedModel it writes; keep logs readable.
    with contextlib.redirect_stdout(io.StringIO()):
        return converter.convert()


def export_all(model, out_dir: Path, representative: np.ndarray, prefix: str = "model",
               variants=VARIANTS, log: Callable[[str], None] = print) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for variant in variants:
        started = time.monotonic()
        path = out_dir / f"{prefix}_{variant}.tflite"
        path.write_bytes(convert(model, variant, representative))
        log(f"  exported {variant}: {path.stat().st_size / 1024:.0f} KB"
            f" ({time.monotonic() - started:.0f}s)")
        files[variant] = path
    return files
