"""A log with reviewers' verdicts over real films, for export-reviews and the training run on
its output: one film still in the spool (sent/, where a reviewed film is by then), one only in
an archive folder, one found nowhere, one without a verdict."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pydicom
import sqlalchemy as sa

from dicomnode.logdb.entry import InstanceLogEntry
from dicomnode.logdb.store import LogStore
from tests.shared_data import CORPUS_DIR

SPOOL_FILM = CORPUS_DIR / "files" / "CR__RG1_J2KR.dcm"  # Philips CR chest PA, JPEG 2000
ARCHIVE_FILM = CORPUS_DIR / "files" / "CR__77654033_CR1_6154.dcm"  # lateral C-spine, CSPINE
OTHER_ARCHIVE_FILM = CORPUS_DIR / "files" / "CT__CT_small.dcm"  # in the archive, never reviewed
T0 = datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc)


@dataclass
class ReviewedLog:
    url: str
    spool: Path
    archive: Path
    keys: dict[str, str]  # "spool" | "archive" | "missing" | "unreviewed" -> decision key
    uids: dict[str, str]


def entry(key: str, uid: str, spool_path: Path, patient_id: str | None, body_part: str | None,
          study: str | None = None, minutes: int = 0) -> InstanceLogEntry:
    return InstanceLogEntry(
        received_at=T0 + timedelta(minutes=minutes), calling_ae="MODALITY",
        called_ae="DICOMNODE", peer_address="127.0.0.1:1",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1", sop_instance_uid=uid,
        study_instance_uid=study, series_instance_uid=None, modality="CR",
        patient_id=patient_id, transfer_syntax_uid=None, action="uncertain", label="PA",
        spool_path=str(spool_path), decision_key=key, accession_number=f"ACC-{key[-2:]}",
        body_part_examined=body_part)  # fmt: skip


def verdict(connection, instance_id: int, minutes: int, verdict: str, true_view: str,
            reviewer: str = "dr-a") -> None:
    connection.execute(sa.text(
        "INSERT INTO verdicts (instance_id, at, reviewer, verdict, true_view, note) "
        "VALUES (:i, :at, :r, :v, :t, NULL)"),
        {"i": instance_id, "at": (T0 + timedelta(days=1, minutes=minutes)).replace(tzinfo=None),
         "r": reviewer, "v": verdict, "t": true_view})


def build_reviewed_log(folder: Path) -> ReviewedLog:
    """The spool film's first verdict (right, PA) is superseded by a later one (wrong, LL):
    the newest counts. The archive film is judged right as LL; the missing one OTHER."""
    spool, archive = folder / "spool", folder / "archive"
    keys = {"spool": "00000000000000000001-000001", "archive": "00000000000000000002-000002",
            "missing": "00000000000000000003-000003", "unreviewed": "00000000000000000004-000004"}
    (spool / "processing").mkdir(parents=True)
    (spool / "sent" / "pacs").mkdir(parents=True)
    shutil.copy(SPOOL_FILM, spool / "sent" / "pacs" / f"{keys['spool']}.dcm")  # left processing/
    (archive / "2026" / "12").mkdir(parents=True)
    (archive / "README.txt").write_text("not DICOM")
    shutil.copy(OTHER_ARCHIVE_FILM, archive / "2026" / "ct.dcm")
    shutil.copy(ARCHIVE_FILM, archive / "2026" / "12" / "film.dcm")
    uids = {"spool": str(pydicom.dcmread(SPOOL_FILM, stop_before_pixels=True).SOPInstanceUID),
            "archive": str(pydicom.dcmread(ARCHIVE_FILM,
                                           stop_before_pixels=True).SOPInstanceUID),
            "missing": "1.2.826.0.1.3680043.8.498.999", "unreviewed": "1.2.826.0.1.3680043.8.1"}
    url = f"sqlite:///{folder / 'log.sqlite3'}"
    processing = spool / "processing"
    with LogStore.open(url) as store:
        ids = {
            "spool": store.record_instance(entry(keys["spool"], uids["spool"],
                                                 processing / f"{keys['spool']}.dcm",
                                                 "9f86d081884c7d65", "CHEST")),
            "archive": store.record_instance(entry(keys["archive"], uids["archive"],
                                                   processing / f"{keys['archive']}.dcm", None,
                                                   "CSPINE", study="1.2.3.study", minutes=1)),
            "missing": store.record_instance(entry(keys["missing"], uids["missing"],
                                                   processing / f"{keys['missing']}.dcm",
                                                   "p3", "KNEE", minutes=2)),
            "unreviewed": store.record_instance(entry(keys["unreviewed"], uids["unreviewed"],
                                                      processing / f"{keys['unreviewed']}.dcm",
                                                      "p4", "CHEST", minutes=3)),
        }
        with store.engine.begin() as connection:
            verdict(connection, ids["spool"], 0, "right", "PA")
            verdict(connection, ids["archive"], 1, "right", "LL", reviewer="dr-b")
            verdict(connection, ids["missing"], 2, "wrong", "OTHER")
            verdict(connection, ids["spool"], 3, "wrong", "LL")  # newer: this one counts
    return ReviewedLog(url, spool, archive, keys, uids)
