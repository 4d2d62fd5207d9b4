"""A film that decodes slowly does not hold the films behind it (issue 18): the node as deployed,
classifying with the shipped model, gets one slow film and then five real CR films, and the
sink records when each is forwarded. Run inside `unshare -n` (loopback only):

  unshare -n sh -c 'ip link set lo up && .venv/bin/python -m bench.slow_decode'

Slow films, each sent first, on its own association:
- huge: a 16384 x 16384 JPEG 2000 film of 2 MB (mostly empty; a real decode of ~8 s here), which
  the default guard.slow_lane_mpixel (40) sends to the slow lane without trying;
- huge, small header: the same codestream under a header declaring 1955 x 1841, so only the
  decode itself shows it is slow: the default guard.patience_s (3 s) sends it to the slow lane.
Each is run with the slow lane (the defaults) and without it (`guard.patience_s: null`, the
node before this change). Figures: seconds from the slow film's C-STORE reply until each of the
five films is forwarded (the last one), and until the slow film itself is.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
from pydicom.encaps import encapsulate

from bench.common import print_table, write_json
from bench.peers import (
    Template,
    new_uid,
    node_config,
    start_node,
    start_sink,
    stream,
    wait_arrivals,
)
from tests.node_helpers import as_cr_image
from tests.shared_data import SHARED

CORPUS = SHARED / "dicom" / "corpus" / "files"
FILM = SHARED / "dicom" / "cr-chest-pa.dcm"
FILMS_BEHIND = 5


def huge_j2k_film(target: Path, side: int, declared: tuple[int, int] | None = None) -> Path:
    """A CR film whose JPEG 2000 codestream is side x side, 8-bit, almost empty (so it is small),
    from the corpus's J2K CR; `declared` overrides the Rows/Columns the dataset claims."""
    from openjpeg import encode

    pixels = np.zeros((side, side), np.uint8)
    pixels[::97, ::89] = 200  # a sparse grid: something to decode, little to store
    ds = pydicom.dcmread(CORPUS / "CR__RG1_J2KR.dcm")
    ds.Rows, ds.Columns = declared or (side, side)
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    for keyword in ("WindowCenter", "WindowWidth", "SmallestImagePixelValue",
                    "LargestImagePixelValue"):  # fmt: skip
        if keyword in ds:
            del ds[keyword]
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = new_uid()
    ds.PixelData = encapsulate([encode(pixels, bits_stored=8)])
    ds["PixelData"].VR = "OB"
    ds.save_as(target, enforce_file_format=True)
    return target


def run(workdir: Path, slow: Path, patience_s: float | None) -> dict:
    workdir.mkdir()
    sink, record = start_sink(workdir)
    config = node_config(workdir, sink.port)
    config["guard"] = {"patience_s": patience_s}
    node = start_node(workdir, config)
    slow_template = Template(slow, workdir)
    # the reference chest is stored as Secondary Capture, which takes the pass-through lane:
    # re-filed as CR so the films behind are classified, on the workers the slow film occupies
    film_template = Template(as_cr_image(FILM, workdir / "film-cr.dcm"), workdir)
    try:
        [slow_sent] = stream(node.port, "DICOMNODE", [slow_template], 1)
        films = stream(node.port, "DICOMNODE", [film_template], FILMS_BEHIND)
        arrivals = wait_arrivals(record, [f.uid for f in films], timeout=300)
        films_s = max(arrivals[f.uid] for f in films) - slow_sent.replied
        slow_at = wait_arrivals(record, [slow_sent.uid], timeout=300)[slow_sent.uid]
        return {"patience_s": patience_s, "films_forwarded_after_s": films_s,
                "slow_forwarded_after_s": slow_at - slow_sent.replied,
                "node_log_tail": (workdir / "node.out").read_text().splitlines()[-8:]}
    finally:
        slow_template.close()
        film_template.close()
        node.stop()
        sink.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", type=int, default=16384)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="slow-decode-") as folder:
        workdir = Path(folder)
        slow_films = {
            "huge": huge_j2k_film(workdir / "huge.dcm", args.side),
            "huge, small header": huge_j2k_film(workdir / "liar.dcm", args.side, (1955, 1841)),
        }
        for name, slow in slow_films.items():
            for patience_s in (3.0, None):
                key = f"{name} / {'slow lane' if patience_s else 'no slow lane'}"
                results[key] = run(workdir / f"run-{len(results)}", slow, patience_s)
                time.sleep(1)
    print_table(["slow film / node", f"{FILMS_BEHIND} films behind it forwarded after",
                 "slow film forwarded after", "goal"], [
        [key, f"{r['films_forwarded_after_s']:.1f} s", f"{r['slow_forwarded_after_s']:.1f} s",
         "films ≤ 15 s"] for key, r in results.items()])  # fmt: skip
    write_json("slow_decode.json", {"args": vars(args), **results})


if __name__ == "__main__":
    main()
