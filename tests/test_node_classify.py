"""End to end with real peers: DCMTK storescu -> node (classify, tag, log) -> Orthanc (checked
through its REST API) and a pynetdicom SCP. Runs inside `unshare -n` like the whole suite.

What the node should write is not hard-coded: `dicomnode classify` (the same code path) says what
it would write into an empty ViewPosition, and `serve` must write exactly that."""

from __future__ import annotations

import json
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit
from typer.testing import CliRunner

from dicomnode import tag
from dicomnode.classify import DEFAULT_MODELS_DIR
from dicomnode.cli import app
from dicomnode.config import TagConfig
from tests.node_helpers import (
    echoscu,
    forward_rows,
    instance_rows,
    jpeg_as_dicom,
    node_config,
    storescu,
    without_view_position,
)
from tests.shared_data import CHEST_PA, CHEST_PA_MONOCHROME1, CORPUS_DIR, XRAY_VIEWS

RG1_J2KR = CORPUS_DIR / "files" / "CR__RG1_J2KR.dcm"  # Philips CR chest PA, JPEG 2000 lossless
LATERAL_JPEG = XRAY_VIEWS / "circ-ml-CXR-View" / "lateral" / "F.jpg"  # lateral chest, MIT


def shipped_model_sha256() -> str:
    manifest = json.loads((DEFAULT_MODELS_DIR / "manifest.json").read_text())
    return manifest["variants"][manifest["default_variant"]]["sha256"]


def classify_lines(*paths: Path) -> list[dict]:
    result = CliRunner().invoke(app, ["classify", *map(str, paths)])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


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
    total = sum(float(block[k]) for k in ("probability_ap", "probability_pa", "probability_la",
                                          "probability_other"))
    assert abs(total - 1.0) < 0.02


def check_untouched(ds: pydicom.Dataset, source: Path) -> None:
    assert "OriginalAttributesSequence" not in ds and "InstanceCoercionDateTime" not in ds
    assert tag.read_private_block(ds, TagConfig()) is None
    assert ds.PixelData == pydicom.dcmread(source).PixelData


