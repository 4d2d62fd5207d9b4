"""Tag stage: the ViewPosition policy, and the DICOM coercion record when the node writes.

Only header elements change here; the pixel data element is never touched, so compressed pixel data
go out byte for byte (pydicom writes encapsulated PixelData back as the bytes it read).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import datetime, timezone

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
)

from dicomnode import SOFTWARE_NAME, __version__
from dicomnode.classify import Prediction
from dicomnode.config import TagConfig, body_part_key
from dicomnode.identity import set_implementation

# ViewPosition (0018,5101) terms by view family. Anything else that is present (oblique,
# decubitus, …) is "other": it contradicts a frontal or lateral call.
FRONTAL_TERMS = frozenset({"AP", "PA"})
LATERAL_TERMS = frozenset({"LL", "RL", "LAT", "LATERAL"})
# The ViewPosition term -> the CID 4010 "DX View" code the node writes beside it (SNOMED CT).
# Read back, a code or meaning means the first term listed with it (lateral: LATERAL).
CODED_VIEWS = {
    "AP": ("399348003", "antero-posterior"),
    "PA": ("272479007", "postero-anterior"),
    "LL": ("399173006", "left lateral"),
    "RL": ("399198007", "right lateral"),
    "LATERAL": ("399067008", "lateral"),
    "LAT": ("399067008", "lateral"),
}
_FIRST_TERMS = list(reversed(CODED_VIEWS.items()))  # reversed: the first term listed wins
# View Code Sequence (0054,0220) codes (CID 4010 SNOMED CT, and the older SNOMED-RT values) and
# code meanings -> the ViewPosition term they mean; other codes (obliques, axial, …) map to
# their meaning.
VIEW_CODES = {code: term for term, (code, _) in _FIRST_TERMS} | {
    "R-10206": "AP", "R-10214": "PA", "R-10232": "RL", "R-10236": "LL", "R-10220": "LATERAL"}
VIEW_MEANINGS = {meaning.upper(): term for term, (_, meaning) in _FIRST_TERMS}

# SOP classes whose IOD has ViewPosition (0018,5101) with the AP / PA / LL / RL terms: the CR
# Series module (PS3.3 C.8.1.1) and DX Positioning (C.8.11.5). Mammography's DX Positioning uses
# other terms (CC, MLO), intra-oral images no such terms, Secondary Capture no ViewPosition at all.
TAGGABLE_SOP_CLASSES = frozenset({ComputedRadiographyImageStorage,
                                  DigitalXRayImageStorageForPresentation,
                                  DigitalXRayImageStorageForProcessing})  # fmt: skip
# In DX, View Code Sequence is Type 1 beside ViewPosition: the node writes both (C.8.11.5).
CODED_VIEW_SOP_CLASSES = frozenset({DigitalXRayImageStorageForPresentation,
                                    DigitalXRayImageStorageForProcessing})  # fmt: skip

MODIFYING_EQUIPMENT = ("109103", "DCM", "Modifying Equipment")
MODIFYING_SYSTEM = f"{SOFTWARE_NAME} {__version__}"

# Element offsets inside the private block (group gggg, elements gg xx10..)
PRIVATE_LABEL, PRIVATE_PROB_AP, PRIVATE_PROB_LA, PRIVATE_MODEL_SHA256, PRIVATE_SOFTWARE = (
    0x01, 0x02, 0x03, 0x04, 0x05,
)  # fmt: skip
PRIVATE_PROB_PA, PRIVATE_PROB_OTHER = 0x06, 0x07


@dataclass(frozen=True)
class TagDecision:
    action: str  # written | agrees | disagrees | overwritten | uncertain
    before: str | None
    after: str | None
    reason: str | None = None  # why nothing was written, or where a written value came from

    @property
    def writes(self) -> bool:
        return self.action in ("written", "overwritten")


def not_taggable(sop_class_uid: str | None) -> str | None:
    """Why the node does not classify or tag an instance of this SOP class; None if it does."""
    uid = (sop_class_uid or "").strip()
    if uid in TAGGABLE_SOP_CLASSES:
        return None
    name = UID(uid).name if uid else "no SOP Class UID"
    return (f"SOP class {name} ({uid}): its IOD has no ViewPosition with the AP/PA/lateral "
            "terms (the node writes only CR and DX images); forwarded untouched")


def current_view_position(ds: Dataset) -> str | None:
    value = ds.get("ViewPosition")
    text = str(value).strip().upper() if value not in (None, "") else ""
    return text or None


def coded_view(ds: Dataset) -> str | None:
    """The view View Code Sequence (0054,0220) states, as a ViewPosition term where one means
    the same (AP, PA, LL, RL, LATERAL), else its code meaning in capitals (e.g. OBLIQUE)."""
    try:
        items = ds.get("ViewCodeSequence") or []
        item = items[0] if len(items) else None
    except Exception:  # malformed sequence: no coded view
        return None
    if item is None:
        return None
    code = str(item.get("CodeValue", "") or "").strip()
    if code in VIEW_CODES:
        return VIEW_CODES[code]
    meaning = " ".join(str(item.get("CodeMeaning", "") or "").upper().split())
    return VIEW_MEANINGS.get(meaning, meaning[:16] or None)  # the log keeps 16 characters


def current_view(ds: Dataset) -> str | None:
    """The image's view before the node: ViewPosition, else what View Code Sequence says."""
    return current_view_position(ds) or coded_view(ds)


