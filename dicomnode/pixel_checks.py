"""Header-only checks run before any pixel is decoded: what a dataset or its compressed
codestream says it will expand to, a counting pass over deflated data, and the JPEG 2000 box
structure, so that a decompression bomb or a file that sends a parser into a loop is refused in
milliseconds (logged `unreadable`, forwarded untouched) instead of being decoded.

They read DICOM elements and codestream markers only, so they are cheap enough to run in the
node's own process as well as in the decode worker (dicomnode.guard).
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    JPEG2000TransferSyntaxes,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
)

from dicomnode.preprocess import PreprocessError

if TYPE_CHECKING:
    from dicomnode.guard import Limits

MiB = 1024 * 1024
# What a deflated dataset may hold besides pixels (overlays, private blobs, icons).
NON_PIXEL_ALLOWANCE = 16 * MiB
_CODESTREAM_SYNTAXES = frozenset(
    [*JPEG2000TransferSyntaxes, *JPEGTransferSyntaxes, *JPEGLSTransferSyntaxes]
)


class GuardError(PreprocessError):
    """The image was refused or abandoned by a guard (it is logged unreadable, then forwarded)."""


class ImageTooLarge(GuardError):
    """Declared or codestream-declared pixel size exceeds Limits.max_pixel_bytes."""


class MalformedCodestream(GuardError):
    """The compressed frame's structure is broken in a way a decoder or parser cannot survive."""


def int_element(ds: Dataset, keyword: str, default: int) -> int:
    try:
        value = ds.get(keyword, default)
        return int(value if value not in (None, "") else default)
    except (TypeError, ValueError) as exc:
        raw = ds.get_item(keyword) if keyword in ds else None
        shown = raw.value if raw is not None else None
        raise GuardError(f"{keyword} is not a number: {shown!r}") from exc


