"""Classifier variants beside the paper's figures (issue 5, item 1).

For every variant in models/manifest.json (and the Keras model when one is present): file size,
load + allocate time and the first invoke in a fresh process (one subprocess per measurement),
steady-state median/p95 over >= 500 invokes with 1 and 2 threads, all through the node's own
`dicomnode.classify.ViewClassifier` (its start-up warm-up switched off so the cold invoke can be
seen). Then a started node (`python -m dicomnode serve`) is sent images and the log rows'
inference_ms show whether its first image costs what the later ones do (goal: <= 2x).

  unshare -n sh -c 'ip link set lo up && .venv/bin/python -m bench.classifier'
  ... --quick (few invokes, 1 thread, no Keras: a smoke run)  --keras PATH  --no-node
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.uid import ComputedRadiographyImageStorage

from bench.common import REPO_ROOT, SHARED, median, percentile, print_table, write_json

MODELS_DIR = REPO_ROOT / "models"
SAMPLE = "dicom/cr-chest-pa.dcm"  # a real radiograph, preprocessed as the node does
# The paper (../shared/paper.md): steady-state ms on a PC (RTX 4080) and a Jetson Orin Nano Super;
# sizes in KB where stated. Warm-up (first inference) was 20-30x the steady state there.
PAPER = {
    "keras": {"size_kb": 11273, "pc_ms": 54.0, "jetson_ms": 126.0},
    "fp32": {"size_kb": None, "pc_ms": None, "jetson_ms": None},
    "fp16": {"size_kb": 4677, "pc_ms": None, "jetson_ms": None},
    "dynamic": {"size_kb": 2603, "pc_ms": None, "jetson_ms": None},
    "int8": {"size_kb": None, "pc_ms": 3.43, "jetson_ms": 14.66},
}
INT8_GOAL_MS = 3.5
FIRST_IMAGE_GOAL = 2.0


# -- measurements, each in a fresh process ---------------------------------------------------------
def sample_input() -> np.ndarray:
    from dicomnode.preprocess import preprocess_file

    return preprocess_file(SHARED / SAMPLE)


def measure_tflite(variant: str, threads: int, invokes: int) -> dict[str, Any]:
    started = time.perf_counter()
    from dicomnode import classify

    import_ms = (time.perf_counter() - started) * 1000
    classify.WARMUP_INVOKES = 0  # the node warms up at start; here the cold invoke is the point
    grey = sample_input()
    started = time.perf_counter()
    classifier = classify.ViewClassifier.from_manifest(MODELS_DIR, variant, num_threads=threads)
    load_ms = (time.perf_counter() - started) * 1000  # sha256 check + load + allocate_tensors
    cpu_started = time.process_time()
    first = classifier.predict(grey)
    first_cpu_ms = (time.process_time() - cpu_started) * 1000
    second = classifier.predict(grey)
    steady, cpu = [], []
    for _ in range(invokes):
        cpu_started = time.process_time()
        steady.append(classifier.predict(grey).inference_ms)
        cpu.append((time.process_time() - cpu_started) * 1000)
    return {"import_ms": import_ms, "load_allocate_ms": load_ms,
            "first_invoke_ms": first.inference_ms, "first_invoke_cpu_ms": first_cpu_ms,
            "second_invoke_ms": second.inference_ms, "steady": steady, "cpu_steady": cpu,
            "p_ap": first.probabilities.get("AP")}  # fmt: skip


def measure_keras(path: Path, threads: int, invokes: int) -> dict[str, Any]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    started = time.perf_counter()
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    import keras

    import_ms = (time.perf_counter() - started) * 1000
    grey = sample_input()
    batch = np.repeat(grey[np.newaxis, :, :, np.newaxis], 3, axis=3).astype(np.float32)
    started = time.perf_counter()
    model = keras.models.load_model(path, compile=False)
    load_ms = (time.perf_counter() - started) * 1000

    cpu: list[float] = []

    def timed(call) -> tuple[float, Any]:
        started, cpu_started = time.perf_counter(), time.process_time()
        out = np.asarray(call(batch))
        cpu.append((time.process_time() - cpu_started) * 1000)
        return (time.perf_counter() - started) * 1000, out

    first_ms, out = timed(lambda x: model(x, training=False))
    eager = [timed(lambda x: model(x, training=False))[0] for _ in range(max(5, invokes // 5))]
    compiled = tf.function(lambda x: model(x, training=False))
    first_compiled_ms, _ = timed(compiled)  # traces the graph
    cpu.clear()
    steady = [timed(compiled)[0] for _ in range(invokes)]
    compiled_cpu = list(cpu)
    predict_count = max(5, invokes // 10)
    predict = [timed(lambda x: model.predict(x, verbose=0))[0] for _ in range(predict_count)]
    return {"import_ms": import_ms, "load_allocate_ms": load_ms, "first_invoke_ms": first_ms,
            "eager_steady": eager, "first_tf_function_ms": first_compiled_ms, "steady": steady,
            "predict_steady": predict, "cpu_steady": compiled_cpu,
            "p_ap": float(out[0][0])}  # fmt: skip


def in_fresh_process(args: list[str]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.classifier", "--worker", *args],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"worker {args} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- the node's first image --
def node_first_image(count: int) -> dict[str, Any]:
    """Start the node as deployed, send one image, then `count - 1` more; read the log rows."""
    from bench.peers import Template, node_config, start_node, stream

    with tempfile.TemporaryDirectory(prefix="bench-first-image-") as tmp:
        workdir = Path(tmp)
        node = start_node(workdir, node_config(workdir, sink_port=None))
        try:
            # The sample is stored as Secondary Capture, which the node never tags: send it
            # as the CR image a modality would.
            template = Template(SHARED / SAMPLE, workdir, sop_class=ComputedRadiographyImageStorage)
            database = workdir / "node-log.sqlite3"
            stream(node.port, "DICOMNODE", [template], 1)
            _wait_rows(database, 1)
            stream(node.port, "DICOMNODE", [template], count - 1)
            rows = _wait_rows(database, count)
            template.close()
        finally:
            node.stop()
    inference = [r[0] for r in rows]
    processing = [r[1] for r in rows]
    steady = median(inference[1:])
    return {"n": count, "first_inference_ms": inference[0], "steady_inference_ms_median": steady,
            "ratio": inference[0] / steady, "first_processing_ms": processing[0],
            "steady_processing_ms_median": median(processing[1:]),
            "inference_ms": inference}  # fmt: skip


def _wait_rows(database: Path, count: int, timeout: float = 120.0) -> list[Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if database.is_file():
            with sqlite3.connect(database) as db:
                rows = db.execute(
                    "SELECT inference_ms, processing_ms FROM instances ORDER BY id"
                ).fetchall()
            if len(rows) >= count:
                return rows
        time.sleep(0.05)
    raise TimeoutError(f"the node logged fewer than {count} instances")


# -- driver --
def find_keras(explicit: Path | None) -> Path | None:
    if explicit is not None:
        return explicit
    # models/ holds TFLite only; `python -m training ship` leaves its Keras model in training-runs/
    candidates = [*sorted(MODELS_DIR.glob("*.keras")), REPO_ROOT / "training-runs/ship/model.keras"]
    return next((p for p in candidates if p.is_file()), None)


def stats(samples: list[float]) -> dict[str, float]:
    return {"median_ms": median(samples), "p95_ms": percentile(samples, 95), "n": len(samples)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--invokes", type=int, default=500)
    parser.add_argument("--quick", action="store_true", help="smoke run: 20 invokes, 1 thread")
    parser.add_argument("--keras", type=Path, default=None, help="Keras model (.keras) to include")
    parser.add_argument("--no-node", action="store_true", help="skip the started-node check")
    parser.add_argument("--node-images", type=int, default=41)
    parser.add_argument("--node-starts", type=int, default=5)
    parser.add_argument("--output", default="classifier.json")
    parser.add_argument("--worker", nargs=3, metavar=("KIND", "NAME", "THREADS"),
                        help=argparse.SUPPRESS)  # fmt: skip
    args = parser.parse_args()
    if args.worker:
        kind, name, threads = args.worker
        measure = measure_keras if kind == "keras" else measure_tflite
        target = Path(name) if kind == "keras" else name
        print(json.dumps(measure(target, int(threads), args.invokes)))  # type: ignore[arg-type]
        return
    invokes = 20 if args.quick else args.invokes
    thread_counts = (1,) if args.quick else (1, 2)
    manifest = json.loads((MODELS_DIR / "manifest.json").read_text())
    entries: list[tuple[str, str, str, Path]] = [
        (variant, "tflite", variant, MODELS_DIR / entry["file"])
        for variant, entry in manifest["variants"].items()
    ]
    keras_path = None if args.quick else find_keras(args.keras)
    if keras_path is not None:
        entries.insert(0, ("keras", "keras", str(keras_path), keras_path))
    results: dict[str, Any] = {}
    for variant, kind, name, path in entries:
        results[variant] = {"file": str(path.relative_to(REPO_ROOT) if path.is_relative_to(
            REPO_ROOT) else path), "size_kb": path.stat().st_size / 1024}  # fmt: skip
        for threads in thread_counts:
            load = " ".join(f"{x:.2f}" for x in os.getloadavg())
            raw = in_fresh_process([kind, name, str(threads), "--invokes", str(invokes)])
            run = {k: v for k, v in raw.items() if not k.endswith("steady")}
            run.update({"steady": stats(raw["steady"]), "load_before": load})
            for extra in ("eager_steady", "predict_steady", "cpu_steady"):
                if extra in raw:
                    run[extra] = stats(raw[extra])
            results[variant][f"threads_{threads}"] = run
            print(f"{variant} {threads} thread(s): {run['steady']['median_ms']:.2f} ms "
                  f"(load {load})", flush=True)  # fmt: skip
    node = None
    if not args.no_node:  # a few node starts: one first image per start is one noisy sample
        runs = [node_first_image(5 if args.quick else args.node_images)
                for _ in range(1 if args.quick else args.node_starts)]  # fmt: skip
        node = {**runs[len(runs) // 2], "ratio": median([r["ratio"] for r in runs]),
                "ratios": [r["ratio"] for r in runs],
                "first_inference_ms": median([r["first_inference_ms"] for r in runs]),
                "steady_inference_ms_median": median(
                    [r["steady_inference_ms_median"] for r in runs]),
                "starts": len(runs)}  # fmt: skip
    report(results, node, thread_counts)
    payload = {"invokes": invokes, "sample": SAMPLE, "paper": PAPER, "variants": results,
               "node_first_image": node, "quick": args.quick,
               "models_manifest_date": manifest.get("date")}  # fmt: skip
    print(f"\nwrote {write_json(args.output, payload)}")


def report(results: dict[str, Any], node: dict[str, Any] | None, thread_counts) -> None:
    rows = []
    for variant, r in results.items():
        one = r["threads_1"]
        two = r.get("threads_2")
        paper = PAPER.get(variant, {})
        steady = one["steady"]["median_ms"]
        rows.append([
            variant, f"{r['size_kb']:,.0f}", _num(paper.get("size_kb"), ",.0f"),
            f"{one['load_allocate_ms']:.0f}", f"{one['first_invoke_ms']:.1f}",
            f"{steady:.2f}", f"{one['steady']['p95_ms']:.2f}",
            f"{one['cpu_steady']['median_ms']:.2f}",
            f"{two['steady']['median_ms']:.2f}" if two else "-",
            f"{two['steady']['p95_ms']:.2f}" if two else "-",
            f"{one['first_invoke_ms'] / steady:.1f}x",
            _num(paper.get("pc_ms"), ".2f"), _num(paper.get("jetson_ms"), ".2f"),
        ])  # fmt: skip
    print()
    print_table(["variant", "size KB", "paper KB", "load+alloc ms", "1st invoke ms",
                 "median ms 1t", "p95 ms 1t", "CPU ms 1t", "median ms 2t", "p95 ms 2t",
                 "1st/steady",
                 "paper PC ms", "paper Jetson ms"], rows)  # fmt: skip
    print("(paper: warm-up 20-30x steady state; Keras rows: steady = model(x) in a tf.function, "
          "1st invoke = eager model(x); CPU ms = process CPU time per invoke, median: what one\n"
          " thread costs whatever the machine's load, the wall-clock columns include waiting for\n"
          " a core)")  # fmt: skip
    if "keras" in results:
        k = results["keras"]["threads_1"]
        print(f"keras eager model(x) median {k['eager_steady']['median_ms']:.1f} ms, "
              f"model.predict median {k['predict_steady']['median_ms']:.1f} ms (1 thread)")
    if "int8" in results:
        int8 = results["int8"]["threads_1"]["steady"]["median_ms"]
        int8_cpu = results["int8"]["threads_1"]["cpu_steady"]["median_ms"]
        print(f"Int8 1 thread: wall {int8:.2f} ms <= {INT8_GOAL_MS} ms: {_ok(int8)}; "
              f"CPU {int8_cpu:.2f} ms <= {INT8_GOAL_MS} ms: {_ok(int8_cpu)}")
    if node is not None:
        verdict = "yes" if node["ratio"] <= FIRST_IMAGE_GOAL else "NO"
        print(f"started node ({node['starts']} starts, medians): first image inference "
              f"{node['first_inference_ms']:.2f} ms vs the next {node['n'] - 1} "
              f"{node['steady_inference_ms_median']:.2f} ms: {node['ratio']:.2f}x "
              f"(each start: {', '.join(f'{r:.2f}x' for r in node['ratios'])}) "
              f"<= {FIRST_IMAGE_GOAL}x: {verdict}")


def _ok(ms: float) -> str:
    return "yes" if ms <= INT8_GOAL_MS else "NO"


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


if __name__ == "__main__":
    main()
