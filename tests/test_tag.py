"""Tag stage: the ViewPosition policy and the DICOM coercion record, on a real JPEG 2000 image."""

from __future__ import annotations

from datetime import datetime, timezone
from io import BytesIO

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicomnode import tag
from dicomnode.config import ConfigError, TagConfig
from dicomnode.config_file import parse_config
from tests.shared_data import CORPUS_DIR
from tests.view_predictions import (
    CONFIDENT_AP,
    CONFIDENT_PA,
    FRONTAL_NOT_CHEST,
    FRONTAL_UNSURE_AP_PA,
    LATERAL,
    OBLIQUE_LIKE,
    UNSURE_LATERAL,
)

RG1_J2KR = CORPUS_DIR / "files" / "CR__RG1_J2KR.dcm"
KNEE_AP = TagConfig(body_part_defaults={"knee": "AP", "HAND": "PA"})


@pytest.mark.parametrize(
    ("before", "pred", "config", "body_part", "action", "after", "reason_has"),
    [
        (None, CONFIDENT_PA, TagConfig(), None, "written", "PA", None),
        (None, CONFIDENT_AP, TagConfig(), None, "written", "AP", None),
        (None, FRONTAL_UNSURE_AP_PA, TagConfig(), None, "uncertain", None, "AP vs PA"),
        (None, FRONTAL_NOT_CHEST, TagConfig(), "KNEE", "uncertain", None, "chest"),
        (None, FRONTAL_NOT_CHEST, KNEE_AP, "KNEE", "written", "AP", "KNEE default AP"),
        (None, FRONTAL_NOT_CHEST, KNEE_AP, "Hand", "written", "PA", "HAND default PA"),
        (None, FRONTAL_NOT_CHEST, KNEE_AP, "FOOT", "uncertain", None, "AP vs PA"),
        (None, LATERAL, TagConfig(), None, "written", "LL", None),
        (None, LATERAL, TagConfig(la_term="RL"), None, "written", "RL", None),
        (None, LATERAL, KNEE_AP, "KNEE", "written", "LL", None),  # default is for frontal only
        (None, OBLIQUE_LIKE, TagConfig(), None, "uncertain", None, "oblique"),
        (None, OBLIQUE_LIKE, KNEE_AP, "KNEE", "uncertain", None, "oblique"),
        (None, UNSURE_LATERAL, TagConfig(), None, "uncertain", None, "not certain of lateral"),
        ("PA", CONFIDENT_PA, TagConfig(), None, "agrees", "PA", None),
        ("AP", CONFIDENT_PA, TagConfig(), None, "disagrees", "AP", "model: PA"),
        ("AP", CONFIDENT_PA, TagConfig(on_disagree="overwrite"), None, "overwritten", "PA", None),
        ("AP", FRONTAL_UNSURE_AP_PA, TagConfig(), None, "agrees", "AP", "frontal agrees"),
        ("PA", FRONTAL_NOT_CHEST, TagConfig(on_disagree="overwrite"), None, "agrees", "PA", None),
        ("LL", FRONTAL_UNSURE_AP_PA, TagConfig(on_disagree="overwrite"), None, "disagrees",
         "LL", "model: frontal"),  # a certain frontal, but no AP/PA to write: kept
        ("RL", LATERAL, TagConfig(), None, "agrees", "RL", None),
        ("LATERAL", LATERAL, TagConfig(), None, "agrees", "LATERAL", None),
        ("AP", LATERAL, TagConfig(), None, "disagrees", "AP", "model: LL"),
        ("AP", LATERAL, TagConfig(on_disagree="overwrite"), None, "overwritten", "LL", None),
        ("RLO", CONFIDENT_AP, TagConfig(), None, "disagrees", "RLO", None),
        ("LL", UNSURE_LATERAL, TagConfig(), None, "agrees", "LL", None),  # most probable: LAT
        ("AP", UNSURE_LATERAL, TagConfig(on_disagree="overwrite"), None, "uncertain", "AP", None),
        ("AP", OBLIQUE_LIKE, TagConfig(on_disagree="overwrite"), None, "uncertain", "AP", None),
    ],
)
def test_policy(before, pred, config, body_part, action, after, reason_has):
    decision = tag.decide(before, pred, config, body_part)
    assert (decision.action, decision.before, decision.after) == (action, before, after)
    if reason_has is not None:
        assert reason_has in (decision.reason or ""), decision.reason


def test_view_code_sequence_is_the_current_view():
    ds = Dataset()
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = (
        "272479007", "SCT", "postero-anterior")
    ds.ViewCodeSequence = Sequence([code])
    assert tag.current_view(ds) == "PA"
    assert tag.decide(tag.current_view(ds), CONFIDENT_AP, TagConfig()).action == "disagrees"
    assert tag.decide(tag.current_view(ds), CONFIDENT_PA, TagConfig()).action == "agrees"
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = (
        "R-10206", "SRT", "antero-posterior")
    assert tag.current_view(ds) == "AP"
    code.CodeValue, code.CodeMeaning = "399099002", "latero-medial oblique"
    assert tag.current_view(ds) == "LATERO-MEDIAL OB"  # 16 characters, as the log keeps
    assert tag.decide(tag.current_view(ds), LATERAL, TagConfig()).action == "disagrees"
    ds.ViewPosition = "LL"  # ViewPosition, when present, is what the image says
    assert tag.current_view(ds) == "LL"


