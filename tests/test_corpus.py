"""Bad input: every file of ../shared/dicom/corpus sent to one running node gets its defined
outcome (tests/data/corpus_outcomes.csv), untouched files leave byte for byte, and the node keeps
running."""

from __future__ import annotations

import pydicom
import pytest

from tests.corpus_run import COMPARED, corpus_files, read_table, run_corpus
from tests.node_helpers import dataset_bytes, echoscu, send_files

pytestmark = pytest.mark.slow


def test_whole_corpus_gets_its_defined_outcome(start_node, recording_scp, shared):
    node = start_node([recording_scp.destination()])
    expected = read_table()
    assert sorted(expected) == sorted(p.name for p in corpus_files())

    outcomes = run_corpus(node, recording_scp)

    mismatches = {
        name: {k: (expected[name][k], got[k]) for k in COMPARED if expected[name][k] != got[k]}
        for name, got in outcomes.items()
    }
    assert {n: m for n, m in mismatches.items() if m} == {}
    # Every instance the node acknowledged was logged and delivered.
    for name, got in outcomes.items():
        if got["status"] == "0x0000":
            assert got["action"] != "-" and got["forwarded"] == "sent", name

    # Untouched instances (all but written/overwritten ones) left byte for byte as sent.
    by_name = {p.name: p for p in corpus_files()}
    for name, got in outcomes.items():
        if got["sender"] != "pynetdicom" or got["forwarded"] != "sent":
            continue
        if got["action"] in ("written", "overwritten"):
            continue
        source = by_name[name]
        uid = pydicom.filereader.read_file_meta_info(source).MediaStorageSOPInstanceUID
        matches = [r for r in recording_scp.received if r.sop_instance_uid == uid]
        assert any(
            dataset_bytes(r.encoded) == dataset_bytes(source.read_bytes()) for r in matches
        ), name

    # Still up: answers C-ECHO and takes one more image.
    assert echoscu(node.port).returncode == 0
    assert send_files(node.port, by_name["CT__CT_small.dcm"]) == [0]
    assert node.wait_idle(30)
