"""What a C-STORE request must agree with before the node stores it (PS3.4 B.2.3, PS3.7 9.1.1):
the presentation context it came on, and the SOP Class and Instance UIDs inside its dataset.
Only a plain contradiction is refused; a dataset the node cannot read here is stored as sent and
left to the pipeline (logged unreadable, forwarded untouched)."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from pydicom.filereader import read_dataset
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

STATUS_SOP_CLASS_NOT_SUPPORTED = 0x0122
STATUS_DATASET_DOES_NOT_MATCH = 0xA900
SOP_CLASS_UID, SOP_INSTANCE_UID = 0x00080016, 0x00080018
# The two UIDs sit near the start of the dataset (group 0008); deflated, 256 KiB of it give
# 64 KiB of dataset.
HEAD_BYTES = 1 << 18


@dataclass(frozen=True)
class Refusal:
    status: int
    comment: str
    offending: tuple[int, ...] = ()  # Offending Element (0000,0901)
    reason: str = ""  # metric label


def check_store(request: Any, context: Any, head: bytes) -> Refusal | None:
    """None when the C-STORE may be stored; else the failure to answer with. `head`: the first
    bytes of the encoded dataset (HEAD_BYTES of it suffice)."""
    command_class = str(request.AffectedSOPClassUID)
    command_instance = str(request.AffectedSOPInstanceUID)
    if str(context.abstract_syntax) != command_class:
        return Refusal(STATUS_SOP_CLASS_NOT_SUPPORTED,
                       f"SOP class {command_class} sent on a context for "
                       f"{context.abstract_syntax}", reason="wrong_context")
    found = dataset_uids(head, UID(str(context.transfer_syntax)))
    for tag, in_command, name in ((SOP_CLASS_UID, command_class, "Class"),
                                  (SOP_INSTANCE_UID, command_instance, "Instance")):
        in_dataset = found.get(tag)
        if in_dataset is not None and in_dataset != in_command:
            return Refusal(STATUS_DATASET_DOES_NOT_MATCH,
                           f"dataset SOP {name} UID {in_dataset} is not the request's "
                           f"{in_command}", (tag,), reason="uid_mismatch")
    return None


def dataset_uids(head: bytes, transfer_syntax: UID) -> dict[int, str]:
    """SOP Class and Instance UID from the start of an encoded dataset; {} where unreadable."""
    try:
        if transfer_syntax == DeflatedExplicitVRLittleEndian:
            head = zlib.decompressobj(-zlib.MAX_WBITS).decompress(head, HEAD_BYTES // 4)
        header = read_dataset(BytesIO(head), transfer_syntax.is_implicit_VR,
                              transfer_syntax.is_little_endian,
                              stop_when=lambda tag, _vr, _length: tag > SOP_INSTANCE_UID)
        return {tag: str(header[tag].value).strip("\0 ") for tag in (SOP_CLASS_UID,
                                                                   SOP_INSTANCE_UID)
                if tag in header and header[tag].value}
    except Exception:
        return {}
