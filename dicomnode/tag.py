"""Tag stage: the ViewPosition policy, and the DICOM coercion record when the node writes.

Only header elements change here; the pixel data element is never touched, so compressed pixel data
go out byte for byte (pydicom writes encapsulated PixelData back as the bytes it read).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicomnode import SOFTWARE_NAME, __version__
from dicomnode.classify import Prediction
from dicomnode.config import TagConfig

# ViewPosition (0018,5101) terms that mean the same view as the model's labels. Anything else that
# is present (oblique, decubitus, …) contradicts both labels.
FRONTAL_TERMS = frozenset({"AP", "PA"})
LATERAL_TERMS = frozenset({"LL", "RL", "LAT", "LATERAL"})
TERMS_FOR_LABEL = {"AP": FRONTAL_TERMS, "LA": LATERAL_TERMS}

MODIFYING_EQUIPMENT = ("109103", "DCM", "Modifying Equipment")
MODIFYING_SYSTEM = f"{SOFTWARE_NAME} {__version__}"

# Element offsets inside the private block (group gggg, elements gg xx10..)
PRIVATE_LABEL, PRIVATE_PROB_AP, PRIVATE_PROB_LA, PRIVATE_MODEL_SHA256, PRIVATE_SOFTWARE = (
    0x01, 0x02, 0x03, 0x04, 0x05,
)  # fmt: skip


@dataclass(frozen=True)
class TagDecision:
    action: str  # written | agrees | disagrees | overwritten | uncertain
    before: str | None
    after: str | None

    @property
    def writes(self) -> bool:
        return self.action in ("written", "overwritten")


def current_view_position(ds: Dataset) -> str | None:
    value = ds.get("ViewPosition")
    text = str(value).strip().upper() if value not in (None, "") else ""
    return text or None


def decide(before: str | None, prediction: Prediction, config: TagConfig) -> TagDecision:
    """The policy. An agreeing ViewPosition is left alone and logged `agrees` at any confidence
    (nothing changes either way); writing or contradicting needs confidence >= the threshold,
    below it the node changes nothing and logs `uncertain`."""
    term = config.ap_term if prediction.label == "AP" else config.la_term
    if before is not None and before in TERMS_FOR_LABEL.get(prediction.label, frozenset()):
        return TagDecision("agrees", before, before)
    if prediction.confidence < config.confidence_threshold:
        return TagDecision("uncertain", before, before)
    if before is None:
        return TagDecision("written", None, term)
    if config.on_disagree == "overwrite":
        return TagDecision("overwritten", before, term)
    return TagDecision("disagrees", before, before)


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

    previous = Dataset()
    previous.ViewPosition = decision.before or ""  # empty when there was none
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
    ds.InstanceCoercionDateTime = stamp

    purpose = Dataset()
    purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning = MODIFYING_EQUIPMENT
    equipment = Dataset()
    equipment.PurposeOfReferenceCodeSequence = Sequence([purpose])
    equipment.Manufacturer = SOFTWARE_NAME
    equipment.ManufacturerModelName = SOFTWARE_NAME
    equipment.SoftwareVersions = __version__
    equipment.ContributionDateTime = stamp
    equipment.ContributionDescription = (
        f"ViewPosition set to {decision.after} by the view classifier "
        f"(label {prediction.label}, confidence {prediction.confidence:.3f})"
    )[:64]
    if "ContributingEquipmentSequence" not in ds:
        ds.ContributingEquipmentSequence = Sequence()
    ds.ContributingEquipmentSequence.append(equipment)

    if config.private_block:
        write_private_block(ds, prediction, model_sha256, config)


def write_private_block(
    ds: Dataset, prediction: Prediction, model_sha256: str, config: TagConfig
) -> None:
    block = ds.private_block(config.private_group, config.private_creator, create=True)
    block.add_new(PRIVATE_LABEL, "CS", prediction.label)
    block.add_new(PRIVATE_PROB_AP, "DS", f"{prediction.probabilities.get('AP', 0.0):.6f}")
    block.add_new(PRIVATE_PROB_LA, "DS", f"{prediction.probabilities.get('LA', 0.0):.6f}")
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
        PRIVATE_MODEL_SHA256: "model_sha256",
        PRIVATE_SOFTWARE: "software",
    }
    result = {}
    for offset, name in names.items():
        if offset in block:
            value = block[offset].value
            result[name] = value.decode("ascii", "replace") if isinstance(value, bytes) else value
    return {k: str(v).strip() for k, v in result.items()}
