"""A CT (or any instance the node never classifies) does not wait behind CR films being
classified: it takes the pass-through lane. With `classify.pass_through_lane: false` everything
shares one queue, in arrival order."""

from __future__ import annotations

import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.node_helpers import send_files
from tests.shared_data import SHARED

pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared data not at {SHARED}")

CORPUS = SHARED / "dicom" / "corpus" / "files"
FILMS = 6


def fresh_copy(source: Path, target: Path) -> Path:
    ds = pydicom.dcmread(source)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(target)
    return target


def delivered_before_the_films(start_node, tmp_path: Path, lane: bool) -> tuple[int, list[str]]:
    """Send FILMS large CR films (JPEG 2000: quick to send, slow to decode), then a CT on a
    second association; return how many films had been delivered when the CT arrived, and the
    pipeline's action for each film."""
    outbox = tmp_path / f"outbox-{lane}"
    node = start_node([{"name": "outbox", "type": "folder", "path": str(outbox)}],
                      classify={"pass_through_lane": lane},
                      spool={"path": str(tmp_path / f"spool-{lane}")},
                      log={"url": f"sqlite:///{tmp_path / f'log-{lane}.sqlite3'}"})
    films = [fresh_copy(CORPUS / "CR__RG1_J2KR.dcm", tmp_path / f"film{n}-{lane}.dcm")
             for n in range(FILMS)]  # fmt: skip
    ct = fresh_copy(CORPUS / "CT__CT_small.dcm", tmp_path / f"ct-{lane}.dcm")
    ct_uid = str(pydicom.dcmread(ct, stop_before_pixels=True).SOPInstanceUID)
    assert send_files(node.port, *films) == [0] * FILMS  # acknowledged before classification
    assert send_files(node.port, ct) == [0]
    deadline = time.monotonic() + 120
    while not (outbox / f"{ct_uid}.dcm").exists():
        assert time.monotonic() < deadline, "the CT never arrived"
        time.sleep(0.01)
    films_before_ct = len(list(outbox.glob("*.dcm"))) - 1
    assert node.wait_idle(120)
    assert len(list(outbox.glob("*.dcm"))) == FILMS + 1
    with node.log_store.engine.connect() as connection:
        from sqlalchemy import text

        actions = [row[0] for row in connection.execute(text(
            "SELECT action FROM instances WHERE modality = 'CR' ORDER BY id"))]
    return films_before_ct, actions


def test_a_ct_passes_the_films_being_classified(start_node, tmp_path):
    films_before_ct, actions = delivered_before_the_films(start_node, tmp_path, lane=True)
    print(f"pass-through lane: the CT arrived after {films_before_ct} of {FILMS} films")
    assert films_before_ct < FILMS - 1  # it did not wait for the classify queue
    assert len(actions) == FILMS and "skipped" not in actions  # the films were classified


def test_one_queue_keeps_arrival_order_when_configured(start_node, tmp_path):
    films_before_ct, actions = delivered_before_the_films(start_node, tmp_path, lane=False)
    assert films_before_ct == FILMS  # behind every film, in arrival order
    assert len(actions) == FILMS and "skipped" not in actions
