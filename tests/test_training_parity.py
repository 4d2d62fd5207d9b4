"""The training path and the node path turn the same DICOM file into the same 224x224 array."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import dicomnode.preprocess as node_preprocess
from tests.shared_data import DICOM_DIR as DICOM
from training import data as training_data

pytestmark = pytest.mark.skipif(not DICOM.is_dir(), reason="../shared absent")

PARITY_FILES = [
    "cr-chest-pa.dcm",  # JPEG baseline, MONOCHROME2
    "cr-chest-pa-monochrome1.dcm",  # inverted by the shared function
    "corpus/files/CR__RG1_J2KI.dcm",  # JPEG 2000, 15-bit MONOCHROME1
    "corpus/files/CR__77654033_CR1_6154.dcm",  # 16x16 lateral thumbnail, upscaled
]


def test_training_uses_the_node_function_not_a_copy() -> None:
    assert training_data.preprocess_dataset is node_preprocess.preprocess_dataset
    assert training_data.preprocess_image_file is node_preprocess.preprocess_image_file


@pytest.mark.parametrize("name", PARITY_FILES)
def test_dicom_tree_loader_matches_node_preprocessing(tmp_path: Path, name: str) -> None:
    source = DICOM / name
    (tmp_path / source.name).symlink_to(source)
    dataset = training_data.load_dicom_tree(tmp_path)
    assert len(dataset.samples) == 1, dataset.skipped
    node_array = node_preprocess.preprocess_file(source)
    assert dataset.pixels[0].dtype == np.uint8 and dataset.pixels[0].shape == (224, 224)
    assert np.array_equal(dataset.pixels[0], node_array)


def test_monochrome1_file_is_the_inverse_of_its_monochrome2_twin() -> None:
    mono2 = node_preprocess.preprocess_file(DICOM / "cr-chest-pa.dcm")
    mono1 = node_preprocess.preprocess_file(DICOM / "cr-chest-pa-monochrome1.dcm")
    # Same stored pixels: after the (correct) inversion the model sees a negative film.
    assert np.abs(mono1.astype(int) - (255 - mono2.astype(int))).max() <= 1
