"""Send every corpus file to a node and collect each file's outcome (used by test_corpus.py and to
(re)write tests/data/corpus_outcomes.csv: `python -m tests.corpus_run` inside `unshare -n`)."""

from __future__ import annotations

import csv
import sys
import tempfile
from pathlib import Path

from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, _config, evt

from dicomnode.node import Node
from dicomnode.receive import set_tcp_nodelay
from tests.node_helpers import (
    NODE_AE,
    RecordingSCP,
    forward_rows,
    instance_rows,
    node_config,
    storescu,
)
from tests.shared_data import CORPUS_DIR

OUTCOMES_CSV = Path(__file__).parent / "data" / "corpus_outcomes.csv"
COLUMNS = ("file", "sender", "status", "outcome", "action", "forwarded")
# Compared by the test. `action` (agrees/disagrees/uncertain/...) depends on the shipped model and
# is kept in the table for information; the tag policy has its own tests.
COMPARED = ("sender", "status", "outcome", "forwarded")
CLASSIFIED_ACTIONS = {"written", "agrees", "disagrees", "overwritten", "uncertain"}


def outcome_of(status: str, actions: list[str]) -> str:
    """classified | skipped | unreadable | refused (DIMSE failure or association/context refused)
    | not-sendable (no C-STORE can carry the file: no SOP class/instance)."""
    if status == "not-sendable":
        return status
    if not status.startswith("0x0000") and not actions:
        return "refused"
    last = actions[-1] if actions else "-"
    return "classified" if last in CLASSIFIED_ACTIONS else last


def corpus_files() -> list[Path]:
    return sorted((CORPUS_DIR / "files").glob("*.dcm"))


def send_one(port: int, path: Path) -> tuple[str, str]:
    """(sender, status): the file's own bytes by pynetdicom when it has usable file meta, else
    DCMTK storescu (which can read files without meta)."""
    try:
        meta = read_file_meta_info(path)
        pair = (str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))
    except Exception:
        pair = None
    if pair is None or not all(pair) or "MediaStorageSOPInstanceUID" not in meta:
        result = storescu(port, path, options=("-R",))
        if result.returncode == 0:
            return "storescu", "0x0000"
        # e.g. "missing SOP class (or instance) in file": no C-STORE can carry it
        return "storescu", "not-sendable"
    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title="CORPUS")
    ae.add_requested_context(pair[0], [pair[1]])
    assoc = ae.associate(
        "127.0.0.1", port, ae_title=NODE_AE, evt_handlers=[(evt.EVT_CONN_OPEN, set_tcp_nodelay)]
    )
    try:
        if not assoc.is_established:
            return "pynetdicom", "association-rejected"
        if not assoc.accepted_contexts:
            return "pynetdicom", "context-rejected"
        try:
            status = assoc.send_c_store(path)
        except (ValueError, AttributeError) as exc:
            return "pynetdicom", f"not-sent: {type(exc).__name__}"
        return "pynetdicom", f"0x{int(status.Status):04X}" if "Status" in status else "no-response"
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()


def run_corpus(node: Node, sink: RecordingSCP) -> dict[str, dict[str, str]]:
    outcomes: dict[str, dict[str, str]] = {}
    for path in corpus_files():
        before = len(instance_rows(node))
        sender, status = send_one(node.port, path)
        assert node.wait_idle(120), f"node did not finish {path.name}"
        rows = instance_rows(node)[before:]
        ids = {r.id for r in rows}
        delivered = [a.outcome for a in forward_rows(node) if a.instance_id in ids]
        outcomes[path.name] = {
            "file": path.name,
            "sender": sender,
            "status": status,
            "outcome": outcome_of(status, [r.action for r in rows]),
            "action": "|".join(r.action for r in rows) or "-",
            "forwarded": "|".join(delivered) or "-",
        }
    return outcomes


def write_table(outcomes: dict[str, dict[str, str]], target: Path = OUTCOMES_CSV) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "w", newline="") as handle:
        writer = csv.DictWriter(handle, COLUMNS)
        writer.writeheader()
        for name in sorted(outcomes):
            writer.writerow(outcomes[name])


def read_table(source: Path = OUTCOMES_CSV) -> dict[str, dict[str, str]]:
    with open(source, newline="") as handle:
        return {row["file"]: row for row in csv.DictReader(handle)}


if __name__ == "__main__":
    sink = RecordingSCP().start()
    tmp = Path(tempfile.mkdtemp())
    node = Node(node_config(tmp, [sink.destination()])).start()
    try:
        table = run_corpus(node, sink)
    finally:
        node.stop()
        sink.stop()
    write_table(table, Path(sys.argv[1]) if len(sys.argv) > 1 else OUTCOMES_CSV)
