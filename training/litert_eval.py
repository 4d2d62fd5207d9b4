"""Run TFLite variants with ai-edge-litert (1 thread, XNNPACK) the way the node does."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from training.features import view_of

STEADY_INVOKES = 100


@dataclass
class VariantRun:
    probabilities: np.ndarray  # (n, 2) binary or (n, 7) view model
    warmup_ms: float  # fresh interpreter: allocate_tensors + first invoke
    steady_ms: float  # median of STEADY_INVOKES invokes on one image
    size_kb: float


def run_tflite(path: Path, pixels: np.ndarray, num_threads: int = 1,
               steady_invokes: int = STEADY_INVOKES) -> VariantRun:
    started = time.perf_counter()
    interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]["index"]
    out = interpreter.get_output_details()[0]["index"]
    first = view_of(pixels[:1], "orig") if len(pixels) else np.zeros((1, 224, 224, 3), np.float32)
    interpreter.set_tensor(inp, first)
    interpreter.invoke()
    warmup_ms = (time.perf_counter() - started) * 1000.0
    times = []
    for _ in range(steady_invokes):
        t0 = time.perf_counter()
        interpreter.set_tensor(inp, first)
        interpreter.invoke()
        times.append((time.perf_counter() - t0) * 1000.0)
    width = int(np.prod(interpreter.get_output_details()[0]["shape"][1:]))
    probs = np.zeros((len(pixels), width), dtype=np.float32)
    for i in range(len(pixels)):
        interpreter.set_tensor(inp, view_of(pixels[i:i + 1], "orig"))
        interpreter.invoke()
        probs[i] = interpreter.get_tensor(out)[0]
    return VariantRun(probs, warmup_ms, statistics.median(times) if times else 0.0,
                      Path(path).stat().st_size / 1024.0)


def time_keras(model, steady_invokes: int = STEADY_INVOKES) -> tuple[float, float]:
    """(warm-up ms, steady ms) for the Keras model inside a tf.function, one image."""
    import tensorflow as tf

    x = tf.zeros((1, 224, 224, 3), tf.float32)
    started = time.perf_counter()
    run = tf.function(lambda t: model(t, training=False))
    run(x).numpy()
    warmup_ms = (time.perf_counter() - started) * 1000.0
    times = []
    for _ in range(steady_invokes):
        t0 = time.perf_counter()
        run(x).numpy()
        times.append((time.perf_counter() - t0) * 1000.0)
    return warmup_ms, statistics.median(times)
