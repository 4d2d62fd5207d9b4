"""Small helpers shared by the benchmark scripts: where data lives, tables, JSON, machine facts."""

from __future__ import annotations

import json
import os
import platform
import statistics
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("DICOMNODE_SHARED", REPO_ROOT.parent / "shared")).resolve()
# DICOMNODE_BENCH_RESULTS lets the smoke test write elsewhere than the committed results.
RESULTS_DIR = Path(os.environ.get("DICOMNODE_BENCH_RESULTS", REPO_ROOT / "bench" / "results"))


# CPU flags that decide inference speed. Int8 needs a dot-product extension: VNNI on x86-64,
# asimddp (sdot) on Arm such as the Jetson's Cortex-A78AE.
SIMD_FLAG_PREFIXES = ("avx", "vnni", "fma", "f16c", "amx", "asimd", "i8mm", "sve")


def machine() -> dict[str, object]:
    cpu, flags = "unknown", []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == "unknown":
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = sorted(f for f in line.split(":", 1)[1].split()
                               if f.startswith(SIMD_FLAG_PREFIXES))
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "simd_flags": flags,
            "python": platform.python_version(), "system": platform.platform()}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def median(values: list[float]) -> float:
    return statistics.median(values)


def print_table(headers: list[str], rows: list[list[object]]) -> None:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        padded = (c.rjust(w) if n else c.ljust(w) for c, w in zip(row, widths, strict=True))
        print("| " + " | ".join(padded) + " |")
        if n == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


def write_json(name: str, payload: dict) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / name
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2) + "\n")
    return path
