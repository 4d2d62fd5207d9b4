"""`dicomnode log export-reviews`: reviewers' verdicts -> training data in the xray-views layout.

For every instance whose newest verdict exists (verdicts are append-only; the newest counts),
the film is looked up: the decision's spool name in the spool's folders (dicomnode.spool.locate:
by the time anyone reviews it, a film has moved from processing/ to outgoing/ and sent/), else an
archive folder tree searched by SOP Instance UID. It
is decoded and windowed by the node's own code (dicomnode.preprocess.dataset_to_grey, behind
the header checks of dicomnode.pixel_checks), reduced to a long side of at most 512 px and written
as an 8-bit grey JPEG (quality 92, as the shared xray-views set) to
`OUT/reviews/<label>/<name>.jpg`, with `OUT/labels.csv` in the columns of xray-views:

    file,label,source,body_part,licence,origin,sha256,view,patient_id,region

`label`/`view` come from the verdict's true view (AP, PA -> frontal AP/PA; LL, RL, LAT -> lateral
LL/RL/LAT; OTHER -> oblique, view unknown), `region` from BodyPartExamined (REGION_OF_BODY_PART),
`patient_id` is the patient id as the node logged it (plain or a salted hash: it only groups
folds; where the log omits it, the study's UID groups the study's films). The name is the
decision's spool name (no patient data in file names). A film seen twice (the same SOP
Instance UID logged twice) is written once, with its newest verdict.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from dicomnode.logdb.models import InstanceRow, VerdictRow
from dicomnode.logdb.review import newest_verdict_ids
from dicomnode.logdb.store import LogStore
from dicomnode.spool import locate

COLUMNS = ("file", "label", "source", "body_part", "licence", "origin", "sha256", "view",
           "patient_id", "region")  # as ../shared/data/xray-views/labels.csv
SOURCE = "reviews"
LICENCE = "the hospital's own films, reviewed in dicomnode (patient data: not for redistribution)"
MAX_SIDE = 512
JPEG_QUALITY = 92
# The verdict's true view -> (label, view) of the xray-views layout.
LABEL_OF_TRUE_VIEW = {
    "AP": ("frontal", "AP"), "PA": ("frontal", "PA"),
    "LL": ("lateral", "LL"), "RL": ("lateral", "RL"), "LAT": ("lateral", "LAT"),
    "OTHER": ("oblique", "unknown"),
}
# BodyPartExamined (PS3.16 Annex L terms, spaces and case ignored) -> xray-views region;
# anything else, or none, is `mixed`.
REGION_OF_BODY_PART = {
    **dict.fromkeys(("CHEST", "THORAX", "LUNG", "RIB", "RIBS", "STERNUM"), "chest"),
    **dict.fromkeys(("HAND", "FINGER", "THUMB", "WRIST", "FOREARM", "ELBOW", "ARM", "UPPERARM",
                     "HUMERUS", "SHOULDER", "CLAVICLE", "SCAPULA", "FOOT", "TOE", "ANKLE", "HEEL",
                     "CALCANEUS", "LEG", "LOWERLEG", "KNEE", "PATELLA", "FEMUR", "TIBIA", "FIBULA",
                     "EXTREMITY", "UPPERLIMB", "LOWERLIMB", "UPREXM", "LOWEXM"), "limbs"),
    **dict.fromkeys(("SPINE", "CSPINE", "TSPINE", "LSPINE", "SSPINE", "WHOLESPINE", "CTSPINE",
                     "TLSPINE", "LSSPINE", "COCCYX", "SACRUM", "NECK"), "spine"),
    **dict.fromkeys(("SKULL", "HEAD", "FACE", "JAW", "MANDIBLE", "MAXILLA", "SINUS", "NOSE",
                     "ORBIT", "TMJ", "ZYGOMA"), "skull"),
    **dict.fromkeys(("ABDOMEN", "PELVIS", "ABDOMENPELVIS", "HIP", "SIJOINT", "KUB", "BLADDER"),
                    "abdomen_pelvis"),
}


def region_of(body_part: str | None) -> str:
    key = "".join((body_part or "").upper().split())
    return REGION_OF_BODY_PART.get(key, "mixed")


@dataclass
class Reviewed:
    """An instance with its newest verdict, as the log holds it."""

    instance_id: int
    decision_key: str | None
    sop_instance_uid: str
    study_instance_uid: str | None
    patient_id: str | None
    body_part_examined: str | None
    spool_path: str | None
    verdict: str
    true_view: str
    reviewer: str
    at: Any


@dataclass
class ExportResult:
    written: list[dict[str, str]] = field(default_factory=list)  # labels.csv rows
    missing: list[tuple[Reviewed, str]] = field(default_factory=list)  # (instance, why)


def reviewed_instances(store: LogStore) -> list[Reviewed]:
    """Every instance with a verdict, with its newest one (review.newest_verdict_ids: the last
    appended); one per SOP Instance UID (its newest verdict), oldest first."""
    query = (select(InstanceRow.id, InstanceRow.decision_key, InstanceRow.sop_instance_uid,
                    InstanceRow.study_instance_uid, InstanceRow.patient_id,
                    InstanceRow.body_part_examined, InstanceRow.spool_path, VerdictRow.verdict,
                    VerdictRow.true_view, VerdictRow.reviewer, VerdictRow.at)
             .join(VerdictRow, VerdictRow.instance_id == InstanceRow.id)
             .where(VerdictRow.id.in_(newest_verdict_ids()))
             .order_by(VerdictRow.id))
    with store.engine.connect() as connection:
        rows = [Reviewed(*row) for row in connection.execute(query)]
    newest: dict[str, Reviewed] = {}
    for row in rows:  # oldest verdict first: a later one for the same film replaces it
        newest.pop(row.sop_instance_uid, None)
        newest[row.sop_instance_uid] = row
    return list(newest.values())


def find_in_spool(row: Reviewed, spool: Path | None) -> Path | None:
    """The decision's film where a spool holds it now (dicomnode.spool.locate): in `spool`
    where the export runs elsewhere, else in the spool the logged path belongs to."""
    roots = [spool] if spool is not None else []
    if row.spool_path:
        roots.append(Path(row.spool_path).parent.parent)  # <spool>/processing/NAME.dcm
    for root in roots:
        found = locate(root, row.spool_path, row.decision_key)
        if found is not None:
            return found
    return None


class ArchiveIndex:
    """SOP Instance UID -> file in a folder tree of DICOM files, read once and only as far as
    needed (file meta first, else the dataset header)."""

    def __init__(self, root: Path | None) -> None:
        self.root = root
        self._found: dict[str, Path] = {}
        self._walk: Iterator[Path] | None = None

    def find(self, sop_instance_uid: str) -> Path | None:
        if sop_instance_uid in self._found:
            return self._found[sop_instance_uid]
        if self.root is None:
            return None
        if self._walk is None:
            self._walk = self._files()
        for path in self._walk:
            uid = _sop_instance_uid(path)
            if uid is not None:
                self._found.setdefault(uid, path)
                if uid == sop_instance_uid:
                    return path
        return None

    def _files(self) -> Iterator[Path]:
        assert self.root is not None
        for folder, _, names in os.walk(self.root):
            for name in sorted(names):
                yield Path(folder) / name


def _sop_instance_uid(path: Path) -> str | None:
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
    except Exception:  # not DICOM, unreadable: not the file looked for
        return None
    meta = getattr(ds, "file_meta", None)
    uid = (meta.get("MediaStorageSOPInstanceUID") if meta is not None else None) or ds.get(
        "SOPInstanceUID")
    return str(uid).strip() if uid else None


def film_as_jpeg(path: Path) -> bytes:
    """A DICOM film as the xray-views set stores one: the node's decode and window (8-bit
    grey), long side at most MAX_SIDE, JPEG quality 92. Raises on files it cannot read."""
    import pydicom
    from PIL import Image

    from dicomnode.guard import Limits
    from dicomnode.pixel_checks import check_dataset, check_file
    from dicomnode.preprocess import dataset_to_grey

    limits = Limits()
    check_file(path, limits)
    ds = pydicom.dcmread(path)
    check_dataset(ds, limits)
    image = Image.fromarray(dataset_to_grey(ds), mode="L")
    if max(image.size) > MAX_SIDE:
        image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def export_reviews(store: LogStore, out: Path, archive: Path | None = None,
                   spool: Path | None = None) -> ExportResult:
    """Write OUT/reviews/<label>/<name>.jpg and OUT/labels.csv for every reviewed instance
    whose film is found; list the others with the reason. JPEGs of an earlier export that
    this one does not list are removed, so the folder always matches its labels.csv."""
    result = ExportResult()
    archive_index = ArchiveIndex(archive)
    out.mkdir(parents=True, exist_ok=True)
    kept: set[Path] = set()
    for row in reviewed_instances(store):
        if row.true_view not in LABEL_OF_TRUE_VIEW:
            result.missing.append((row, f"unknown true view {row.true_view!r}"))
            continue
        label, view = LABEL_OF_TRUE_VIEW[row.true_view]
        source = find_in_spool(row, spool)
        if source is None:
            source = archive_index.find(row.sop_instance_uid)
        if source is None:
            where = "the spool" + (f" or {archive}" if archive is not None else
                                   " (give --archive to search an archive)")
            result.missing.append((row, f"no file in {where}"))
            continue
        try:
            jpeg = film_as_jpeg(source)
        except Exception as exc:  # a film that cannot be decoded is reported, not fatal
            result.missing.append((row, f"cannot convert {source}: {type(exc).__name__}: {exc}"))
            continue
        name = row.decision_key or f"instance-{row.instance_id}"
        relative = Path(SOURCE) / label / f"{name}.jpg"
        target = out / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(jpeg)
        tmp.replace(target)
        kept.add(target)
        patient = row.patient_id or (f"study:{row.study_instance_uid}"
                                     if row.study_instance_uid else "")
        result.written.append({
            "file": relative.as_posix(), "label": label, "source": SOURCE,
            "body_part": (row.body_part_examined or "unknown").lower(), "licence": LICENCE,
            "origin": (f"dicomnode log instance {row.instance_id}: {row.verdict}, true view "
                       f"{row.true_view}, by {row.reviewer} at {row.at:%Y-%m-%dT%H:%M:%SZ}"),
            "sha256": hashlib.sha256(jpeg).hexdigest(), "view": view,
            "patient_id": patient, "region": region_of(row.body_part_examined),
        })
    for stale in (out / SOURCE).glob("*/*.jpg"):
        if stale not in kept:
            stale.unlink()
    with open(out / "labels.csv.tmp", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(result.written)
    (out / "labels.csv.tmp").replace(out / "labels.csv")
    return result
