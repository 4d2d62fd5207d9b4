"""The one preprocessing function on real files: shapes, inversion, fast paths vs pydicom."""

from __future__ import annotations

import csv

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.pixels import pixel_array

from dicomnode import preprocess
from tests.shared_data import (
    CHEST_PA,
    CHEST_PA_MONOCHROME1,
    CORPUS_DIR,
    CORPUS_MANIFEST,
    XRAY_VIEWS,
)


def corpus_rows() -> list[dict[str, str]]:
    with open(CORPUS_MANIFEST, newline="") as handle:
        return list(csv.DictReader(handle))


def test_monochrome1_is_inverted_relative_to_monochrome2() -> None:
    # Same stored pixels, only the photometric interpretation differs.
    normal = preprocess.preprocess_file(CHEST_PA)
    inverted = preprocess.preprocess_file(CHEST_PA_MONOCHROME1)
    assert normal.shape == inverted.shape == (224, 224)
    # Inversion happens before the resize, so rounding may move a pixel by one grey level.
    difference = np.abs(inverted.astype(np.int16) - (255 - normal.astype(np.int16)))
    assert difference.max() <= 1


@pytest.mark.parametrize(
    "name",
    ["CR__RG1_UNCR.dcm", "CR__RG1_J2KR.dcm", "CR__RG1_J2KI.dcm", "CR__RG3_J2KR.dcm",
     "DX__animals_cat.dcm", "MR__MR2_J2KR.dcm"],
)
def test_reduced_decoding_matches_full_size_reference(name: str) -> None:
    ds = pydicom.dcmread(CORPUS_DIR / "files" / name)
    fast = preprocess.preprocess_dataset(ds).astype(np.int16)
    slow = preprocess.full_size_model_input(ds).astype(np.int16)
    difference = np.abs(fast - slow)
    # Averaging before windowing moves a few edge pixels; the picture must stay the same.
    assert difference.mean() < 1.5, difference.mean()
    assert np.percentile(difference, 99) <= 12


def test_jpeg2000_fast_path_decodes_at_reduced_resolution() -> None:
    ds = pydicom.dcmread(CORPUS_DIR / "files" / "CR__RG1_J2KR.dcm")
    reduced = preprocess._decode_reduced_with_pillow(ds)
    assert reduced is not None
    # Resolution level 2 of 1955 x 1841 (odd sizes: OpenJPEG rounds up), not the full image.
    assert reduced.shape == (489, 461)
    full = pixel_array(ds)
    # Same value scale as the full decode (Pillow's 16-bit upscaling undone).
    assert abs(float(reduced.mean()) - float(full.mean())) < 0.01 * float(full.mean())


def test_every_decodable_corpus_image_gives_a_model_input() -> None:
    decoded = 0
    for row in corpus_rows():
        if row["decode"] != "yes" or row["category"].startswith(("nonimage", "CR-headeronly")):
            continue
        ds = pydicom.dcmread(CORPUS_DIR / row["file"], force=True)
        array = preprocess.preprocess_dataset(ds)
        assert array.shape == (224, 224) and array.dtype == np.uint8, row["file"]
        decoded += 1
    assert decoded >= 80


def test_dataset_without_pixels_is_a_clear_error() -> None:
    ds = Dataset()
    ds.Modality = "SR"
    with pytest.raises(preprocess.PreprocessError, match="no pixel data"):
        preprocess.preprocess_dataset(ds)


def test_unreadable_image_file_is_a_clear_error(tmp_path) -> None:
    bogus = tmp_path / "broken.png"
    bogus.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(preprocess.PreprocessError, match="cannot read image"):
        preprocess.preprocess_file(bogus)


def test_jpeg_training_image_resizes_to_model_size() -> None:
    first = next(XRAY_VIEWS.glob("*/*/*.jpg"))
    array = preprocess.preprocess_image_file(first)
    assert array.shape == (224, 224) and array.dtype == np.uint8
    assert array.std() > 5  # a real radiograph, not a blank