def test_coercion_record_keeps_the_element_as_it_was_not_the_coded_view(shared):
    """A view known only from View Code Sequence, overwritten: the record's previous
    ViewPosition is the (absent) element, not the coded view the decision compared with."""
    ds = pydicom.dcmread(RG1_J2KR)
    del ds.ViewPosition
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = (
        "399348003", "SCT", "antero-posterior")
    ds.ViewCodeSequence = Sequence([code])
    config = TagConfig(on_disagree="overwrite", private_block=False)
    decision = tag.decide(tag.current_view(ds), CONFIDENT_PA, config)
    assert (decision.action, decision.before, decision.after) == ("overwritten", "AP", "PA")
    tag.apply(ds, decision, CONFIDENT_PA, "ab" * 32, config)
    assert ds.ViewPosition == "PA"
    assert ds.OriginalAttributesSequence[-1].ModifiedAttributesSequence[0].ViewPosition == ""


def test_removed_settings_say_what_replaces_them(tmp_path):
    path = tmp_path / "node.yaml"
    for key, hint in (("ap_term: AP", "body_part_defaults"),
                      ("confidence_threshold: 0.9", "tag.thresholds")):
        path.write_text(f"tag:\n  {key}\n")
        with pytest.raises(ConfigError, match=hint):
            parse_config(path.read_text(), str(path))


def test_coercion_record_and_untouched_pixel_data(shared):
    original = pydicom.dcmread(RG1_J2KR)
    ds = pydicom.dcmread(RG1_J2KR)
    del ds.ViewPosition
    config = TagConfig()
    pred = CONFIDENT_PA
    decision = tag.decide(tag.current_view(ds), pred, config)
    moment = datetime(2026, 1, 2, 3, 4, 5, 600000, tzinfo=timezone.utc)
    tag.apply(
        ds, decision, pred, "ab" * 32, config, source_of_previous_values="MODALITY", now=moment
    )
    buffer = BytesIO()
    ds.save_as(buffer)
    out = pydicom.dcmread(BytesIO(buffer.getvalue()))

    assert out.ViewPosition == "PA"
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
    assert "ViewPosition set to PA" in equipment.ContributionDescription

    block = tag.read_private_block(out, config)
    probabilities = pred.probabilities
    assert block == {
        "label": "PA",
        "probability_ap": f"{probabilities['AP']:.6f}",
        "probability_pa": f"{probabilities['PA']:.6f}",
        "probability_la": f"{probabilities['LAT']:.6f}",
        "probability_other": f"{probabilities['OTHER']:.6f}",
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
    decision = tag.decide(tag.current_view(ds), CONFIDENT_PA, config)
    assert decision.action == "agrees"
    tag.apply(ds, decision, CONFIDENT_PA, "cd" * 32, config)
    assert "OriginalAttributesSequence" not in ds
    assert "InstanceCoercionDateTime" not in ds
    assert tag.read_private_block(ds, config) is None


def test_overwrite_keeps_previous_value_and_appends(shared):
    ds = pydicom.dcmread(RG1_J2KR)  # ViewPosition PA
    config = TagConfig(on_disagree="overwrite", private_block=False)
    decision = tag.decide(tag.current_view(ds), LATERAL, config)
    tag.apply(ds, decision, LATERAL, "ef" * 32, config)
    tag.apply(ds, tag.decide("LL", CONFIDENT_AP, config), CONFIDENT_AP, "ef" * 32, config)
    history = [i.ModifiedAttributesSequence[0].ViewPosition for i in ds.OriginalAttributesSequence]
    assert history == ["PA", "LL"]
    assert ds.ViewPosition == "AP"
    assert len(ds.ContributingEquipmentSequence) == 2
    assert tag.read_private_block(ds, config) is None


def test_a_tagged_file_that_does_not_read_back_with_its_view_is_refused(shared):
    """The 1,800 s decode fuzz campaign found a header pydicom parses leniently (the VR and
    length of Implementation Class UID overwritten with 0xFF) whose tagged re-encoding reads back
    with no dataset at all: the node must not forward that file as 'written'. The intact film
    round-trips."""
    raw = RG1_J2KR.read_bytes()
    config = TagConfig(on_disagree="overwrite")
    intact = pydicom.dcmread(BytesIO(raw))
    decision = tag.decide(tag.current_view_position(intact), LATERAL, config)
    tag.apply(intact, decision, LATERAL, "0" * 64, config, source_of_previous_values="TEST")
    again = pydicom.dcmread(BytesIO(tag.encode_tagged(intact, decision.after)))
    assert again.ViewPosition == decision.after == "LL"

    # the campaign's input: a corpus file with that one change (the guard is the tag stage's,
    # whatever the SOP class; the node tags only CR and DX)
    mangled = bytearray((CORPUS_DIR / "files" / "CT__humans_ctbrain1.dcm").read_bytes())
    at = mangled.index(b"\x02\x00\x12\x00UI")  # (0002,0012) Implementation Class UID
    mangled[at + 4 : at + 8] = b"\xff\xff\xff\xff"
    ds = pydicom.dcmread(BytesIO(bytes(mangled)), force=True)
    decision = tag.decide(tag.current_view_position(ds), LATERAL, config)
    assert decision.writes
    tag.apply(ds, decision, LATERAL, "0" * 64, config, source_of_previous_values="TEST")
    with pytest.raises(tag.TaggedFileMismatch, match="reads back with ViewPosition None"):
        tag.encode_tagged(ds, decision.after)
