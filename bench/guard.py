"""What decode isolation costs per image: in-thread guarded preprocessing vs the killable decode
process the node uses by default (dicomnode.guard.IsolatedDecoder), plus the header-only checks.

Run: .venv/bin/python -m bench.guard [--repeat 15]
"""

from __future__ import annotations

import argparse
import time

import pydicom

from bench.common import SHARED, median, print_table, write_json
from dicomnode.guard import IsolatedDecoder, Limits, check_dataset, check_file, preprocess_guarded

INPUTS = {
    "CR 16x16 thumbnail": "dicom/corpus/files/CR__77654033_CR1_6154.dcm",
    "CR 1024x1024 JPEG baseline": "dicom/cr-chest-pa.dcm",
    "CR 1760x1760 JPEG 2000 lossless": "dicom/corpus/files/CR__RG3_J2KR.dcm",
    "CR 1955x1841 15-bit uncompressed": "dicom/corpus/files/CR__RG1_UNCR.dcm",
    "DX 2614x3072 12-bit": "dicom/corpus/files/DX__animals_cat.dcm",
}


def timed(function, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        times.append((time.perf_counter() - started) * 1000)
    return median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    limits = Limits()
    started = time.perf_counter()
    decoder = IsolatedDecoder(limits).start()
    spawn_ms = (time.perf_counter() - started) * 1000
    rows, results = [], []
    try:
        for name, relative in INPUTS.items():
            path = SHARED / relative

            def in_thread(path=path):
                preprocess_guarded(pydicom.dcmread(path), limits)

            def checks_only(path=path):
                check_file(path, limits)
                check_dataset(pydicom.dcmread(path, defer_size=1024), limits)

            decoder.preprocess_file(path)  # warm the worker's caches for this file
            thread_ms = timed(in_thread, args.repeat)
            isolated_ms = timed(lambda path=path: decoder.preprocess_file(path), args.repeat)
            checks_ms = timed(checks_only, args.repeat)
            rows.append([name, f"{thread_ms:.1f}", f"{isolated_ms:.1f}",
                         f"{isolated_ms - thread_ms:+.1f}", f"{checks_ms:.2f}"])  # fmt: skip
            results.append({"input": name, "in_thread_ms": thread_ms,
                            "isolated_ms": isolated_ms, "header_checks_ms": checks_ms})  # fmt: skip
    finally:
        decoder.close()
    print(f"decode worker spawn (imports, once per worker and after each kill): {spawn_ms:.0f} ms")
    print_table(
        ["input", "in-thread ms", "isolated ms", "isolation cost", "header checks ms"], rows
    )
    write_json("guard.json", {"spawn_ms": spawn_ms, "repeat": args.repeat, "results": results})


if __name__ == "__main__":
    main()
