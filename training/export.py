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


def quantisation_of(variant: str, int8_float_stem_blocks: int = 0) -> str:
    """What the manifest says of a variant's numbers, so nobody takes a mixed model for a
    full-integer one."""
    if variant == "int8" and int8_float_stem_blocks > 0:
        return (f"int8 weights (per channel) and activations, except the input scaling, the stem "
                f"and blocks 1-{int8_float_stem_blocks}, which stay float32")
    return {"fp32": "none: float32", "fp16": "float16 weights, float32 compute",
            "dynamic": "int8 weights, float32 activations (dynamic range)",
            "int8": "full integer: int8 weights (per channel) and activations"}[variant]


def float_stem_layers(blocks: int) -> tuple[str, ...]:
    """Parts of the tensor names of MobileNetV2's input scaling, stem and inverted-residual
    blocks 1..`blocks` (the 112x112 and 56x56 layers for 3)."""
    return ("rescale_", "/Conv1", "bn_Conv1", "expanded_conv_",
            *(f"/block_{n}_" for n in range(1, blocks + 1)))


def _int8_float_stem(converter, representative: np.ndarray, blocks: int) -> bytes:
    """Int8 everywhere except the input scaling, the stem and blocks 1..`blocks`, which stay
    float32 (selective quantisation through TFLite's QuantizationDebugger).

    Why: on the view model, full-integer quantisation of these high-resolution layers is where
    Int8 and FP32 part ways (measured per layer, 2026-12-08; models/report/error-review.md);
    keeping them float cut the Int8-FP32 logit noise about threefold. The recipe option
    `int8_float_stem_blocks` asks for it."""
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    full_integer = converter.convert()
    names = [t["name"] for t in Interpreter(model_content=full_integer).get_tensor_details()]
    parts = float_stem_layers(blocks)
    keep_float = [n for n in names if any(part in n for part in parts)]
    if not keep_float:
        raise ValueError(f"int8 float stem: no tensor of the model matches {parts}")
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=lambda: iter([[representative[:1]]]),
        debug_options=tf.lite.experimental.QuantizationDebugOptions(
            denylisted_nodes=keep_float))
    return debugger.get_nondebug_quantized_model()


def convert(model, variant: str, representative: np.ndarray | None = None,
            int8_float_stem_blocks: int = 0) -> bytes:
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
        if int8_float_stem_blocks > 0:
            with contextlib.redirect_stdout(io.StringIO()):
                return _int8_float_stem(converter, representative, int8_float_stem_blocks)
    else:
        raise ValueError(f"unknown variant {variant!r}; known: {VARIANTS}")
    # Keras prints every captured variable of the SavedModel it writes; keep logs readable.
    with contextlib.redirect_stdout(io.StringIO()):
        return converter.convert()


def export_all(model, out_dir: Path, representative: np.ndarray, prefix: str = "model",
               variants=VARIANTS, log: Callable[[str], None] = print,
               int8_float_stem_blocks: int = 0) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for variant in variants:
        started = time.monotonic()
        path = out_dir / f"{prefix}_{variant}.tflite"
        path.write_bytes(convert(model, variant, representative, int8_float_stem_blocks))
        log(f"  exported {variant}: {path.stat().st_size / 1024:.0f} KB"
            f" ({time.monotonic() - started:.0f}s)")
        files[variant] = path
    return files
