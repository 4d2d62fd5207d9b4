"""Forwarding adapts to the peer: every syntax the node accepts reaches a destination that takes
only Implicit VR LE (Orthanc), only Explicit VR LE, or only a lossless compressed syntax (RLE),
re-encoded by the node, with frames equal to an independent decode of what was sent."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless

from tests.node_helpers import Orthanc, RecordingSCP, forward_rows, storescu
from tests.shared_data import CORPUS_DIR, SHARED

pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared data not at {SHARED}")

FILES = CORPUS_DIR / "files"
SOURCES = [  # (file, storescu option that sends it in its own syntax)
    (FILES / "CT__CT_small.dcm", "-xe"),  # Explicit VR LE, 16-bit signed
    (FILES / "CR__77654033_CR1_6154.dcm", "-xe"),  # CR, MONOCHROME1
    (FILES / "MR__MR_small_jpeg_ls_lossless.dcm", "-xt"),  # JPEG-LS lossless
    (FILES / "MR__MR_small_RLE.dcm", "-xr"),  # RLE lossless
    (FILES / "CR__RG1_J2KR.dcm", "-xv"),  # JPEG 2000 lossless, 1955 x 1841 15-bit
    (FILES / "SC__SC_rgb_jpeg_dcmtk.dcm", "-xy"),  # JPEG baseline, colour
]
NO_CLASSIFY = {"classify": {"modalities": []}}


def uid_of(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def send_sources(node_port: int) -> None:
    for path, option in SOURCES:
        result = storescu(node_port, path, options=("-R", option))
        assert result.returncode == 0, result.stderr


def check_frames(received: dict[str, pydicom.Dataset], syntax: str) -> None:
    assert set(received) == {uid_of(p) for p, _ in SOURCES}
    for path, _ in SOURCES:
        original = pydicom.dcmread(path)
        got = received[uid_of(path)]
        assert got.file_meta.TransferSyntaxUID == syntax
        assert got.SOPInstanceUID == original.SOPInstanceUID  # same instance, lossless
        assert np.array_equal(got.pixel_array, original.pixel_array), path.name
        assert got.PatientID == original.PatientID and got.Rows == original.Rows


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, RLELossless])
def test_pynetdicom_peer_accepting_one_syntax_gets_every_image(start_node, syntax):
    peer = RecordingSCP(transfer_syntaxes=[syntax]).start()
    try:
        node = start_node([peer.destination()], **NO_CLASSIFY)
        send_sources(node.port)
        peer.wait_for(len(SOURCES), timeout=120)
        check_frames({r.sop_instance_uid: r.dataset() for r in peer.received}, syntax)
        assert {a.outcome for a in forward_rows(node)} == {"sent"}
    finally:
        peer.stop()


def test_orthanc_accepting_only_implicit_vr_gets_every_image(start_node, tmp_path):
    orthanc = Orthanc(tmp_path / "orthanc",
                      AcceptedTransferSyntaxes=[ImplicitVRLittleEndian]).start()  # fmt: skip
    try:
        node = start_node([orthanc.destination()], **NO_CLASSIFY)
        send_sources(node.port)
        assert node.wait_idle(120)
        attempts = [(a.sop_instance_uid, a.outcome, a.detail) for a in forward_rows(node)]
        assert {a[1] for a in attempts} == {"sent"}, attempts
        received = {uid_of(p): pydicom.dcmread(BytesIO(orthanc.instance_file(uid_of(p))))
                    for p, _ in SOURCES}  # fmt: skip
    finally:
        orthanc.stop()
    check_frames(received, ImplicitVRLittleEndian)