def body_part_of(ds: Dataset) -> str | None:
    """BodyPartExamined, for `tag.body_part_defaults`; None when absent or unreadable."""
    try:
        return str(ds.get("BodyPartExamined", "") or "").strip() or None
    except Exception:  # a malformed element: no body part, as if absent
        return None


def family_of(term: str | None) -> str | None:
    if term is None:
        return None
    if term in FRONTAL_TERMS:
        return "frontal"
    if term in LATERAL_TERMS:
        return "lateral"
    return "other"


def _model_term(prediction: Prediction, config: TagConfig) -> str | None:
    call = prediction.call
    decided = call.decided if call is not None else None
    return config.la_term if decided == "LAT" else decided


def decide(before: str | None, prediction: Prediction, config: TagConfig,
           body_part: str | None = None) -> TagDecision:
    """The policy. The model's call (dicomnode.view_policy) is AP, PA, lateral, "frontal, AP vs
    PA unknown" or nothing. The node writes only a view the model is certain of; for a certain
    frontal whose AP vs PA is not, only the configured default for the BodyPartExamined. An
    existing view (ViewPosition, or View Code Sequence) is compared at the level the model is
    certain of: a frontal call agrees with AP and with PA."""
    call = prediction.call
    term = _model_term(prediction, config)
    family = call.family_decided if call is not None else None
    reason = call.reason if call is not None else "no view call"
    if term is None and family == "frontal":
        key = body_part_key(body_part)
        default = config.body_part_defaults.get(key) if key else None
        if default is not None:
            term = default
            reason = (f"frontal; AP vs PA not certain, BodyPartExamined {key} default "
                      f"{default} (tag.body_part_defaults)")
    if before is not None:
        before_family = family_of(before)
        if term is not None and before in (LATERAL_TERMS if term in LATERAL_TERMS
                                           else {term}):
            return TagDecision("agrees", before, before, None)
        if term is None and family is not None and before_family == family:
            return TagDecision("agrees", before, before, f"{family} agrees; {reason}")
        if term is None and family is None:
            # Unsure: an existing value the most probable class supports is noted as agreeing.
            supports = {"AP": {"AP"}, "PA": {"PA"}, "LAT": LATERAL_TERMS}.get(prediction.label,
                                                                               set())
            if before in supports:
                return TagDecision("agrees", before, before, reason)
            return TagDecision("uncertain", before, before, reason)
        # Certain and contradicting (a different view, or a different family).
        if term is not None and config.on_disagree == "overwrite":
            return TagDecision("overwritten", before, term, f"was {before}")
        what = term or family
        return TagDecision("disagrees", before, before, f"model: {what}; image: {before}")
    if term is None:
        return TagDecision("uncertain", None, None, reason)
    return TagDecision("written", None, term,
                       reason if call is not None and call.decided is None else None)


def apply(
    ds: Dataset,
    decision: TagDecision,
    prediction: Prediction,
    model_sha256: str,
    config: TagConfig,
    source_of_previous_values: str = "",
    now: datetime | None = None,
) -> None:
    """Write ViewPosition and the coercion record into `ds` (only when the decision writes)."""
    if not decision.writes:
        return
    now = now or datetime.now(timezone.utc)
    stamp = now.strftime("%Y%m%d%H%M%S.%f") + now.strftime("%z")

    coded = str(ds.get("SOPClassUID", "")) in CODED_VIEW_SOP_CLASSES
    previous = Dataset()
    # The elements as they were, not the view the decision compared with: that may have come
    # from View Code Sequence while ViewPosition itself was absent (then empty, as PS3.3
    # records an attribute that had no value).
    previous.ViewPosition = ds.get("ViewPosition") or ""
    # DX Positioning (C.8.11.5) is optional in the DX IOD; once the node puts ViewPosition in,
    # the module is there and its Type 2 Positioner Type must be too (empty: unknown).
    complete_module = coded and "PositionerType" not in ds
    if coded:
        previous.ViewCodeSequence = Sequence(
            [Dataset(item) for item in ds.get("ViewCodeSequence") or []])
    if complete_module:
        previous.PositionerType = ""
    original = Dataset()
    original.ModifiedAttributesSequence = Sequence([previous])
    original.AttributeModificationDateTime = stamp
    original.ModifyingSystem = MODIFYING_SYSTEM
    original.SourceOfPreviousValues = source_of_previous_values[:64]
    original.ReasonForTheAttributeModification = "COERCE"
    if "OriginalAttributesSequence" not in ds:
        ds.OriginalAttributesSequence = Sequence()
    ds.OriginalAttributesSequence.append(original)

    ds.ViewPosition = decision.after
    if coded:
        ds.ViewCodeSequence = Sequence([view_code_item(decision.after)])
    if complete_module:
        ds.PositionerType = ""
    ds.InstanceCoercionDateTime = stamp

    purpose = Dataset()
    purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning = MODIFYING_EQUIPMENT
    equipment = Dataset()
    equipment.PurposeOfReferenceCodeSequence = Sequence([purpose])
    equipment.Manufacturer = SOFTWARE_NAME
    equipment.ManufacturerModelName = SOFTWARE_NAME
    equipment.SoftwareVersions = __version__
    equipment.ContributionDateTime = stamp
    what = "ViewPosition and View Code Sequence" if coded else "ViewPosition"
    equipment.ContributionDescription = (
        f"{what} set to {decision.after} by the view classifier "
        f"(label {prediction.label}, confidence {prediction.confidence:.3f}"
        + (f"; {decision.reason}" if decision.reason else "") + ")"
    )[:1024]  # ST: up to 1024 characters
    if "ContributingEquipmentSequence" not in ds:
        ds.ContributingEquipmentSequence = Sequence()
    ds.ContributingEquipmentSequence.append(equipment)

    if config.private_block:
        write_private_block(ds, prediction, model_sha256, config)


