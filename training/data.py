"""Labelled radiographs -> uint8 224x224 arrays, through the node's own preprocessing.

Two sources: image folders with labels.csv (the layout of ../shared/data/xray-views) and a DICOM
tree labelled by each file's ViewPosition. Bad files are skipped and listed, never fatal.

Every sample keeps its view family (`frontal`, `lateral`, `oblique`), the DICOM view term where it
is known (`AP`, `PA`, `LL`, `RL`, `LAT`, `unknown`), the patient key (folds are split by it) and
the evaluation region. The paper's two-class task uses frontal vs lateral only.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from dicomnode.preprocess import (
    MODEL_SIZE,
    PREPROCESSING_SPEC,
    PreprocessError,
    preprocess_dataset,
    preprocess_image_file,
)

LABELS = ("AP", "LA")  # the paper's two classes: frontal ("AP") vs lateral
FAMILIES = ("frontal", "lateral", "oblique")
WEIGHTS_FILE_NAME = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
FAMILY_ALIASES = {"frontal": "frontal", "ap": "frontal", "pa": "frontal", "lateral": "lateral",
                  "la": "lateral", "oblique": "oblique"}
# DICOM ViewPosition (0018,5101) -> view family. Decubitus views are none of them (skipped).
FRONTAL_VIEW_POSITIONS = {"AP", "PA"}
LATERAL_VIEW_POSITIONS = {"LL", "RL", "LA", "LAT", "LATERAL", "LLAT", "RLAT", "LEFT LATERAL",
                          "RIGHT LATERAL"}
OBLIQUE_VIEW_POSITIONS = {"LLO", "RLO", "LAO", "RAO", "LPO", "RPO", "OBL", "OBLIQUE"}
KNOWN_VIEWS = ("AP", "PA", "LL", "RL", "LAT", "unknown")
# BodyPartExamined (DICOM PS3.16 Annex L terms) -> evaluation region, for DICOM archives.
REGION_OF_BODY_PART = {
    "CHEST": "chest", "THORAX": "chest", "LUNG": "chest", "RIB": "chest", "RIBS": "chest",
    "SKULL": "skull", "HEAD": "skull", "FACE": "skull", "JAW": "skull", "SINUS": "skull",
    "CSPINE": "spine", "TSPINE": "spine", "LSPINE": "spine", "SSPINE": "spine", "SPINE": "spine",
    "NECK": "spine", "COCCYX": "spine", "SACRUM": "spine", "WHOLESPINE": "spine",
    "ABDOMEN": "abdomen_pelvis", "PELVIS": "abdomen_pelvis", "HIP": "abdomen_pelvis",
}


def shared_dir() -> Path:
    """../shared beside the checkout unless DICOMNODE_SHARED says otherwise."""
    default = Path(__file__).resolve().parent.parent.parent / "shared"
    return Path(os.environ.get("DICOMNODE_SHARED", default))


def default_images_dir() -> Path:
    return shared_dir() / "data" / "xray-views"


def default_weights_path() -> Path:
    return shared_dir() / "weights" / WEIGHTS_FILE_NAME


@dataclass(frozen=True)
class Sample:
    path: str  # relative to its dataset root for images, absolute for DICOM
    label: str  # view family: "frontal", "lateral" or "oblique"
    source: str = "unknown"
    body_part: str = "unknown"
    kind: str = "image"  # "image" or "dicom"
    view: str = "unknown"  # AP, PA, LL, RL, LAT or unknown
    region: str = "unknown"  # chest, limbs, spine, skull, abdomen_pelvis, mixed, unknown
    patient_id: str = ""  # grouping key for folds; "" = the sample is its own group
    folder: str = ""  # the data folder it came from (its name; several: see load_data)

    @property
    def group(self) -> str:
        return self.patient_id or f"sample:{self.folder}/{self.path}"


@dataclass
class Skipped:
    path: str
    reason: str


@dataclass
class Dataset:
    """Preprocessed pixels and their metadata, row i of `pixels` is `samples[i]`."""

    samples: list[Sample]
    pixels: np.ndarray  # uint8 (n, 224, 224)
    skipped: list[Skipped] = field(default_factory=list)
    fingerprint: str = ""  # sha256 over the labels and every input file's hash

    @property
    def families(self) -> np.ndarray:
        """0 frontal, 1 lateral, 2 oblique."""
        return np.array([FAMILIES.index(s.label) for s in self.samples], dtype=np.int64)

    @property
    def labels(self) -> np.ndarray:
        """The paper's two classes (0 frontal "AP", 1 lateral "LA"); obliques are 2."""
        return self.families

    def subset(self, indices: Iterable[int]) -> Dataset:
        idx = np.asarray(list(indices), dtype=np.int64)
        return Dataset([self.samples[i] for i in idx], self.pixels[idx], [], self.fingerprint)


