"""On-disk cache of preprocessed pixels (training-runs/cache, git-ignored)."""

from __future__ import annotations

import hashlib
import json
import pickle
import sys
import time
from dataclasses import asdict
from pathlib import Path

import dicomnode.preprocess as node_preprocess
import training.data as training_data
from training.data import Dataset, load_data

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RUNS_DIR = REPO_ROOT / "training-runs"


def _source_key(images: Path | list[Path] | None, dicom: Path | None, limit: int | None) -> str:
    digest = hashlib.sha256()
    # The preprocessing and loading code are part of the key: change either and every cache
    # is rebuilt.
    digest.update(Path(node_preprocess.__file__).read_bytes())
    digest.update(Path(training_data.__file__).read_bytes())
    folders = images if isinstance(images, list) else [images] if images is not None else []
    digest.update(json.dumps([[str(f) for f in folders], str(dicom), limit]).encode())
    for folder in folders:
        if (Path(folder) / "labels.csv").is_file():
            digest.update((Path(folder) / "labels.csv").read_bytes())
    if dicom is not None:
        for p in sorted(Path(dicom).rglob("*")):
            if p.is_file():
                stat = p.stat()
                digest.update(f"{p}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def load_data_cached(images: Path | list[Path] | None, dicom: Path | None, limit: int | None,
                     cache_dir: Path) -> Dataset:
    path = cache_dir / f"pixels-{_source_key(images, dicom, limit)}.pkl"
    if path.is_file():
        with open(path, "rb") as handle:
            return pickle.load(handle)
    started = time.monotonic()
    print(f"preprocessing images={images} dicom={dicom} ...", file=sys.stderr, flush=True)
    dataset = load_data(images, dicom, limit)
    print(f"  {len(dataset.samples)} images in {time.monotonic() - started:.1f}s, "
          f"{len(dataset.skipped)} skipped", file=sys.stderr, flush=True)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as handle:
        pickle.dump(dataset, handle, protocol=pickle.HIGHEST_PROTOCOL)
    tmp.replace(path)
    return dataset


def skipped_rows(dataset: Dataset) -> list[dict]:
    return [asdict(s) for s in dataset.skipped]
