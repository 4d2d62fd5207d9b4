"""No head-of-line blocking: an image that fails on a working association is retried a bounded
number of times, parked in failed/<dest>/ with its reason, and the queue behind it goes on; a
link that is down keeps the queue waiting, in order, without charging the images for it."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import evt

from dicomnode.config_routing import DicomDestination
from dicomnode.forward import Forwarder
from dicomnode.spool import FAILED, OUTGOING, SENT, Spool
from tests.node_helpers import free_port
from tests.shared_data import SHARED
from tests.store_forward_helpers import Sink, make_images, uid_of

pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared data not at {SHARED}")

JPEG_BASELINE = SHARED / "dicom" / "corpus" / "files" / "CT__humans_ctbrain1.dcm"


class CrashingPACS(Sink):
    """A PACS that drops the association whenever one given instance arrives (as one that
    crashes on a particular file does), and takes only native syntaxes."""

    def __init__(self, poisoned_uid: str) -> None:
        super().__init__(transfer_syntaxes=[ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        self.poisoned_uid = poisoned_uid
        self.aborts = 0

    def _on_store(self, event: evt.Event) -> int:
        if str(event.request.AffectedSOPInstanceUID) == self.poisoned_uid:
            self.aborts += 1
            event.assoc.abort()
            return 0xC000
        return super()._on_store(event)


def undecodable_jpeg(target: Path) -> Path:
    """A JPEG baseline instance whose codestream is its start-of-image marker and then noise
    (a bad write): a native-only peer needs it decoded, which fails every time."""
    ds = pydicom.dcmread(JPEG_BASELINE)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8" + bytes(range(256)) * 8])
    ds.save_as(target, enforce_file_format=True)
    return target


def destination(name: str, port: int, **retry: object) -> DicomDestination:
    return DicomDestination.model_validate({
        "name": name, "type": "dicom", "ae_title": "PACS", "host": "127.0.0.1", "port": port,
        "acse_timeout": 5, "dimse_timeout": 5, "network_timeout": 5,
        "retry": {"initial_s": 0.05, "multiplier": 2, "max_delay_s": 0.2, "jitter_s": 0,
                  **retry},
    })  # fmt: skip


def queue_up(spool: Spool, dest: str, files: list[Path]) -> list[str]:
    names = []
    for index, path in enumerate(files):
        name = f"{index:06d}"
        spool.dispatch(name, path, [dest], {"sop_instance_uid": uid_of(path), "name": name})
        names.append(name)
    return names


def read_meta(spool: Spool, state: str, dest: str, name: str) -> dict:
    return json.loads((spool.dir(state, dest) / f"{name}.json").read_text())


def test_poisoned_head_is_parked_and_the_100_behind_arrive_in_order(tmp_path):
    images = make_images(tmp_path / "images", 101)
    crashing, good = images[0], images[1:]
    good_uids = [uid_of(p) for p in good]  # the queue takes the files themselves
    undecodable = undecodable_jpeg(tmp_path / "images" / "broken-jpeg.dcm")
    pacs = CrashingPACS(uid_of(crashing)).start()
    spool = Spool(tmp_path / "spool")
    spool.ensure(["pacs"])
    names = queue_up(spool, "pacs", [crashing, undecodable, *good])
    forwarder = Forwarder(destination("pacs", pacs.fixed_port, image_attempts=3), spool, None,
                          "DICOMNODE")  # fmt: skip
    forwarder.start()
    try:
        pacs.wait_for_uids(set(good_uids), timeout=120)
        deadline = time.monotonic() + 30
        while spool.names(OUTGOING, "pacs") and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        forwarder.stop()
        pacs.stop()
    assert spool.names(OUTGOING, "pacs") == []
    assert spool.names(FAILED, "pacs") == names[:2]
    assert spool.names(SENT, "pacs") == names[2:]
    assert pacs.uids() == good_uids  # each once, in arrival order
    assert pacs.aborts == 3
    for name, why in ((names[0], "no response while this image was in transfer"),
                      (names[1], "cannot re-encode to Explicit VR Little Endian")):
        meta = read_meta(spool, FAILED, "pacs", name)
        assert meta["image_failures"] == 3 and meta["attempts"] == 3
        assert meta["last_detail"].startswith("gave up on this image after 3 failed transfers")
        assert why in meta["last_detail"]


def test_a_link_that_is_down_keeps_the_queue_waiting_without_charging_the_image(tmp_path):
    spool = Spool(tmp_path / "spool")
    spool.ensure(["pacs"])
    files = make_images(tmp_path / "images", 2)
    uids = [uid_of(p) for p in files]
    names = queue_up(spool, "pacs", files)
    port = free_port()  # nobody listens: refused at connect
    forwarder = Forwarder(destination("pacs", port, image_attempts=1), spool, None, "DICOMNODE")
    forwarder.start()
    try:
        deadline = time.monotonic() + 30
        while read_meta(spool, OUTGOING, "pacs", names[0]).get("attempts", 0) < 4:
            assert time.monotonic() < deadline, "the head was not retried"
            time.sleep(0.05)
        head = read_meta(spool, OUTGOING, "pacs", names[0])
        assert head["image_failures"] == 0 and head["last_outcome"] == "retry"
        assert "attempts" not in read_meta(spool, OUTGOING, "pacs", names[1])  # order kept
        pacs = Sink(port=port).start()  # the link comes back: both go, in order
        try:
            pacs.wait_for_uids(set(uids), timeout=30)
            assert pacs.uids() == uids
        finally:
            pacs.stop()
    finally:
        forwarder.stop()
    assert spool.names(FAILED, "pacs") == []