def normalise_label(raw: str) -> str | None:
    """A labels.csv `label` -> view family (the old AP/LA spelling is still read)."""
    return FAMILY_ALIASES.get(raw.strip().lower())


def normalise_view(raw: str | None, family: str) -> str:
    value = (raw or "").strip().upper()
    if value in ("AP", "PA") and family == "frontal":
        return value
    if value in ("LL", "RL", "LAT") and family == "lateral":
        return value
    return "LAT" if family == "lateral" else "unknown"


def label_from_view_position(view_position: str) -> str | None:
    """ViewPosition -> view family, None where it names none (decubitus, empty)."""
    value = " ".join(str(view_position).upper().split())
    if value in FRONTAL_VIEW_POSITIONS:
        return "frontal"
    if value in LATERAL_VIEW_POSITIONS:
        return "lateral"
    if value in OBLIQUE_VIEW_POSITIONS:
        return "oblique"
    return None


def region_of_body_part(body_part: str) -> str:
    key = "".join(str(body_part).upper().split())
    if key in REGION_OF_BODY_PART:
        return REGION_OF_BODY_PART[key]
    return "limbs" if key else "unknown"


def sha256_bytes_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_labels_csv(root: Path) -> tuple[list[Sample], list[Skipped]]:
    labels_path = root / "labels.csv"
    if not labels_path.is_file():
        raise FileNotFoundError(f"no labels.csv in {root} (expected columns file,label)")
    samples: list[Sample] = []
    skipped: list[Skipped] = []
    with open(labels_path, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"file", "label"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{labels_path} lacks column(s) {sorted(missing)}")
        for row in reader:
            label = normalise_label(row["label"] or "")
            if label is None:
                skipped.append(Skipped(row["file"], f"unknown label {row['label']!r}"))
                continue
            samples.append(
                Sample(
                    path=row["file"],
                    label=label,
                    source=(row.get("source") or "unknown").strip() or "unknown",
                    body_part=(row.get("body_part") or "unknown").strip() or "unknown",
                    view=normalise_view(row.get("view"), label),
                    region=(row.get("region") or "unknown").strip() or "unknown",
                    patient_id=(row.get("patient_id") or "").strip(),
                )
            )
    return samples, skipped


def load_image_folder(root: Path, limit_per_class: int | None = None,
                      folder: str | None = None) -> Dataset:
    """labels.csv + images -> Dataset; each file is resolved against `root`. Unreadable images
    are skipped with their reason. `folder` names the samples' folder (default: root's name)."""
    root = Path(root)
    samples, skipped = read_labels_csv(root)
    samples = [replace(s, folder=folder or root.name) for s in samples]
    if limit_per_class is not None:
        samples = _pick_per_class(samples, limit_per_class)
    kept: list[Sample] = []
    arrays: list[np.ndarray] = []
    digest = hashlib.sha256((root / "labels.csv").read_bytes())
    for sample in samples:
        path = root / sample.path
        try:
            arrays.append(preprocess_image_file(path))
            digest.update(sha256_bytes_of(path).encode())
        except (PreprocessError, OSError) as exc:
            skipped.append(Skipped(sample.path, str(exc)))
            continue
        kept.append(sample)
    return Dataset(kept, _stack(arrays), skipped, digest.hexdigest())


def load_dicom_tree(root: Path, limit_per_class: int | None = None) -> Dataset:
    """Every DICOM file under root, labelled by its own ViewPosition; others skipped and counted."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    root = Path(root)
    kept: list[Sample] = []
    arrays: list[np.ndarray] = []
    skipped: list[Skipped] = []
    per_class: dict[str, int] = {}
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path)
        except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
            skipped.append(Skipped(str(path), f"not readable as DICOM: {exc}"))
            continue
        label = label_from_view_position(ds.get("ViewPosition", "") or "")
        if label is None:
            vp = ds.get("ViewPosition", "") or "(empty)"
            skipped.append(Skipped(str(path), f"ViewPosition {vp!r} is no frontal, lateral or "
                                              "oblique view"))
            continue
        if limit_per_class is not None and per_class.get(label, 0) >= limit_per_class:
            continue
        try:
            arrays.append(preprocess_dataset(ds))
        except Exception as exc:  # any decoder failure: skip this file, keep the run going
            skipped.append(Skipped(str(path), f"cannot preprocess: {exc}"))
            continue
        per_class[label] = per_class.get(label, 0) + 1
        digest.update(f"{path.relative_to(root)},{label},{sha256_bytes_of(path)}\n".encode())
        body_part = str(ds.get("BodyPartExamined", "") or "")
        source = str(ds.get("Manufacturer", "") or "dicom")
        view = " ".join(str(ds.get("ViewPosition", "") or "").upper().split())
        kept.append(Sample(str(path), label, source, body_part.lower() or "unknown",
                           kind="dicom", view=normalise_view(view, label),
                           region=region_of_body_part(body_part),
                           patient_id=f"dicom:{ds.get('PatientID', '') or path.name}",
                           folder=f"dicom:{root.name}"))
    return Dataset(kept, _stack(arrays), skipped, digest.hexdigest())


def folder_names(folders: list[Path]) -> list[str]:
    """A distinct name per data folder: its own name, else its path (two `reviews` folders)."""
    names = [Path(f).name for f in folders]
    return [name if names.count(name) == 1 else str(f) for name, f in zip(names, folders,
                                                                           strict=True)]


def load_data(images: Path | list[Path] | None = None, dicom: Path | None = None,
              limit_per_class: int | None = None) -> Dataset:
    """Image folders (each in the xray-views layout, its files resolved against it) and/or a
    DICOM tree combined into one Dataset; `limit_per_class` applies per folder. With several
    image folders, patient ids are kept apart per folder (`<folder>/<patient_id>`): the same
    key in two folders (e.g. two hospitals' plain ids) is not taken for one patient."""
    parts: list[Dataset] = []
    folders = images if isinstance(images, list) else [images] if images is not None else []
    names = folder_names([Path(f) for f in folders])
    for folder, name in zip(folders, names, strict=True):
        part = load_image_folder(folder, limit_per_class, name)
        if len(folders) > 1:
            part.samples = [replace(s, patient_id=f"{name}/{s.patient_id}" if s.patient_id
                                    else "") for s in part.samples]
        parts.append(part)
    if dicom is not None:
        parts.append(load_dicom_tree(dicom, limit_per_class))
    if not parts:
        raise ValueError("give an image folder (--images) and/or a DICOM folder (--dicom)")
    if len(parts) == 1:
        return parts[0]
    digest = hashlib.sha256("".join(p.fingerprint for p in parts).encode()).hexdigest()
    return Dataset(
        [s for p in parts for s in p.samples],
        np.concatenate([p.pixels for p in parts]),
        [s for p in parts for s in p.skipped],
        digest,
    )


def count_by_folder(samples: list[Sample]) -> dict[str, int]:
    """Images per data folder, in the order the folders were given."""
    counts: dict[str, int] = {}
    for sample in samples:
        counts[sample.folder or "unknown"] = counts.get(sample.folder or "unknown", 0) + 1
    return counts


REVIEWS_SOURCE = "reviews"  # the source of `dicomnode log export-reviews` rows


def data_origin(samples: list[Sample]) -> dict:
    """What a report and the model card say about where the images came from."""
    return {"per_folder": count_by_folder(samples),
            "reviews_n": sum(s.source == REVIEWS_SOURCE for s in samples)}


def _pick_per_class(samples: list[Sample], limit: int, seed: int = 0) -> list[Sample]:
    """Up to `limit` samples per class, drawn with a fixed seed so small runs span all sources."""
    order = np.random.default_rng(seed).permutation(len(samples))
    counts: dict[str, int] = {}
    chosen = []
    for i in order:
        s = samples[i]
        if counts.get(s.label, 0) < limit:
            counts[s.label] = counts.get(s.label, 0) + 1
            chosen.append(s)
    return chosen


def _stack(arrays: list[np.ndarray]) -> np.ndarray:
    if not arrays:
        return np.zeros((0, MODEL_SIZE, MODEL_SIZE), dtype=np.uint8)
    return np.stack(arrays)


def preprocessing_spec() -> dict:
    return dict(PREPROCESSING_SPEC)
