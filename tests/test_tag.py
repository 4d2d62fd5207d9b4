"""Tag stage: the ViewPosition policy and the DICOM coercion record, on a real JPEG 2000 image."""

from __future__ import annotations

from datetime import datetime, timezone
from io import BytesIO

import pydicom
import pytest

from dicomnode import tag
from dicomnode.classify import Prediction
from dicomnode.config import TagConfig
from tests.shared_data import CORPUS_DIR

RG1_J2KR = CORPUS_DIR / "files" / "CR__RG1_J2KR.dcm"


def prediction(label: str, confidence: float) -> Prediction:
    other = 1.0 - confidence
    probabilities = (
        {"AP": confidence, "LA": other} if label == "AP" else {"AP": other, "LA": confidence}
    )
    return Prediction(label, probabilities, confidence, 3.0)


@pytest.mark.parametrize(
    ("before", "label", "confidence", "on_disagree", "action", "after"),
    [
        (None, "AP", 0.95, "keep", "written", "AP"),
        (None, "LA", 0.95, "keep", "written", "LL"),
        (None, "LA", 0.80, "keep", "uncertain", None),
        ("PA", "AP", 0.95, "keep", "agrees", "PA"),
        ("PA", "AP", 0.60, "keep", "agrees", "PA"),  # agreeing: nothing changes at any confidence
        ("RL", "LA", 0.99, "keep", "agrees", "RL"),
        ("LATERAL", "LA", 0.99, "keep", "agrees", "LATERAL"),
        ("AP", "LA", 0.97, "keep", "disagrees", "AP"),
        ("AP", "LA", 0.97, "overwrite", "overwritten", "LL"),
        ("LL", "AP", 0.97, "overwrite", "overwritten", "AP"),
        ("LL", "AP", 0.50, "overwrite", "uncertain", "LL"),
        ("RLO", "AP", 0.97, "keep", "disagrees", "RLO"),  # oblique is neither frontal nor lateral
    ],
)
def test_policy(before, label, confidence, on_disagree, action, after):
    config = TagConfig(on_disagree=on_disagree)
    decision = tag.decide(before, prediction(label, confidence), config)
    assert (decision.action, decision.before, decision.after) == (action, before, after)


def test_configured_terms_are_written():
    config = TagConfig(ap_term="PA", la_term="RL", confidence_threshold=0.5)
    assert tag.decide(None, prediction("AP", 0.6), config).after == "PA"
    assert tag.decide(None, prediction("LA", 0.6), config).after == "RL"


def test_coercion_record_and_untouched_pixel_data(shared):
    original = pydicom.dcmread(RG1_J2KR)
    ds = pydicom.dcmread(RG1_J2KR)
    del ds.ViewPosition
    config = TagConfig()
    pred = prediction("AP", 0.97)
    decision = tag.decide(tag.current_view_position(ds), pred, config)
    moment = datetime(2026, 1, 2, 3, 4, 5, 600000, tzinfo=timezone.utc)
    tag.apply(
        ds, decision, pred, "ab" * 32, config, source_of_previous_values="MODALITY", now=moment
    )
    buffer = BytesIO()
    ds.save_as(buffer)
    out = pydicom.dcmread(BytesIO(buffer.getvalue()))

    assert out.ViewPosition == "AP"
    assert out.SOPInstanceUID == original.SOPInstanceUID
    assert out.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    assert out.PixelData == original.PixelData  # the JPEG 2000 codestream, byte for byte
    assert out.InstanceCoercionDateTime == "20260102030405.600000+0000"

    item = out.OriginalAttributesSequence[-1]
    assert item.ReasonForTheAttributeModification == "COERCE"
    assert item.ModifyingSystem.startswith("dicomnode ")
    assert item.SourceOfPreviousValues == "MODALITY"
    assert item.AttributeModificationDateTime == out.InstanceCoercionDateTime
    previous = item.ModifiedAttributesSequence[0]
    assert "ViewPosition" in previous and previous.ViewPosition == ""  # there was none

    equipment = out.ContributingEquipmentSequence[-1]
    code = equipment.PurposeOfReferenceCodeSequence[0]
    assert (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning) == (
        "109103", "DCM", "Modifying Equipment",
    )  # fmt: skip
    assert equipment.Manufacturer == "dicomnode" and equipment.SoftwareVersions

    block = tag.read_private_block(out, config)
    assert block == {
        "label": "AP",
        "probability_ap": "0.970000",
        "probability_la": "0.030000",
        "model_sha256": "ab" * 32,
        "software": item.ModifyingSystem,
    }
    # Only header elements changed: every original element except ViewPosition is still equal.
    for element in original:
        if element.keyword != "ViewPosition":
            assert out[element.tag] == element


def test_nothing_written_when_decision_does_not_write(shared):
    ds = pydicom.dcmread(RG1_J2KR)
    config = TagConfig()
    pred = prediction("AP", 0.99)
    decision = tag.decide(tag.current_view_position(ds), pred, config)
    assert decision.action == "agrees"
    tag.apply(ds, decision, pred, "cd" * 32, config)
    assert "OriginalAttributesSequence" not in ds
    assert "InstanceCoercionDateTime" not in ds
    assert tag.read_private_block(ds, config) is None


def test_overwrite_keeps_previous_value_and_appends(shared):
    ds = pydicom.dcmread(RG1_J2KR)  # ViewPosition PA
    config = TagConfig(on_disagree="overwrite", private_block=False)
    pred = prediction("LA", 0.95)
    decision = tag.decide(tag.current_view_position(ds), pred, config)
    tag.apply(ds, decision, pred, "ef" * 32, config)
    tag.apply(ds, tag.decide("LL", prediction("AP", 0.95), config), pred, "ef" * 32, config)
    history = [i.ModifiedAttributesSequence[0].ViewPosition for i in ds.OriginalAttributesSequence]
    assert history == ["PA", "LL"]
    assert ds.ViewPosition == "AP"
    assert len(ds.ContributingEquipmentSequence) == 2
    assert tag.read_private_block(ds, config) is None
