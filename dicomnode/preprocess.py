"""The one preprocessing function: any radiograph -> the 224x224 uint8 grey array the model sees.

The node (classify stage) and the training module both call this module; nothing else may
decode or resize pixels for the model, so training and serving cannot drift apart. Pixel
scaling to the network's range lives inside the model, so this returns plain 0-255 values.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from openjpeg import get_parameters as get_j2k_parameters
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.pixels import apply_modality_lut, apply_voi_lut, pixel_array
from pydicom.uid import JPEG2000, JPEG2000Lossless, JPEGBaseline8Bit

MODEL_SIZE = 224
# Radiographs without a VOI window are windowed on these percentiles, the same window the
# training images (../shared/data/xray-views) were made with from 16-bit sources.
PERCENTILE_WINDOW = (0.5, 99.5)
RESIZE_FILTER = Image.Resampling.BILINEAR
# DICOM frames are block-averaged (or decoded at a reduced resolution level) to about this short
# side before LUTs and windowing: enough detail for a 224x224 input, a fraction of the work.
REDUCED_MIN_SIDE = 2 * MODEL_SIZE
_PILLOW_REDUCED_SYNTAXES = (JPEGBaseline8Bit, JPEG2000Lossless, JPEG2000)

PREPROCESSING_SPEC = {
    "output": f"uint8 grey {MODEL_SIZE}x{MODEL_SIZE}, repeated to 3 channels as float32 0-255",
    "dicom": "middle frame, decoded or block-averaged to a short side of about "
    f"{2 * MODEL_SIZE} px; Modality LUT/rescale; VOI LUT or first window, else "
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


def _reduction_factor(rows: int, columns: int) -> int:
    """Largest integer factor that keeps the short side >= REDUCED_MIN_SIDE."""
    return max(1, min(rows, columns) // REDUCED_MIN_SIDE)


def _decode_reduced_with_pillow(ds: Dataset) -> np.ndarray | None:
    """Single-frame unsigned grey JPEG 2000 or JPEG baseline, decoded at reduced resolution.

    The model needs 224x224, so decoding a 2k x 2k radiograph at full size wastes most of the
    time: JPEG 2000 can stop at a lower resolution level and baseline JPEG can scale in the DCT.
    Returns None when the fast path does not apply or fails; the caller then uses pydicom.
    """
    file_meta = getattr(ds, "file_meta", None)
    syntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    if syntax not in _PILLOW_REDUCED_SYNTAXES:
        return None
    if int(getattr(ds, "NumberOfFrames", 1) or 1) != 1 or int(ds.get("SamplesPerPixel", 1)) != 1:
        return None
    if int(ds.get("PixelRepresentation", 0)) != 0 or int(ds.get("BitsAllocated", 0)) > 16:
        return None
    rows, columns = int(ds.Rows), int(ds.Columns)
    try:
        codestream = next(generate_frames(ds.PixelData, number_of_frames=1))
        if syntax == JPEGBaseline8Bit:
            with Image.open(io.BytesIO(codestream)) as image:
                if image.mode != "L" or image.size != (columns, rows):
                    return None
                factor = _reduction_factor(rows, columns)
                image.draft("L", (columns // factor, rows // factor))
                return np.asarray(image)
        parameters = get_j2k_parameters(codestream)
        precision = int(parameters["precision"])
        if parameters["is_signed"] or precision > 16:
            return None
        # JPEG 2000: not every codestream allows every level, so step down until one decodes.
        level = int(np.log2(_reduction_factor(rows, columns)))
        for reduce in range(level, 0, -1):
            with Image.open(io.BytesIO(codestream)) as image:
                if image.mode not in ("L", "I;16") or image.size != (columns, rows):
                    return None
                scale = 1 << reduce
                expected = (-(-rows // scale), -(-columns // scale))  # OpenJPEG rounds up
                image.reduce = reduce  # type: ignore[method-assign,assignment]
                # Pillow rounds the reduced size to nearest, OpenJPEG up: for odd sizes such as
                # 1841 x 1955 the buffer is one column short and decoding fails. Presetting the
                # size to a multiple of the scale makes Pillow's rounding give OpenJPEG's size.
                image._size = (expected[1] * scale, expected[0] * scale)
                try:
                    image.load()
                except OSError:
                    continue
                pixels = np.asarray(image)
                if pixels.shape != expected:
                    continue
                # Pillow scales 9-16 bit samples up to the full 16-bit range; undo it.
                if image.mode == "I;16" and precision < 16:
                    pixels = pixels >> (16 - precision)
                return pixels
    except Exception:  # any surprise in the fast path falls back to the reference decoder
        return None
    return None


def _reduce_for_model(frame: np.ndarray) -> np.ndarray:
    """Block-average a full-size frame down to about REDUCED_MIN_SIDE, as float32.

    LUTs and windowing then run on ~0.2 Mpixel instead of ~8 Mpixel; the final 224x224 resize
    is the same either way (grey_to_model_input). The block sums run on the stored integers
    (exact int64 accumulators; float64 for float frames), so no full-size float copy is made (a
    2614x3072 DX would need two of 32 MB each); the last rows/columns that do not fill a block
    (< factor) are dropped. Rows of a block are summed first, over contiguous memory, then the
    columns of the 1/factor-size result: 3x faster than mean() over both block axes at once.
    """
    if frame.ndim == 3:
        weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
        frame = frame.astype(np.float32, copy=False) @ weights
    factor = _reduction_factor(*frame.shape[:2])
    if factor == 1:
        return frame.astype(np.float32, copy=False)
    rows, columns = (frame.shape[0] // factor) * factor, (frame.shape[1] // factor) * factor
    accumulator = np.int64 if frame.dtype.kind in "biu" else np.float64
    row_sums = frame[:rows, :columns].reshape(rows // factor, factor, columns).sum(
        axis=1, dtype=accumulator)
    block_sums = row_sums.reshape(rows // factor, columns // factor, factor).sum(
        axis=2, dtype=accumulator)
    return (block_sums / (factor * factor)).astype(np.float32)


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
    """Decode one DICOM dataset's display pixels to a reduced-size uint8 grey image."""
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise PreprocessError("dataset has no pixel data")
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    frame = _decode_reduced_with_pillow(ds) if photometric.startswith("MONOCHROME") else None
    if frame is None:
        try:
            frame = pixel_array(ds, index=middle_frame_index(ds))
        except Exception as exc:  # decoders raise many types; the caller needs one
            raise PreprocessError(f"cannot decode pixel data: {exc}") from exc
        if photometric == "PALETTE COLOR":
            from pydicom.pixels import apply_color_lut

            frame = apply_color_lut(frame, ds)
    if frame.ndim not in (2, 3) or (frame.ndim == 3 and frame.shape[-1] != 3):
        raise PreprocessError(f"unexpected pixel shape {frame.shape}")
    if min(frame.shape[:2]) < 2:
        raise PreprocessError(f"image too small: {frame.shape}")
    values = _reduce_for_model(frame)
    if not photometric.startswith("MONOCHROME"):
        return _window_to_uint8(values, has_voi=False)
    # Table LUTs index by stored value, so averaged pixels are rounded back to integers first.
    if "ModalityLUTSequence" in ds or "VOILUTSequence" in ds:
        values = np.rint(values).astype(np.int32)
    values = apply_modality_lut(values, ds)
    has_voi = "WindowCenter" in ds or "VOILUTSequence" in ds
    if has_voi:
        values = apply_voi_lut(values, ds, index=0)
    grey = _window_to_uint8(values, has_voi)
    if photometric == "MONOCHROME1":
        np.subtract(255, grey, out=grey)
    return grey


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


def full_size_model_input(ds: Dataset) -> np.ndarray:
    """The obvious, slow pipeline (full-size decode by pydicom, LUTs in float64, then resize).

    Not used by the node: it is the yardstick the reduced-resolution path is checked against in
    the tests and timed against in bench/preprocess.py.
    """
    frame = pixel_array(ds, index=middle_frame_index(ds))
    values = apply_modality_lut(frame, ds)
    has_voi = "WindowCenter" in ds or "VOILUTSequence" in ds
    if has_voi:
        values = apply_voi_lut(values, ds, index=0)
    grey = _window_to_uint8(values, has_voi)
    if str(ds.PhotometricInterpretation).upper() == "MONOCHROME1":
        grey = 255 - grey
    return grey_to_model_input(grey)


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
