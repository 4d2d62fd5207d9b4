"""Is the Int8 latency our export or the runtime? Random-weights MobileNetV2 1.0 + the paper's head,
exported fresh in several flavours and timed with ai-edge-litert beside the shipped models.

Needs the `training` extra (TensorFlow builds the random-weights models). Prints a table and writes
bench/results/int8_export.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np

from bench.common import REPO_ROOT, machine, print_table, write_json

MODELS = REPO_ROOT / "models"


def _random_model(scaling: bool):
    import keras

    image = keras.Input((224, 224, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(image) if scaling else image
    base = keras.applications.MobileNetV2(input_shape=(224, 224, 3), include_top=False,
                                          weights=None)  # random weights: nothing downloaded
    x = keras.layers.GlobalAveragePooling2D()(base(x))
    x = keras.layers.Dense(128, activation="relu")(x)
    return keras.Model(image, keras.layers.Dense(2, activation="softmax")(x))


def _convert(model, int8: bool) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if int8:
        rng = np.random.default_rng(0)

        def dataset():
            for _ in range(20):
                yield [rng.uniform(0, 255, (1, 224, 224, 3)).astype(np.float32)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.float32
        converter.inference_output_type = tf.float32
    return converter.convert()


def _time(blob: bytes, threads: int, invokes: int, xnnpack: bool = True) -> dict[str, float]:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    # Without XNNPACK, LiteRT runs its builtin (ruy/optimized) kernels: the other int8 path.
    resolver = OpResolverType.AUTO if xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    interpreter = Interpreter(model_content=blob, num_threads=threads,
                              experimental_op_resolver_type=resolver)
    interpreter.allocate_tensors()
    index = interpreter.get_input_details()[0]["index"]
    x = np.random.default_rng(1).uniform(0, 255, (1, 224, 224, 3)).astype(np.float32)
    for _ in range(5):
        interpreter.set_tensor(index, x)
        interpreter.invoke()
    wall = []
    cpu_started = time.process_time()
    for _ in range(invokes):
        started = time.perf_counter()
        interpreter.set_tensor(index, x)
        interpreter.invoke()
        wall.append((time.perf_counter() - started) * 1000.0)
    delegated = sum(op["op_name"] == "DELEGATE" for op in interpreter._get_ops_details())
    return {"median_ms": statistics.median(wall),
            "cpu_ms": (time.process_time() - cpu_started) * 1000.0 / invokes,
            "delegate_partitions": delegated}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--invokes", type=int, default=200)
    parser.add_argument("--output", default="int8_export.json")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    blobs = {
        "random fp32, no scaling layer": _convert(_random_model(False), int8=False),
        "random int8, no scaling layer": _convert(_random_model(False), int8=True),
        "random int8, scaling in model": _convert(_random_model(True), int8=True),
    }
    manifest = json.loads((MODELS / "manifest.json").read_text())
    runs = [(name, blob, True) for name, blob in blobs.items()]
    for name in ("fp32", "int8"):
        blob = (MODELS / manifest["variants"][name]["file"]).read_bytes()
        runs += [(f"shipped {name}", blob, True), (f"shipped {name}, builtin kernels", blob, False)]
    rows, results = [], {}
    for name, blob, xnnpack in runs:
        one = _time(blob, 1, args.invokes, xnnpack)
        two = _time(blob, 2, args.invokes, xnnpack)
        results[name] = {"size_kb": len(blob) / 1024, "threads_1": one, "threads_2": two}
        rows.append([name, f"{len(blob) / 1024:,.0f}", f"{one['median_ms']:.2f}",
                     f"{one['cpu_ms']:.2f}", f"{two['median_ms']:.2f}", f"{two['cpu_ms']:.2f}",
                     one["delegate_partitions"], f"{os.getloadavg()[0]:.2f}"])
    print_table(["model", "KB", "median ms 1 thr", "CPU ms 1 thr", "median ms 2 thr",
                 "CPU ms 2 thr", "XNNPACK partitions", "load"], rows)
    print(f"CPU flags: {' '.join(machine()['simd_flags'])}")
    path = write_json(args.output, {"invokes": args.invokes, "results": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
