"""End to end with real peers: DCMTK storescu -> node (classify, tag, log) -> Orthanc (checked
through its REST API) and a pynetdicom SCP. Runs inside `unshare -n` like the whole suite."""

from __future__ import annotations

import json
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit

from dicomnode import tag
from dicomnode.classify import DEFAULT_MODELS_DIR
from dicomnode.config import TagConfig
from tests.node_helpers import (
    echoscu,
    forward_rows,
    instance_rows,
    jpeg_as_dicom,
    storescu,
    without_view_position,
)
from tests.shared_data import CHEST_PA, CHEST_PA_MONOCHROME1, CORPUS_DIR, XRAY_VIEWS

RG1_J2KR = CORPUS_DIR / "files" / "CR__RG1_J2KR.dcm"  # Philips CR chest PA, JPEG 2000 lossless
LATERAL_JPEG = XRAY_VIEWS / "circ-ml-CXR-View" / "lateral" / "F.jpg"  # lateral chest, MIT


def shipped_model_sha256() -> str:
    manifest = json.loads((DEFAULT_MODELS_DIR / "manifest.json").read_text())
    return manifest["variants"][manifest["default_variant"]]["sha256"]


def check_written(ds: pydicom.Dataset, term: str, label: str, model_sha256: str) -> None:
    assert ds.ViewPosition == term
    item = ds.OriginalAttributesSequence[-1]
    assert item.ReasonForTheAttributeModification == "COERCE"
    assert item.ModifiedAttributesSequence[0].ViewPosition == ""
    assert item.ModifyingSystem.startswith("dicomnode")
    assert item.SourceOfPreviousValues == "MODALITY"
    assert ds.InstanceCoercionDateTime == item.AttributeModificationDateTime
    code = ds.ContributingEquipmentSequence[-1].PurposeOfReferenceCodeSequence[0]
    assert (code.CodeValue, code.CodingSchemeDesignator) == ("109103", "DCM")
    block = tag.read_private_block(ds, TagConfig())
    assert block is not None
    assert block["label"] == label and block["model_sha256"] == model_sha256
    assert abs(float(block["probability_ap"]) + float(block["probability_la"]) - 1.0) < 0.02


