"""How a received C-STORE becomes a spool file: pynetdicom writes the dataset to a temporary
file as it arrives (memory stays at one PDU whatever the instance's size), and the node copies
it behind its own preamble and file meta into the spool."""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pynetdicom import _config, evt
from pynetdicom.dsutils import split_dataset

from dicomnode.identity import set_implementation
from dicomnode.store_checks import HEAD_BYTES

COPY_CHUNK = 1024 * 1024


def file_header(event: evt.Event) -> bytes:
    """Preamble and file meta (PS3.10) of a received instance, with the node's identity."""
    file_meta = event.file_meta
    set_implementation(file_meta)
    file_meta.SourceApplicationEntityTitle = event.assoc.requestor.ae_title
    buffer = DicomBytesIO()
    buffer.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buffer, file_meta, enforce_standard=True)
    return buffer.getvalue()


@dataclass(frozen=True)
class ReceivedDataset:
    """The dataset of a C-STORE as pynetdicom wrote it to a file while it arrived
    (STORE_RECV_CHUNKED_DATASET): memory stays at one PDU whatever the instance's size. Where
    that setting was off (another AE in the process turned it off), the bytes pynetdicom held."""

    path: Path | None
    offset: int  # where the dataset starts in `path`, after pynetdicom's own file meta
    size: int
    held: bytes | None = None

    @classmethod
    def of(cls, event: evt.Event) -> ReceivedDataset:
        written = event.dataset_path  # None: this one was decoded into memory
        if written is None:
            held = event.request.DataSet.getvalue()
            return cls(None, 0, len(held), held)
        path = Path(written)
        _meta, offset = split_dataset(path)
        return cls(path, offset, path.stat().st_size - offset)

    def head(self, length: int = HEAD_BYTES) -> bytes:
        if self.path is None:
            return (self.held or b"")[:length]
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            return handle.read(length)

    def writer(self, header: bytes) -> Callable[[BinaryIO], None]:
        def write(target: BinaryIO) -> None:
            target.write(header)
            if self.path is None:
                target.write(self.held or b"")
                return
            with open(self.path, "rb") as source:
                source.seek(self.offset)
                shutil.copyfileobj(source, target, COPY_CHUNK)

        return write


class ReceiveToFiles:
    """pynetdicom writes received C-STORE datasets to temporary files (a process-wide setting),
    in the spool's tmp/ (same filesystem; emptied at start, so a crash leaves nothing behind).
    The last receiver to stop puts both settings back (tests run several in one process)."""

    _lock = threading.Lock()
    _users = 0
    _before: tuple[bool, str | None] = (False, None)

    def __init__(self, tmp_dir: Path) -> None:
        with ReceiveToFiles._lock:
            if ReceiveToFiles._users == 0:
                ReceiveToFiles._before = (_config.STORE_RECV_CHUNKED_DATASET, tempfile.tempdir)
                _config.STORE_RECV_CHUNKED_DATASET = True
                tempfile.tempdir = str(tmp_dir)
            ReceiveToFiles._users += 1

    def restore(self) -> None:
        with ReceiveToFiles._lock:
            ReceiveToFiles._users -= 1
            if ReceiveToFiles._users == 0:
                _config.STORE_RECV_CHUNKED_DATASET, tempfile.tempdir = ReceiveToFiles._before
