"""Decode + window + resize time per image for representative radiographs (issue 5, item 2).

Compares the node's preprocessing (dicomnode.preprocess.preprocess_dataset, with its
reduced-resolution decoding) against the obvious full-size pipeline (pydicom decode, float64
LUTs, then resize).
Run: .venv/bin/python -m bench.preprocess [--repeat 15]
"""

from __future__ import annotations

import argparse
import time

import pydicom

from bench.common import SHARED, median, print_table, write_json
from dicomnode import preprocess

INPUTS = {
    "CR 1955x1841 15-bit uncompressed": "dicom/corpus/files/CR__RG1_UNCR.dcm",
    "CR 1955x1841 JPEG 2000 lossless": "dicom/corpus/files/CR__RG1_J2KR.dcm",
    "CR 1955x1841 JPEG 2000 lossy": "dicom/corpus/files/CR__RG1_J2KI.dcm",
    "DX 2614x3072 12-bit": "dicom/corpus/files/DX__animals_cat.dcm",
    "CR 1024x1024 JPEG baseline": "dicom/cr-chest-pa.dcm",
}


def time_ms(function, ds, repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        function(ds)
        samples.append((time.perf_counter() - started) * 1000)
    return median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    rows, results = [], {}
    for name, relative in INPUTS.items():
        path = SHARED / relative
        started = time.perf_counter()
        ds = pydicom.dcmread(path)
        read_ms = (time.perf_counter() - started) * 1000
        node_ms = time_ms(preprocess.preprocess_dataset, ds, args.repeat)
        full_ms = time_ms(preprocess.full_size_model_input, ds, max(3, args.repeat // 3))
        results[name] = {"file": relative, "read_ms": read_ms, "node_ms": node_ms,
                         "full_size_ms": full_ms}
        rows.append([name, f"{read_ms:.1f}", f"{node_ms:.1f}", f"{full_ms:.1f}",
                     f"{full_ms / node_ms:.1f}x"])
    print_table(["input", "dcmread ms", "node preprocess ms (median)",
                 "full-size pipeline ms (median)", "speed-up"], rows)
    print(f"\nwrote {write_json('preprocess.json', {'repeat': args.repeat, 'inputs': results})}")


if __name__ == "__main__":
    main()
