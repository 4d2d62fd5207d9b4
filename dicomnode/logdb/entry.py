"""What the node records for each received instance: the pipeline-to-log contract."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dicomnode.classify import Prediction

# The action the tag stage took, one per instance.
ACTIONS = ("written", "agrees", "disagrees", "overwritten", "uncertain", "skipped", "unreadable")
# What became of an association (the associations table): aborted = accepted, then aborted.
ASSOCIATION_OUTCOMES = ("accepted", "rejected", "aborted")


@dataclass
class InstanceLogEntry:
    received_at: datetime
    calling_ae: str
    called_ae: str
    peer_address: str
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str | None
    series_instance_uid: str | None
    modality: str | None
    patient_id: str | None  # already in the configured form (plain, salted hash, or None)
    transfer_syntax_uid: str | None
    action: str  # one of ACTIONS
    label: str | None = None  # the model's most probable class: AP, PA, LAT or OTHER
    probability_ap: float | None = None
    probability_la: float | None = None  # lateral (class LAT)
    confidence: float | None = None
    model_sha256: str | None = None
    inference_ms: float | None = None
    processing_ms: float | None = None
    view_position_before: str | None = None
    view_position_after: str | None = None
    error: str | None = None
    spool_path: str | None = None
    routing: dict = field(default_factory=dict)  # {"rules": [...], "destinations": [...]}
    probability_pa: float | None = None
    probability_other: float | None = None
    decision_reason: str | None = None  # why nothing was written, or where a value came from
    thresholds: dict | None = None  # {"source": "manifest"|"config", "frontal": …, …}
    decision_key: str | None = None  # the journal key (spool name): one row per decision
    accession_number: str | None = None  # AccessionNumber (0008,0050), for the auditor
    body_part_examined: str | None = None  # BodyPartExamined (0018,0015): the reviewed region


def discard_rule(routing: dict | None) -> str | None:
    """The rule that discarded the instance (routing sent it nowhere on purpose), from the
    routing an entry logs (route.RoutingDecision.as_log); None when it was routed."""
    if not routing or routing.get("action") != "discard":
        return None
    return (routing.get("rules") or ["(default)"])[-1]


PATIENT_ID_FORMS = ("plain", "hash", "omit")


def patient_id_in_configured_form(patient_id: str | None, form: str, salt: str = "") -> str | None:
    """The patient ID as the log stores it (config `log.patient_id`): the same function serves the
    pipeline writing entries and the auditor's query, so a typed plain ID finds its hashed rows."""
    if form not in PATIENT_ID_FORMS:
        raise ValueError(f"patient_id form {form!r} is not one of {', '.join(PATIENT_ID_FORMS)}")
    if patient_id is None or form == "omit":
        return None
    if form == "plain":
        return patient_id
    # Keyed hash: without the salt an auditor's list of IDs cannot be matched by brute force.
    return hmac.new(salt.encode(), patient_id.encode(), hashlib.sha256).hexdigest()


def record_prediction(entry: InstanceLogEntry, prediction: Prediction, sha256: str) -> None:
    """The model's output as the log keeps it: every class probability and the thresholds."""
    entry.label = prediction.label
    entry.probability_ap = prediction.probabilities.get("AP")
    entry.probability_pa = prediction.probabilities.get("PA")
    entry.probability_la = prediction.probabilities.get("LAT")
    entry.probability_other = prediction.probabilities.get("OTHER")
    entry.confidence = prediction.confidence
    entry.model_sha256 = sha256
    entry.inference_ms = prediction.inference_ms
    entry.thresholds = {"source": prediction.threshold_source, **(prediction.thresholds or {})}
