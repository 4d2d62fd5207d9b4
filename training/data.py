"""Labelled radiographs -> uint8 224x224 arrays, through the node's own preprocessing.

Two sources: an image folder with labels.csv (the layout of ../shared/data/xray-views) and a DICOM
tree labelled by each file's ViewPosition. Bad files are skipped and listed, never fatal.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dicomnode.preprocess import (
    MODEL_SIZE,
    PREPROCESSING_SPEC,
    PreprocessError,
    preprocess_dataset,
    preprocess_image_file,
)

LABELS = ("AP", "LA")
WEIGHTS_FILE_NAME = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
LABEL_ALIASES = {"frontal": "AP", "ap": "AP", "pa": "AP", "lateral": "LA", "la": "LA"}
# DICOM ViewPosition (0018,5101) -> product label. Oblique and decubitus views are neither class.
FRONTAL_VIEW_POSITIONS = {"AP", "PA"}
LATERAL_VIEW_POSITIONS = {"LL", "RL", "LA", "LAT", "LATERAL", "LLAT", "RLAT", "LEFT LATERAL",
                          "RIGHT LATERAL"}


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
    path: str  # relative to the dataset root for images, absolute for DICOM
    label: str  # "AP" or "LA"
    source: str = "unknown"
    body_part: str = "unknown"
    kind: str = "image"  # "image" or "dicom"


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
    def labels(self) -> np.ndarray:
        return np.array([LABELS.index(s.label) for s in self.samples], dtype=np.int64)

    def subset(self, indices: Iterable[int]) -> Dataset:
        idx = np.asarray(list(indices), dtype=np.int64)
        return Dataset([self.samples[i] for i in idx], self.pixels[idx], [], self.fingerprint)


def normalise_label(raw: str) -> str | None:
    value = raw.strip()
    if value in LABELS:
        return value
    return LABEL_ALIASES.get(value.lower())


def label_from_view_position(view_position: str) -> str | None:
    value = " ".join(str(view_position).upper().split())
    if value in FRONTAL_VIEW_POSITIONS:
        return "AP"
    if value in LATERAL_VIEW_POSITIONS:
        return "LA"
    return None


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
                )
            )
    return samples, skipped


def load_image_folder(root: Path, limit_per_class: int | None = None) -> Dataset:
    """labels.csv + images -> Dataset. Unreadable images are skipped with their reason."""
    root = Path(root)
    samples, skipped = read_labels_csv(root)
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
            skipped.append(Skipped(str(path), f"ViewPosition {vp!r} is neither AP nor LA"))
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
        body_part = str(ds.get("BodyPartExamined", "") or "unknown").lower()
        source = str(ds.get("Manufacturer", "") or "dicom")
        kept.append(Sample(str(path), label, source, body_part, kind="dicom"))
    return Dataset(kept, _stack(arrays), skipped, digest.hexdigest())


def load_data(images: Path | None = None, dicom: Path | None = None,
              limit_per_class: int | None = None) -> Dataset:
    """Images and/or DICOM trees combined into one Dataset."""
    parts: list[Dataset] = []
    if images is not None:
        parts.append(load_image_folder(images, limit_per_class))
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
