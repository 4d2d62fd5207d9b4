"""What the node records for each received instance: the pipeline-to-log contract."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

# The action the tag stage took, one per instance.
ACTIONS = ("written", "agrees", "disagrees", "overwritten", "uncertain", "skipped", "unreadable")


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
    label: str | None = None  # "AP" / "LA"
    probability_ap: float | None = None
    probability_la: float | None = None
    confidence: float | None = None
    model_sha256: str | None = None
    inference_ms: float | None = None
    processing_ms: float | None = None
    view_position_before: str | None = None
    view_position_after: str | None = None
    error: str | None = None
    spool_path: str | None = None
    routing: dict = field(default_factory=dict)  # {"rules": [...], "destinations": [...]}