def test_storescu_to_node_to_orthanc_and_scp(
    start_node, orthanc, recording_scp, tmp_path: Path, shared
):
    frontal = without_view_position(RG1_J2KR, tmp_path / "frontal.dcm")
    lateral = jpeg_as_dicom(LATERAL_JPEG, tmp_path / "lateral.dcm")
    sent = [frontal, lateral, CHEST_PA, CHEST_PA_MONOCHROME1]
    expected = {Path(line["path"]).name: line for line in classify_lines(*sent)}
    # classify's would_write is for an empty ViewPosition: the files without one are checked
    # against it, the PA-labelled ones against what serve does with them as they are.
    for path in (frontal, lateral):
        assert expected[path.name]["would_write"] == expected[path.name]["node"]["after"]
    node = start_node([orthanc.destination(), recording_scp.destination()])
    model_sha256 = shipped_model_sha256()

    assert echoscu(node.port).returncode == 0
    for files, option in (([frontal], "-xv"), ([lateral], "-xy"),
                          ([CHEST_PA, CHEST_PA_MONOCHROME1], "-xy")):
        result = storescu(node.port, *files, options=("-R", option))
        assert result.returncode == 0, result.stderr
    recording_scp.wait_for(4)
    assert node.wait_idle(60)

    # Frontal JPEG 2000 without ViewPosition: what classify said; pixels byte for byte.
    original = pydicom.dcmread(RG1_J2KR)
    at_orthanc = pydicom.dcmread(BytesIO(orthanc.instance_file(original.SOPInstanceUID)))
    at_scp = recording_scp.by_uid(original.SOPInstanceUID)
    assert at_scp.transfer_syntax_uid == JPEG2000Lossless
    line = expected[frontal.name]
    for ds in (at_orthanc, at_scp.dataset()):
        if line["would_write"] is None:
            assert "ViewPosition" not in ds or not ds.ViewPosition
            check_untouched(ds, RG1_J2KR)
        else:
            check_written(ds, line["would_write"], line["label"], model_sha256)
        assert line["would_write"] != "AP"  # this film is a PA chest: never AP
        assert ds.file_meta.TransferSyntaxUID == JPEG2000Lossless
        assert ds.SOPInstanceUID == original.SOPInstanceUID
        assert ds.PixelData == original.PixelData

    # Lateral chest without ViewPosition -> the lateral term (LL), as classify said.
    lateral_ds = pydicom.dcmread(lateral)
    at_orthanc = pydicom.dcmread(BytesIO(orthanc.instance_file(lateral_ds.SOPInstanceUID)))
    assert expected[lateral.name]["would_write"] == "LL"
    check_written(at_orthanc, "LL", "LAT", model_sha256)
    assert at_orthanc.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    assert at_orthanc.PixelData == lateral_ds.PixelData

    # Both PA chests (same SOP Instance UID, MONOCHROME2 and 1) are Secondary Capture: an IOD
    # without ViewPosition, so never classified or written, whatever their Modality says.
    pa_uid = pydicom.dcmread(CHEST_PA, stop_before_pixels=True).SOPInstanceUID
    pa_received = [r for r in recording_scp.received if r.sop_instance_uid == pa_uid]
    assert len(pa_received) == 2
    for received, source in zip(pa_received, (CHEST_PA, CHEST_PA_MONOCHROME1), strict=True):
        ds = received.dataset()
        assert ds.ViewPosition == "PA"
        check_untouched(ds, source)

    rows = instance_rows(node)
    want = [(expected[p.name]["node"]["action"], expected[p.name]["node"]["before"],
             expected[p.name]["node"]["after"],
             None if expected[p.name]["node"]["action"] == "skipped" else expected[p.name]["label"])
            for p in sent]  # a skipped instance is not classified: no label in the log
    # in arrival order (decision keys are spool names): the Secondary Capture chests take the
    # pass-through lane, so their rows may be written before the films still being classified
    rows.sort(key=lambda r: r.decision_key)
    assert [(r.action, r.view_position_before, r.view_position_after, r.label)
            for r in rows] == want
    assert {r.action for r in rows[2:]} == {"skipped"} and {r.label for r in rows[2:]} == {None}
    assert all("Secondary Capture" in r.decision_reason for r in rows[2:])
    first = rows[0]
    assert first.sop_instance_uid == original.SOPInstanceUID
    assert first.study_instance_uid == original.StudyInstanceUID
    assert first.series_instance_uid == original.SeriesInstanceUID
    assert first.modality == "CR" and first.patient_id == str(original.PatientID)
    assert first.transfer_syntax_uid == JPEG2000Lossless
    assert (first.calling_ae, first.called_ae) == ("MODALITY", "DICOMNODE")
    assert first.model_sha256 == model_sha256
    for row, path in zip(rows[:2], sent[:2], strict=True):  # the two classified ones
        probabilities = expected[path.name]["probabilities"]
        stored = {"AP": row.probability_ap, "PA": row.probability_pa, "LAT": row.probability_la,
                  "OTHER": row.probability_other}
        assert stored == pytest.approx(probabilities, abs=1e-5)
        assert row.thresholds["source"] == "manifest"
        assert {k: row.thresholds[k] for k in expected[path.name]["thresholds"]} == \
            expected[path.name]["thresholds"]
        if row.action == "uncertain":
            assert row.decision_reason  # an abstention always says why
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
    empty = without_view_position(RG1_J2KR, tmp_path / "empty.dcm")
    would_write = classify_lines(empty)[0]["would_write"]
    rows = instance_rows(node)
    assert (rows[0].view_position_before, rows[0].view_position_after) == ("PA", "PA")
    ds = recording_scp.by_uid(contradicting.SOPInstanceUID).dataset()
    if would_write in ("AP", "PA"):  # certain of the view: the lateral label is replaced
        assert (rows[1].action, rows[1].view_position_after) == ("overwritten", would_write)
        assert ds.ViewPosition == would_write
        assert ds.OriginalAttributesSequence[-1].ModifiedAttributesSequence[0].ViewPosition == "LL"
    else:  # not certain of AP vs PA: nothing to overwrite with, the value stays
        assert rows[1].action in ("disagrees", "uncertain") and ds.ViewPosition == "LL"
    assert rows[1].view_position_before == "LL"
    assert ds.PixelData == contradicting.PixelData


def test_a_dataset_the_tag_stage_cannot_read_is_forwarded_untouched(start_node, recording_scp,
                                                                     tmp_path: Path):
    """A film the model is sure of whose SOP Class UID element carries a VR pydicom does not
    know ('TI': what the decode fuzz campaign made of 'UI'): the pixels decode, the coercion
    record cannot be written. Logged unreadable with the reason and forwarded as received, not
    parked in failed/ as a node bug."""
    from tests.node_helpers import dataset_bytes, send_files

    candidates = [without_view_position(RG1_J2KR, tmp_path / "rg1.dcm"),
                  jpeg_as_dicom(LATERAL_JPEG, tmp_path / "lateral.dcm")]
    writes = [c for c, line in zip(candidates, classify_lines(*candidates), strict=True)
              if line["would_write"]]  # fmt: skip
    assert writes, "the shipped model writes on none of the reference films"
    raw = bytearray(writes[0].read_bytes())
    at = raw.index(b"\x08\x00\x16\x00UI")  # (0008,0016) SOP Class UID, explicit VR
    raw[at + 4 : at + 6] = b"TI"
    mangled = tmp_path / "mangled.dcm"
    mangled.write_bytes(bytes(raw))
    node = start_node([recording_scp.destination()])
    assert send_files(node.port, mangled) == [0x0000]
    recording_scp.wait_for(1)
    assert node.wait_idle(60)
    [row] = instance_rows(node)
    assert row.action == "unreadable" and "cannot tag the dataset" in row.error, row.error
    assert "Unknown Value Representation 'TI'" in row.error
    [received] = recording_scp.received
    assert dataset_bytes(received.encoded) == dataset_bytes(bytes(raw))  # as sent
    assert not list((node.spool.root / "failed").rglob("*.dcm"))


