"""Shared builders for the log tests: realistic entries without repeating twenty fields."""

from __future__ import annotations

from datetime import datetime, timezone

from dicomnode.logdb.entry import InstanceLogEntry

MODEL_A = "a" * 64
MODEL_B = "b" * 64


def make_entry(n: int = 0, **overrides) -> InstanceLogEntry:
    values = dict(
        received_at=datetime(2026, 11, 20, 8, 0, tzinfo=timezone.utc),
        calling_ae="CR_ROOM1",
        called_ae="DICOMNODE",
        peer_address="127.0.0.1",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
        sop_instance_uid=f"1.2.826.0.1.3680043.8.498.{n}.3",
        study_instance_uid=f"1.2.826.0.1.3680043.8.498.{n // 4}.1",
        series_instance_uid=f"1.2.826.0.1.3680043.8.498.{n // 2}.2",
        modality="CR",
        patient_id=f"PAT{n // 4:04d}",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        action="written",
        label="AP",
        probability_ap=0.93,
        probability_la=0.07,
        confidence=0.93,
        model_sha256=MODEL_A,
        inference_ms=4.2,
        processing_ms=31.0,
        view_position_before=None,
        view_position_after="AP",
        routing={"rules": ["all"], "destinations": ["PACS"]},
    )
    values.update(overrides)
    return InstanceLogEntry(**values)
