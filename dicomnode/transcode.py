"""Re-encoding for a peer that refused an instance's own transfer syntax.

The forwarder proposes each instance's own syntax and, beside it, the ones the node can produce
without losing a pixel: Explicit VR LE, Implicit VR LE (the one syntax every SCP must accept),
RLE Lossless and JPEG 2000 Lossless. When the peer accepts only those, the instance is decoded
(in the isolated decode process when compressed: GDCM aborts its process on some hostile
headers) and encoded by pydicom into the first one the peer accepted. The SOP Instance UID stays:
it is the same instance, losslessly re-encoded (PS3.5 8.2, PS3.4 B.4.1).
"""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

from dicomnode.guard import decompress_isolated

# In order of preference: native first (every PACS reads it, nothing to decode), then the
# lossless compressed syntaxes pydicom can write (RLE natively, JPEG 2000 via pylibjpeg-openjpeg).
NATIVE_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
LOSSLESS_ENCODINGS = (RLELossless, JPEG2000Lossless)
FALLBACK_SYNTAXES = NATIVE_SYNTAXES + LOSSLESS_ENCODINGS


def fallback_target(accepted: set[str]) -> UID | None:
    """The syntax to re-encode into, of those the peer accepted (native first); None when
    there is none."""
    return next((uid for uid in FALLBACK_SYNTAXES if uid in accepted), None)


class NoTargetSyntax(ValueError):
    """The peer accepts none of the syntaxes the node can produce for this dataset."""


def reencode(path: Path, source_syntax: str, target: UID) -> Dataset:
    """The instance in `path`, encoded in `target` (fallback_target's choice); raises
    NoTargetSyntax for a dataset without pixel data when the target compresses pixels (the
    target is compressed only when the peer took no native syntax), and anything else on a
    file that cannot be decoded or encoded (the forwarder counts that against this image)."""
    source = UID(source_syntax)
    ds = decompress_isolated(path) if source.is_compressed else pydicom.dcmread(path)
    if target in LOSSLESS_ENCODINGS and "PixelData" not in ds:
        raise NoTargetSyntax(source_syntax)
    if target in LOSSLESS_ENCODINGS:
        ds.compress(target, generate_instance_uid=False)  # both reversible: same instance
    else:
        ds.file_meta.TransferSyntaxUID = target
    # Re-encode, not relabel: written by pydicom in the target's encoding (every element, the
    # items of sequences included, converted; ambiguous VRs resolved) and read back, so that
    # what pynetdicom sends is what the transfer syntax says. Relabelling an Explicit VR dataset
    # as Implicit failed to encode in pynetdicom, and raw sequence bytes copied across
    # encodings made a file that DCMTK (Orthanc) could not parse.
    buffer = BytesIO()
    ds.save_as(buffer, implicit_vr=target.is_implicit_VR, little_endian=target.is_little_endian,
               enforce_file_format=True)
    return pydicom.dcmread(BytesIO(buffer.getvalue()))