def test_logit_outputs_become_per_head_probabilities_and_older_manifests_still_read():
    """Models shipped since 2026-12-07 emit each head's logits (`scores: logits`): the node's
    softmax per head, in float64, equals the softmax Keras computed in training; a manifest
    without `scores` is read as probabilities, and an unknown value is refused."""
    import numpy as np

    from dicomnode.classify import ModelError, ModelPolicy
    from dicomnode.view_policy import HEAD_SLICES, head_probabilities

    logits = np.array([4.0, -1.0, 0.5, 0.3, -0.3, 9.0, -2.0])
    probabilities = head_probabilities(logits, "logits")
    for part in HEAD_SLICES.values():
        expected = np.exp(logits[part]) / np.exp(logits[part]).sum()
        assert np.allclose(probabilities[part], expected, rtol=0, atol=1e-12)
    assert np.array_equal(head_probabilities(probabilities, "probabilities"), probabilities)
    manifest = json.loads((DEFAULT_MODELS_DIR / "manifest.json").read_text())
    older = {k: v for k, v in manifest.items() if k != "scores"}
    assert ModelPolicy.from_manifest(older, "m.json").scores == "probabilities"
    assert ModelPolicy.from_manifest({**older, "scores": "logits"}, "m.json").scores == "logits"
    with pytest.raises(ModelError, match="scores must be one of probabilities, logits"):
        ModelPolicy.from_manifest({**older, "scores": "logodds"}, "m.json")


def test_auditor_fields_and_previews(start_node, recording_scp, tmp_path: Path, shared):
    """Accession number and body part are logged on every path that logs a decision
    (classified, skipped, unreadable with a readable header; absent -> None), through the
    journal; with web.previews the classified film's model input is kept as a PNG whose pixels
    are dicomnode.preprocess's of that file, and nothing else gets one; without it, none."""
    import numpy as np
    from PIL import Image

    from dicomnode.preprocess import preprocess_file
    from tests.node_helpers import send_files

    classified = jpeg_as_dicom(LATERAL_JPEG, tmp_path / "lateral.dcm")
    ds = pydicom.dcmread(classified)
    ds.AccessionNumber = "ACC-LAT-1"
    ds.save_as(classified)
    ct = pydicom.dcmread(CORPUS_DIR / "files" / "CT__CT_small.dcm")
    ct.AccessionNumber, ct.BodyPartExamined = "ACC-CT-7", "ABDOMEN"
    ct.save_as(tmp_path / "ct.dcm")
    from pydicom.encaps import encapsulate
    from pydicom.uid import generate_uid

    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.AccessionNumber, ds.BodyPartExamined = "ACC-BAD-2", "HAND"
    ds.PixelData = encapsulate([b"\xff\xd8 not a jpeg"])  # a header, pixels that never decode
    header_only = tmp_path / "undecodable.dcm"
    ds.save_as(header_only)
    bare_ct = CORPUS_DIR / "files" / "CT__693_UNCR.dcm"  # empty AccessionNumber, no body part
    sent = [classified, tmp_path / "ct.dcm", header_only, bare_ct]
    node = start_node([recording_scp.destination()], web={"previews": True})
    assert send_files(node.port, *sent) == [0] * 4
    recording_scp.wait_for(4)
    assert node.wait_idle(60)
    rows = {r.sop_instance_uid: r for r in instance_rows(node)}
    uid = {p: pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in sent}
    got = {p.name: (rows[uid[p]].action, rows[uid[p]].accession_number,
                    rows[uid[p]].body_part_examined) for p in sent}
    assert got == {
        "lateral.dcm": (got["lateral.dcm"][0], "ACC-LAT-1", "CHEST"),
        "ct.dcm": ("skipped", "ACC-CT-7", "ABDOMEN"),
        header_only.name: ("unreadable", "ACC-BAD-2", "HAND"),
        bare_ct.name: ("skipped", None, None),
    }
    assert got["lateral.dcm"][0] not in ("skipped", "unreadable")  # it was classified
    png = node.log_store.preview(rows[uid[classified]].decision_key)
    assert png is not None and png.startswith(b"\x89PNG")
    with Image.open(BytesIO(png)) as image:
        assert (image.mode, image.size) == ("L", (224, 224))
        pixels = np.asarray(image)
    assert np.array_equal(pixels, preprocess_file(classified))
    for path in sent[1:]:  # not classified: no model input, no preview
        assert node.log_store.preview(rows[uid[path]].decision_key) is None

    off = start_node([recording_scp.destination()],
                     config=node_config(tmp_path / "off", [recording_scp.destination()]))
    assert send_files(off.port, classified) == [0]
    recording_scp.wait_for(5)
    assert off.wait_idle(60)
    [row] = instance_rows(off)
    assert row.accession_number == "ACC-LAT-1" and row.action not in ("skipped", "unreadable")
    assert off.log_store.preview(row.decision_key) is None
    with off.log_store.engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM previews").scalar() == 0
