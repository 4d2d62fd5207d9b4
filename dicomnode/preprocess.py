"""The one preprocessing function: any radiograph -> the 224x224 uint8 grey array the model sees.

The node (classify stage) and the training module both call this module; nothing else may
decode or resize pixels for the model, so training and serving cannot drift apart. Pixel
scaling to the network's range lives inside the model, so this returns plain 0-255 values.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut, pixel_array

MODEL_SIZE = 224
# Radiographs without a VOI window are windowed on these percentiles, the same window the
# training images (../shared/data/xray-views) were made with from 16-bit sources.
PERCENTILE_WINDOW = (0.5, 99.5)
RESIZE_FILTER = Image.Resampling.BILINEAR

PREPROCESSING_SPEC = {
    "output": f"uint8 grey {MODEL_SIZE}x{MODEL_SIZE}, repeated to 3 channels as float32 0-255",
    "dicom": "middle frame; Modality LUT/rescale; VOI LUT or first window, else "
    f"{PERCENTILE_WINDOW[0]}-{PERCENTILE_WINDOW[1]} percentile window; MONOCHROME1 inverted; "
    "colour -> luminance (ITU-R 601)",
    "resize": f"Pillow {RESIZE_FILTER.name} to {MODEL_SIZE}x{MODEL_SIZE}, aspect ratio not kept, "
    "reducing_gap=3",
    "scaling": "inside the model (Rescaling layer)",
}


class PreprocessError(ValueError):
    """The pixels cannot be turned into a model input (no pixel data, undecodable, bad shape)."""


def middle_frame_index(ds: Dataset) -> int:
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    return frames // 2


def _to_grey_float(frame: np.ndarray, ds: Dataset) -> np.ndarray:
    """Colour -> luminance; grey frames pass through (as float32, never float64 copies)."""
    if frame.ndim == 3:
        if frame.shape[-1] != 3:
            raise PreprocessError(f"unexpected pixel shape {frame.shape}")
        weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
        return frame.astype(np.float32, copy=False) @ weights
    if frame.ndim != 2:
        raise PreprocessError(f"unexpected pixel shape {frame.shape}")
    return frame


def _window_to_uint8(values: np.ndarray, has_voi: bool) -> np.ndarray:
    values = values.astype(np.float32, copy=False)
    if has_voi:
        low, high = float(values.min()), float(values.max())
    else:
        low, high = (float(v) for v in np.percentile(values, PERCENTILE_WINDOW))
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values - low) * (255.0 / (high - low))
    np.clip(scaled, 0.0, 255.0, out=scaled)
    return np.rint(scaled).astype(np.uint8)


def dataset_to_grey(ds: Dataset) -> np.ndarray:
    """Decode one DICOM dataset's display pixels to a full-size uint8 grey image."""
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise PreprocessError("dataset has no pixel data")
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    try:
        frame = pixel_array(ds, index=middle_frame_index(ds))
    except Exception as exc:  # decoders raise many types; the caller needs one
        raise PreprocessError(f"cannot decode pixel data: {exc}") from exc
    if photometric.startswith("MONOCHROME"):
        values = apply_modality_lut(frame, ds)
        has_voi = "WindowCenter" in ds or "VOILUTSequence" in ds
        if has_voi:
            values = apply_voi_lut(values, ds, index=0)
        grey = _window_to_uint8(values, has_voi)
        if photometric == "MONOCHROME1":
            np.subtract(255, grey, out=grey)
        return grey
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        frame = apply_color_lut(frame, ds)
    return _window_to_uint8(_to_grey_float(frame, ds), has_voi=False)


def grey_to_model_input(grey: np.ndarray) -> np.ndarray:
    """Full-size uint8 grey image -> uint8 (224, 224)."""
    if grey.dtype != np.uint8 or grey.ndim != 2:
        raise PreprocessError(f"expected 2-D uint8 grey image, got {grey.dtype} {grey.shape}")
    if min(grey.shape) < 2:
        raise PreprocessError(f"image too small: {grey.shape}")
    image = Image.fromarray(grey, mode="L")
    resized = image.resize((MODEL_SIZE, MODEL_SIZE), RESIZE_FILTER, reducing_gap=3.0)
    return np.asarray(resized, dtype=np.uint8)


def preprocess_dataset(ds: Dataset) -> np.ndarray:
    """DICOM dataset -> uint8 (224, 224): what the node classifies."""
    return grey_to_model_input(dataset_to_grey(ds))


def preprocess_image_file(path: str | Path) -> np.ndarray:
    """PNG/JPEG radiograph -> uint8 (224, 224), through the same resize as DICOM."""
    try:
        with Image.open(path) as image:
            grey = np.asarray(image.convert("L"), dtype=np.uint8)
    except (OSError, ValueError) as exc:
        raise PreprocessError(f"cannot read image {path}: {exc}") from exc
    return grey_to_model_input(grey)


def preprocess_file(path: str | Path) -> np.ndarray:
    """A DICOM or PNG/JPEG file -> uint8 (224, 224). DICOM is recognised by content, not name."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError:
        return preprocess_image_file(path)
    return preprocess_dataset(ds)