class TaggedFileMismatch(ValueError):
    """The tagged dataset, written out, does not read back with the view that was written."""


def encode_tagged(ds: Dataset, view_written: str) -> bytes:
    """The file of a tagged dataset (as read: same transfer syntax, encapsulated pixel data
    as-is), read back before anyone relies on it: a damaged header that pydicom parsed leniently
    can re-encode into a file whose ViewPosition is lost or moved (found by the decode fuzz
    campaign), and the log must never say a view was written that the file does not hold."""
    set_implementation(ds.file_meta)  # the node wrote this file (PS3.10 7.1)
    buffer = io.BytesIO()
    ds.save_as(buffer)
    data = buffer.getvalue()
    again = dcmread(io.BytesIO(data), stop_before_pixels=True)
    found = current_view_position(again)
    if found != view_written or again.get("SOPInstanceUID") != ds.get("SOPInstanceUID"):
        raise TaggedFileMismatch(
            f"the tagged file reads back with ViewPosition {found!r} and SOP Instance UID "
            f"{again.get('SOPInstanceUID')!r}, not {view_written!r} and "
            f"{ds.get('SOPInstanceUID')!r}"
        )
    return data


def view_code_item(term: str) -> Dataset:
    """The View Code Sequence item for a ViewPosition term (CID 4010, SNOMED CT)."""
    value, meaning = CODED_VIEWS[term]
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "SCT", meaning
    item.ViewModifierCodeSequence = Sequence()  # Type 2 in DX: present, empty (no modifier)
    return item


def write_private_block(
    ds: Dataset, prediction: Prediction, model_sha256: str, config: TagConfig
) -> None:
    block = ds.private_block(config.private_group, config.private_creator, create=True)
    block.add_new(PRIVATE_LABEL, "CS", prediction.label)
    block.add_new(PRIVATE_PROB_AP, "DS", f"{prediction.probabilities.get('AP', 0.0):.6f}")
    block.add_new(PRIVATE_PROB_LA, "DS", f"{prediction.probabilities.get('LAT', 0.0):.6f}")
    block.add_new(PRIVATE_PROB_PA, "DS", f"{prediction.probabilities.get('PA', 0.0):.6f}")
    block.add_new(PRIVATE_PROB_OTHER, "DS", f"{prediction.probabilities.get('OTHER', 0.0):.6f}")
    block.add_new(PRIVATE_MODEL_SHA256, "LO", model_sha256)
    block.add_new(PRIVATE_SOFTWARE, "LO", MODIFYING_SYSTEM)


def read_private_block(ds: Dataset, config: TagConfig) -> dict[str, str] | None:
    """The node's private block as a dict, or None if the dataset has none (for tests/tools)."""
    try:
        block = ds.private_block(config.private_group, config.private_creator)
    except KeyError:
        return None
    names = {
        PRIVATE_LABEL: "label",
        PRIVATE_PROB_AP: "probability_ap",
        PRIVATE_PROB_LA: "probability_la",
        PRIVATE_PROB_PA: "probability_pa",
        PRIVATE_PROB_OTHER: "probability_other",
        PRIVATE_MODEL_SHA256: "model_sha256",
        PRIVATE_SOFTWARE: "software",
    }
    result = {}
    for offset, name in names.items():
        if offset in block:
            value = block[offset].value
            result[name] = value.decode("ascii", "replace") if isinstance(value, bytes) else value
    return {k: str(v).strip() for k, v in result.items()}
