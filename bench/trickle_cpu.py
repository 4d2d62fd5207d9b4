"""Node CPU while a modality trickles images (issue 16): one association sends a CT slice every
0.5 s, the node forwards each to a sink. pynetdicom's reactor threads poll every millisecond
between PDUs unless the node makes them wait for work (dicomnode/reactor_wait.py); this is
where that shows, since a steady stream keeps them busy anyway.

  unshare -n sh -c 'ip link set lo up && .venv/bin/python -m bench.trickle_cpu'   # ~1 min
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from pynetdicom import AE, _config

from bench.common import SHARED, print_table, write_json
from bench.peers import Server, Template, node_config, start_node, start_sink

CT_SLICE = "dicom/corpus/files/CT__693_UNCR.dcm"


def trickle(node: Server, template: Template, count: int, gap_s: float) -> dict:
    _config.STORE_SEND_CHUNKED_DATASET = True  # the file's bytes, not a re-encoded dataset
    ae = AE(ae_title="TRICKLE")
    ae.add_requested_context(template.sop_class, template.transfer_syntax)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="DICOMNODE")
    assert assoc.is_established, "the node refused the association"
    try:
        time.sleep(2.0)  # start-up work done; the association is open and quiet
        cpu_before, wall_before = node.cpu_seconds(), time.monotonic()
        for _ in range(count):
            template.renew()
            assert assoc.send_c_store(template.path).Status == 0x0000
            time.sleep(gap_s)
        cpu_s, wall_s = node.cpu_seconds() - cpu_before, time.monotonic() - wall_before
    finally:
        assoc.release()
        ae.shutdown()
    return {"images": count, "gap_s": gap_s, "wall_s": round(wall_s, 2),
            "node_cpu_s": round(cpu_s, 3), "node_cpu_percent": round(100 * cpu_s / wall_s, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--gap-s", type=float, default=0.5)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-trickle-"))
    runs = []
    try:
        for run in range(args.runs):
            folder = workdir / f"run{run}"
            folder.mkdir()
            sink, _record = start_sink(folder)
            node = start_node(folder, node_config(folder, sink.port, 65536))
            try:
                template = Template(SHARED / CT_SLICE, folder)
                runs.append(trickle(node, template, args.images, args.gap_s))
            finally:
                node.stop()
                sink.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print_table(["run", "images", "gap s", "wall s", "node CPU s", "node CPU % of one core"],
                [[n + 1, r["images"], r["gap_s"], r["wall_s"], r["node_cpu_s"],
                  r["node_cpu_percent"]] for n, r in enumerate(runs)])  # fmt: skip
    print(f"wrote {write_json('trickle_cpu.json', {'runs': runs})}")


if __name__ == "__main__":
    main()