def test_storescu_to_node_to_orthanc_and_scp(
    start_node, orthanc, recording_scp, tmp_path: Path, shared
):
    frontal = without_view_position(RG1_J2KR, tmp_path / "frontal.dcm")
    lateral = jpeg_as_dicom(LATERAL_JPEG, tmp_path / "lateral.dcm")
    node = start_node([orthanc.destination(), recording_scp.destination()])
    model_sha256 = shipped_model_sha256()

    assert echoscu(node.port).returncode == 0
    for files, option in (
        ([frontal], "-xv"),
        ([lateral], "-xy"),
        ([CHEST_PA, CHEST_PA_MONOCHROME1], "-xy"),
    ):
        result = storescu(node.port, *files, options=("-R", option))
        assert result.returncode == 0, result.stderr
    recording_scp.wait_for(4)
    assert node.wait_idle(60)

    # Frontal JPEG 2000 without ViewPosition -> AP written, coercion record, pixels byte for byte.
    original = pydicom.dcmread(RG1_J2KR)
    at_orthanc = pydicom.dcmread(BytesIO(orthanc.instance_file(original.SOPInstanceUID)))
    at_scp = recording_scp.by_uid(original.SOPInstanceUID)
    assert at_scp.transfer_syntax_uid == JPEG2000Lossless
    for ds in (at_orthanc, at_scp.dataset()):
        check_written(ds, "AP", "AP", model_sha256)
        assert ds.file_meta.TransferSyntaxUID == JPEG2000Lossless
        assert ds.SOPInstanceUID == original.SOPInstanceUID
        assert ds.PixelData == original.PixelData

    # Lateral without ViewPosition -> LL written.
    lateral_ds = pydicom.dcmread(lateral)
    at_orthanc = pydicom.dcmread(BytesIO(orthanc.instance_file(lateral_ds.SOPInstanceUID)))
    check_written(at_orthanc, "LL", "LA", model_sha256)
    assert at_orthanc.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    assert at_orthanc.PixelData == lateral_ds.PixelData

    # Both PA chests (same SOP Instance UID, MONOCHROME2 and 1): PA kept, nothing written.
    pa_uid = pydicom.dcmread(CHEST_PA, stop_before_pixels=True).SOPInstanceUID
    pa_received = [r for r in recording_scp.received if r.sop_instance_uid == pa_uid]
    assert len(pa_received) == 2
    for received, source in zip(pa_received, (CHEST_PA, CHEST_PA_MONOCHROME1), strict=True):
        ds = received.dataset()
        assert ds.ViewPosition == "PA"
        assert "OriginalAttributesSequence" not in ds and "InstanceCoercionDateTime" not in ds
        assert tag.read_private_block(ds, TagConfig()) is None
        assert ds.PixelData == pydicom.dcmread(source).PixelData
    assert pydicom.dcmread(BytesIO(orthanc.instance_file(pa_uid))).ViewPosition == "PA"

    rows = instance_rows(node)
    assert [(r.action, r.view_position_before, r.view_position_after, r.label) for r in rows] == [
        ("written", None, "AP", "AP"),
        ("written", None, "LL", "LA"),
        ("agrees", "PA", "PA", "AP"),
        ("agrees", "PA", "PA", "AP"),
    ]
    first = rows[0]
    assert first.sop_instance_uid == original.SOPInstanceUID
    assert first.study_instance_uid == original.StudyInstanceUID
    assert first.series_instance_uid == original.SeriesInstanceUID
    assert first.modality == "CR" and first.patient_id == str(original.PatientID)
    assert first.transfer_syntax_uid == JPEG2000Lossless
    assert (first.calling_ae, first.called_ae) == ("MODALITY", "DICOMNODE")
    assert first.model_sha256 == model_sha256
    assert first.probability_ap == pytest.approx(first.confidence)
    assert first.probability_ap + first.probability_la == pytest.approx(1.0, abs=0.02)
    assert first.inference_ms > 0 and first.processing_ms >= first.inference_ms
    assert first.error is None
    attempts = forward_rows(node)
    assert len(attempts) == 8 and {a.outcome for a in attempts} == {"sent"}
    assert {a.instance_id for a in attempts} == {r.id for r in rows}


def test_in_process_decode_and_overwrite_policy(start_node, recording_scp, tmp_path: Path, shared):
    """guard.isolate: false (decode in the worker thread) gives the same answers; on_disagree:
    overwrite replaces a contradicting ViewPosition and records the previous value."""
    contradicting = pydicom.dcmread(RG1_J2KR)
    contradicting.ViewPosition = "LL"  # a chest PA image labelled lateral by its "modality"
    contradicting.save_as(tmp_path / "contradicting.dcm")
    node = start_node(
        [recording_scp.destination()],
        guard={"isolate": False},
        tag={"on_disagree": "overwrite"},
    )
    for path, option in ((CHEST_PA, "-xy"), (tmp_path / "contradicting.dcm", "-xv")):
        result = storescu(node.port, path, options=("-R", option))
        assert result.returncode == 0, result.stderr
    recording_scp.wait_for(2)
    assert node.wait_idle(60)
    rows = instance_rows(node)
    assert [(r.action, r.view_position_before, r.view_position_after) for r in rows] == [
        ("agrees", "PA", "PA"),
        ("overwritten", "LL", "AP"),
    ]
    ds = recording_scp.by_uid(contradicting.SOPInstanceUID).dataset()
    assert ds.ViewPosition == "AP"
    assert ds.OriginalAttributesSequence[-1].ModifiedAttributesSequence[0].ViewPosition == "LL"
    assert ds.PixelData == contradicting.PixelData
