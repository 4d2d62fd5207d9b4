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


DAY1 = datetime(2026, 11, 20, tzinfo=timezone.utc)
STUDY_A = "1.2.826.0.1.3680043.8.498.100"
STUDY_B = "1.2.826.0.1.3680043.8.498.200"
STUDY_C = "1.2.826.0.1.3680043.8.498.300"


def populate(store) -> dict[str, int]:
    """A small log with one instance per interesting case; returns SOP UID suffix -> row id.

    study A (CR_ROOM1, day 1, model A): a1 written AP 0.97 delivered; a2 agrees LA 0.88 with a
        retry then sent; a3 disagrees AP 0.81 (modality said LL, overwritten? no: kept) failed
    study B (CR_ROOM2, day 2, model B): b1 uncertain 0.55 pending (retry only); b2 overwritten LA
        0.92 delivered to two destinations
    study C (CR_ROOM1, day 3, no model): c1 skipped (not classified), no delivery attempt
    """
    from datetime import timedelta

    def at(day: int, hour: int) -> datetime:
        return DAY1 + timedelta(days=day, hours=hour)

    cases = {
        "a1": dict(study_instance_uid=STUDY_A, received_at=at(0, 8), action="written", label="AP",
                   confidence=0.97, view_position_before=None, view_position_after="AP"),
        "a2": dict(study_instance_uid=STUDY_A, received_at=at(0, 9), action="agrees", label="LA",
                   confidence=0.88, view_position_before="LL", view_position_after="LL"),
        "a3": dict(study_instance_uid=STUDY_A, received_at=at(0, 10), action="disagrees",
                   label="AP", confidence=0.81, view_position_before="LL",
                   view_position_after="LL"),
        "b1": dict(study_instance_uid=STUDY_B, received_at=at(1, 8), action="uncertain",
                   label=None, confidence=0.55, calling_ae="CR_ROOM2", model_sha256=MODEL_B,
                   view_position_before=None, view_position_after=None, patient_id="PAT-B"),
        "b2": dict(study_instance_uid=STUDY_B, received_at=at(1, 9), action="overwritten",
                   label="LA", confidence=0.92, calling_ae="CR_ROOM2", model_sha256=MODEL_B,
                   view_position_before="AP", view_position_after="LL", patient_id="PAT-B",
                   routing={"rules": ["two"], "destinations": ["PACS", "ARCHIVE"]}),
        "c1": dict(study_instance_uid=STUDY_C, received_at=at(2, 8), action="skipped",
                   label=None, confidence=None, model_sha256=None, modality="DX",
                   probability_ap=None, probability_la=None, view_position_after=None,
                   routing={"rules": [], "destinations": []}),
    }  # fmt: skip
    ids: dict[str, int] = {}
    for n, (key, overrides) in enumerate(cases.items()):
        overrides.setdefault("patient_id", "PAT-A" if key.startswith("a") else "PAT-C")
        ids[key] = store.record_instance(
            make_entry(n, sop_instance_uid=f"{overrides['study_instance_uid']}.{key}", **overrides)
        )

    def forward(key: str, destination: str, outcome: str, attempt: int, status=None) -> None:
        study = {"a": STUDY_A, "b": STUDY_B, "c": STUDY_C}[key[0]]
        store.record_forward(ids[key], f"{study}.{key}", destination, outcome, status,
                             None if outcome == "sent" else "peer said no", attempt, DAY1)

    forward("a1", "PACS", "sent", 1, 0x0000)
    forward("a2", "PACS", "retry", 1, 0xA700)
    forward("a2", "PACS", "sent", 2, 0x0000)
    forward("a3", "PACS", "retry", 1, 0xA700)
    forward("a3", "PACS", "failed", 2, 0xA700)
    forward("b1", "PACS", "retry", 1, None)
    forward("b2", "PACS", "sent", 1, 0x0000)
    forward("b2", "ARCHIVE", "sent", 1, None)
    return ids