def declared_pixel_bytes(ds: Dataset) -> int:
    """rows x columns x frames x samples x bits allocated / 8, from the dataset's elements."""
    rows = int_element(ds, "Rows", 0)
    columns = int_element(ds, "Columns", 0)
    frames = int_element(ds, "NumberOfFrames", 1) or 1
    samples = int_element(ds, "SamplesPerPixel", 1) or 1
    bits = int_element(ds, "BitsAllocated", 8) or 8
    if min(rows, columns, frames, samples, bits) < 0:
        raise GuardError(f"negative image dimension: {rows}x{columns}x{frames}x{samples}x{bits}")
    return rows * columns * frames * samples * ((bits + 7) // 8)


def _codestream_pixel_bytes(codestream: bytes, syntax: str) -> int | None:
    """Bytes one compressed frame decodes to, per its own header; None when not readable.

    The decoder allocates what the codestream says, not what Rows/Columns say, so a small
    dataset header over a 65535x65535 codestream is the decompression bomb this catches.
    """
    if syntax in JPEG2000TransferSyntaxes:
        from openjpeg import get_parameters  # header only (opj_read_header)

        try:
            info = get_parameters(codestream)
        except Exception:
            return None
        rows, columns = info["rows"], info["columns"]
        samples, precision = info["samples_per_pixel"], info["precision"]
    elif syntax in JPEGTransferSyntaxes or syntax in JPEGLSTransferSyntaxes:
        from pydicom.pixels.utils import _get_jpg_parameters  # SOF/SOF55 marker, no decode

        info = _get_jpg_parameters(codestream)
        if not info:
            return None
        rows, columns = info["height"], info["width"]
        samples, precision = info["components"], info["precision"]
    else:
        return None  # RLE and native: decoders size their output from Rows/Columns
    return rows * columns * samples * ((precision + 7) // 8)


JP2_SIGNATURE_PREFIX = b"\x00\x00\x00\x0cjP  "  # what pydicom tests to call it a JP2 file
JP2_CODESTREAM_BOX = b"jp2c"


def check_jp2_boxes(codestream: bytes) -> None:
    """Raise MalformedCodestream when pydicom's own JPEG 2000 header parser would loop forever on
    this frame (pixels.utils.get_j2k_parameters, pydicom 3.0.2, runs before any decoder): it
    walks a JP2 file's top-level boxes from byte 12, adding each 4-byte box length until it
    finds the codestream box, so a length of 0 (ISO/IEC 15444-1 I.4: "to the end of the file",
    allowed for the last box only), or a box header cut short by the end of the frame, never
    moves it on. The walk here is pydicom's, step for step, so exactly those frames are refused.

    Found by the project's decode fuzz campaign (a one-byte insertion, then a truncated file).
    Raw J2K codestreams (no JP2 wrapper, the usual DICOM encoding) have no boxes: nothing to do.
    """
    if not codestream.startswith(JP2_SIGNATURE_PREFIX):
        return
    offset, total = 12, len(codestream)
    while offset < total:
        length = int.from_bytes(codestream[offset : offset + 4], "big")
        if codestream[offset + 4 : offset + 8] == JP2_CODESTREAM_BOX:
            return
        if length == 0:
            box = codestream[offset + 4 : offset + 8].decode("latin-1")
            shown = box.encode("unicode_escape").decode() or "(cut off)"
            raise MalformedCodestream(
                f"JP2 box '{shown}' at byte {offset} of the frame has length 0 before the "
                f"codestream box (ISO/IEC 15444-1 I.4 allows 0 for the last box only; "
                f"{total - offset} bytes are left): pydicom's parser would loop on it forever")
        offset += length


def check_dataset(ds: Dataset, limits: Limits) -> None:
    """Raise ImageTooLarge when decoding `ds` would expand past the limit, MalformedCodestream
    when a frame's JPEG 2000 boxes would loop the parser."""
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        return
    declared = declared_pixel_bytes(ds)
    if declared > limits.max_pixel_bytes:
        raise ImageTooLarge(
            f"declared pixel data {declared / MiB:.0f} MiB exceeds the "
            f"{limits.max_pixel_bytes / MiB:.0f} MiB limit"
        )
    file_meta = getattr(ds, "file_meta", None)
    syntax = str(file_meta.get("TransferSyntaxUID", "")) if file_meta is not None else ""
    if syntax not in _CODESTREAM_SYNTAXES or "PixelData" not in ds:
        return
    frames = int_element(ds, "NumberOfFrames", 1) or 1
    expanded = 0
    try:
        for codestream in generate_frames(ds.PixelData, number_of_frames=frames):
            if syntax in JPEG2000TransferSyntaxes:
                check_jp2_boxes(codestream)
            frame_bytes = _codestream_pixel_bytes(codestream, syntax)
            expanded += frame_bytes or 0
            if expanded > limits.max_pixel_bytes:
                raise ImageTooLarge(
                    f"compressed pixel data would expand past the "
                    f"{limits.max_pixel_bytes / MiB:.0f} MiB limit (codestream headers declare "
                    f"more than the dataset's {declared / MiB:.1f} MiB)"
                )
    except GuardError:
        raise
    except Exception:  # malformed encapsulation: the decoder reports it with a clearer message
        return


def check_file(path: str | Path, limits: Limits, transfer_syntax: str | None = None) -> None:
    """File-level checks before a full read: a deflated dataset is inflated once, counting and
    discarding the output, so a zip bomb is refused before pydicom inflates it into memory.
    `transfer_syntax`, when the caller knows it (the spool records it), saves reading the meta."""
    import pydicom

    path = Path(path)
    syntax = transfer_syntax
    if syntax is None:
        try:
            meta = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=[(0x0002, 0x0010)])
            syntax = str(meta.file_meta.get("TransferSyntaxUID", ""))
        except Exception:
            return  # not readable as DICOM here; the full read reports the error
    if syntax != DeflatedExplicitVRLittleEndian:
        return
    # The deflated stream starts after the file meta group; its length is in the group header.
    with path.open("rb") as handle:
        data = handle.read()
    start = _end_of_file_meta(data)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    budget = limits.max_pixel_bytes + NON_PIXEL_ALLOWANCE
    produced = 0
    chunk = 1 * MiB
    pending = data[start:]
    try:
        # max_length keeps each step to one chunk of output; stop at the budget or when the
        # stream yields nothing more.
        while produced <= budget:
            out = inflater.decompress(pending, chunk)
            produced += len(out)
            pending = inflater.unconsumed_tail
            if not out:
                break
    except zlib.error:
        return  # corrupt: pydicom's own read raises the error the log should show
    if produced > budget:
        raise ImageTooLarge(f"deflated dataset inflates past {budget / MiB:.0f} MiB (zip bomb?)")


def _end_of_file_meta(data: bytes) -> int:
    """Offset just after the file meta group (preamble + DICM + group 0002)."""
    offset = 132
    if data[128:132] != b"DICM":
        return 0
    while data[offset : offset + 2] == b"\x02\x00":
        vr = data[offset + 4 : offset + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN"):
            length = int.from_bytes(data[offset + 8 : offset + 12], "little")
            offset += 12 + length
        else:
            length = int.from_bytes(data[offset + 6 : offset + 8], "little")
            offset += 8 + length
    return offset
