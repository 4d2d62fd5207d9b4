"""Every benchmark script still runs: its quickest mode, results written to a temporary folder.

No timing assertions (speed is what the scripts report, not what tests check); each run must exit 0
and write its JSON with the fields the README's tables come from. The node scripts start servers on
127.0.0.1, so run inside `unshare -n` like the rest of the suite (`make test`).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

QUICK_RUNS = {
    "preprocess.json": ["bench.preprocess", "--repeat", "1"],
    "classifier.json": ["bench.classifier", "--quick"],
    "node_throughput.json": ["bench.node_throughput", "--quick"],
    "int8_export.json": ["bench.int8_export", "--invokes", "3"],
    "log_queries.json": [
        "bench.log_queries", "--rows", "2000", "--repeat", "1", "--backends", "sqlite",
    ],
    "log_writer.json": ["bench.log_writer", "--decisions", "300"],
    "hostile_peers.json": [
        "bench.hostile_peers", "--read-timeout-s", "1", "--instance-mb", "4", "--storm", "20",
        "--idle-s", "1",
    ],
    "trickle_cpu.json": ["bench.trickle_cpu", "--images", "2", "--gap-s", "0.1", "--runs", "1"],
}


def run_quick(module_args: list[str], results: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "DICOMNODE_BENCH_RESULTS": str(results)}
    done = subprocess.run(
        [sys.executable, "-m", *module_args],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    output = f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    assert done.returncode == 0, f"{module_args} failed:\n{output}"
    return done


@pytest.mark.parametrize("result_name", list(QUICK_RUNS))
def test_bench_script_runs_and_writes_json(
    result_name: str, tmp_path: Path, shared: Path
) -> None:
    run_quick(QUICK_RUNS[result_name], tmp_path)
    written = tmp_path / result_name
    assert written.is_file(), f"{QUICK_RUNS[result_name][0]} wrote no {result_name}"
    payload = json.loads(written.read_text())
    assert payload["machine"]["cores"] >= 1
    # The SIMD flags (which explain the Int8 speed) are recorded beside the numbers.
    if platform.machine() in ("x86_64", "aarch64"):
        assert payload["machine"]["simd_flags"], "no SIMD flags read from /proc/cpuinfo"
    if result_name == "classifier.json":
        assert set(payload["variants"]) >= {"int8"}
        int8 = payload["variants"]["int8"]["threads_1"]
        assert int8["steady"]["n"] == 20 and int8["steady"]["median_ms"] > 0
        assert payload["node_first_image"]["n"] == 5
    if result_name == "node_throughput.json":
        for target in ("relay", "node"):
            results = payload["results"][target]
            sets = {k: v for k, v in results.items() if k != "process_peak_rss_mb"}
            assert len(sets) == 5 and all(s["images_per_s"] > 0 for s in sets.values())
            mixed = sets["mixed (CT series + CR films at once)"]["by_kind"]
            assert set(mixed) == {"classified", "pass-through"}
            assert all(k["n"] > 0 and k["receive_to_forwarded_ms_median"] > 0
                       for k in mixed.values())
        assert payload["results"]["node"]["process_peak_rss_mb"]["main"] > 0
    if result_name == "hostile_peers.json":
        results = payload
        assert results["stalled"]["echo_ok"] and results["stalled"]["store_ok"]
        assert results["big_pdu"]["answer"].startswith("07")  # an A-ABORT
        assert results["big_instance"]["status"] == 0 and results["big_instance"]["rss_peak_mb"] > 0
        assert results["storm"]["connections_per_s"] > 0 and results["storm"]["echo_after_ok"]
        assert results["idle"]["associations"] == 32
    if result_name == "log_writer.json":
        assert len(payload["results"]) == 3
        assert all(r["decisions"] == 300 and r["decisions_per_s"] > 0
                   for r in payload["results"].values())
