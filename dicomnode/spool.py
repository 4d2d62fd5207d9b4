"""Spool stage: atomic writes, and the folders on disk are the state machine.

    incoming/            received and acknowledged, waiting for a worker (name order = arrival)
    processing/          claimed by a worker (moved back to incoming/ on start-up: resume)
    outgoing/<dest>/     classified/tagged, waiting for that destination's forwarder
    sent/<dest>/         delivered
    sent/_discarded/     routed nowhere by a discard rule (kept like sent/ copies, then purged)
    failed/<dest>/       given up on; the .json beside the file says why

Every instance is a pair NAME.dcm + NAME.json (what the node knows about it: peer, times, log id).
The .json is always in place before its .dcm appears, and a .dcm appears only by rename or link, so
a reader that keys on *.dcm never sees a partial file. An operator can `ls` where every image is.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

INCOMING, PROCESSING, OUTGOING, SENT, FAILED, TMP = (
    "incoming", "processing", "outgoing", "sent", "failed", "tmp",
)  # fmt: skip
JOURNAL = "journal"  # log events waiting for the database (dicomnode.log_journal)
PIPELINE_FAILED = "_pipeline"  # failed/<this>/: instances the pipeline itself could not handle
DISCARDED = "_discarded"  # sent/<this>/: instances a discard rule sent nowhere, on purpose


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, tmp_dir: Path | None = None,
                 durable: bool = True) -> None:
    """Write to a temporary file, fsync, rename: `path` holds all of `data` or does not exist.
    durable=False skips both fsyncs (still atomic to readers; a crash may lose the file)."""
    write_all_atomic([(path, data)], tmp_dir, durable)


# What a file is made of: its bytes, or a function that writes them to the open file (for
# content too big to hold in memory).
Content = bytes | Callable[[BinaryIO], None]


def write_all_atomic(files: list[tuple[Path, Content]], tmp_dir: Path | None = None,
                     durable: bool = True) -> None:
    """write_atomic for several files of one folder: each written and fsynced, then renamed in
    the order given (a reader never sees a later one without the earlier ones), then one fsync
    of the folder for all of them."""
    staged: list[tuple[Path, Path]] = []
    try:
        for path, data in files:
            unique = f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp"
            tmp = (tmp_dir or path.parent) / unique
            staged.append((tmp, path))
            with open(tmp, "wb") as handle:
                if callable(data):
                    data(handle)
                else:
                    handle.write(data)
                if durable:
                    handle.flush()
                    os.fsync(handle.fileno())
        for tmp, path in staged:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in staged:
            with contextlib.suppress(OSError):
                tmp.unlink()
        raise
    if durable:
        for folder in dict.fromkeys(path.parent for path, _ in files):
            _fsync_dir(folder)


def ordered_name(sequence: Iterator[int]) -> str:
    """Nanosecond clock + a process counter: names sort in creation order and never collide."""
    return f"{time.time_ns():020d}-{next(sequence) % 1_000_000:06d}"


LOCK_FILE = ".lock"  # held (flock) by the one node that owns this spool; holds its PID
RESTART_NEEDED = "restart-needed"  # why the running node needs a restart (a reload's); `health`


class SpoolInUse(RuntimeError):
    """Another node holds this spool: two nodes would move each other's files."""


class Spool:
    def __init__(self, root: Path | str) -> None:
        self._lock_fd: int | None = None
        self.root = Path(root)
        self._sequence = itertools.count()
        self._sequence_lock = threading.Lock()

    # -- layout -------------------------------------------------------------------------------
    def dir(self, state: str, destination: str | None = None) -> Path:
        return self.root / state / destination if destination else self.root / state

    def lock(self) -> None:
        """Take the spool for this process (an exclusive flock, released when the process
        ends, even by SIGKILL); SpoolInUse names the holder's PID if another node has it."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise SpoolInUse(
                f"spool {self.root} is in use by another dicomnode (PID {holder}); one node "
                "per spool: give this one its own spool.path") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def ensure(self, destinations: list[str] = ()) -> None:  # type: ignore[assignment]
        for state in (INCOMING, PROCESSING, TMP):
            self.dir(state).mkdir(parents=True, exist_ok=True)
        for dest in destinations:
            for state in (OUTGOING, SENT, FAILED):
                self.dir(state, dest).mkdir(parents=True, exist_ok=True)
        for leftover in self.dir(TMP).iterdir():  # partial writes of a crashed process
            leftover.unlink(missing_ok=True)

    def new_name(self) -> str:
        with self._sequence_lock:
            return ordered_name(self._sequence)

    # -- receive -------------------------------------------------------------------------------
    def accept(self, encoded_file: Content, meta: dict[str, Any]) -> Path:
        """Store one received instance (DICOM file bytes exactly as received, or a function
        that writes them) in incoming/."""
        name = self.new_name()
        meta = {**meta, "name": name}
        sidecar = self.dir(INCOMING) / f"{name}.json"
        target = self.dir(INCOMING) / f"{name}.dcm"
        try:  # the sidecar before the .dcm, one folder fsync for both
            write_all_atomic([(sidecar, _dumps(meta)), (target, encoded_file)], self.dir(TMP))
        except OSError:  # not stored, so not acknowledged: leave no orphan sidecar behind
            sidecar.unlink(missing_ok=True)
            raise
        return target

    # -- workers -------------------------------------------------------------------------------
    def names(self, state: str, destination: str | None = None) -> list[str]:
        folder = self.dir(state, destination)
        if not folder.is_dir():
            return []
        return sorted(p.stem for p in folder.glob("*.dcm"))

    def claim(self, name: str) -> Path | None:
        """incoming/ -> processing/; None if another worker took it first."""
        src, dst = self.dir(INCOMING), self.dir(PROCESSING)
        try:
            os.rename(src / f"{name}.dcm", dst / f"{name}.dcm")
        except FileNotFoundError:
            return None
        with contextlib.suppress(FileNotFoundError):
            os.rename(src / f"{name}.json", dst / f"{name}.json")
        return dst / f"{name}.dcm"

    def unclaim(self, name: str) -> None:
        """processing/ -> incoming/: the image waits again (for the slow lane), as on disk it is."""
        for suffix in (".json", ".dcm"):
            with contextlib.suppress(FileNotFoundError):
                os.rename(self.dir(PROCESSING) / f"{name}{suffix}",
                          self.dir(INCOMING) / f"{name}{suffix}")  # fmt: skip

    def resume(self) -> int:
        """Move what a stopped node left in processing/ back to incoming/; returns how many."""
        moved = 0
        for name in self.names(PROCESSING):
            self.unclaim(name)
            moved += 1
        for partial in self.dir(PROCESSING).glob("*.out"):  # tagged copy not yet dispatched
            partial.unlink(missing_ok=True)
        return moved

    def read_meta(self, dcm_path: Path) -> dict[str, Any]:
        try:
            return json.loads(dcm_path.with_suffix(".json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {"name": dcm_path.stem}

    def dispatch(
        self, name: str, payload: Path, destinations: list[str], meta: dict[str, Any]
    ) -> None:
        """Hand the processed file to each destination's outgoing/ folder and leave processing/."""
        for dest in destinations:
            out_dir = self.dir(OUTGOING, dest)
            out_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(out_dir / f"{name}.json", _dumps(meta), self.dir(TMP))
            staged = self.dir(TMP) / f"{name}.{dest}.dcm"
            staged.unlink(missing_ok=True)
            os.link(payload, staged)  # one copy on disk however many destinations
            os.replace(staged, out_dir / f"{name}.dcm")
        if not destinations:  # a discard rule: it is done (config refuses routing gaps)
            sent = self.dir(SENT, DISCARDED)
            sent.mkdir(parents=True, exist_ok=True)
            write_atomic(sent / f"{name}.json", _dumps(meta), self.dir(TMP))
            os.link(payload, sent / f"{name}.dcm")
        self._remove_processing(name, payload)

    def fail_processing(self, name: str, reason: str, meta: dict[str, Any]) -> None:
        """The pipeline could not handle an instance: keep it, with the reason, in failed/."""
        self.move_to(PROCESSING, None, FAILED, PIPELINE_FAILED, name, {**meta, "error": reason})

    def _remove_processing(self, name: str, payload: Path) -> None:
        proc = self.dir(PROCESSING)
        for path in (proc / f"{name}.dcm", proc / f"{name}.json", payload):
            path.unlink(missing_ok=True)
        _fsync_dir(proc)

    # -- forwarders ----------------------------------------------------------------------------
    def move_to(
        self,
        state: str,
        dest: str | None,
        new_state: str,
        new_dest: str | None,
        name: str,
        meta: dict[str, Any],
        durable: bool = True,
    ) -> Path:
        src, dst = self.dir(state, dest), self.dir(new_state, new_dest)
        dst.mkdir(parents=True, exist_ok=True)
        write_atomic(dst / f"{name}.json", _dumps(meta), self.dir(TMP), durable)
        os.replace(src / f"{name}.dcm", dst / f"{name}.dcm")
        (src / f"{name}.json").unlink(missing_ok=True)
        return dst / f"{name}.dcm"

    def mark_sent(self, dest: str, name: str, meta: dict[str, Any]) -> Path:
        # Not fsynced: a crash may bring the image back to outgoing/ (sent again; receivers
        # take a SOP Instance UID twice) but loses nothing; the journal holds the attempt.
        return self.move_to(OUTGOING, dest, SENT, dest, name, meta, durable=False)

    def mark_failed(self, dest: str, name: str, meta: dict[str, Any]) -> Path:
        return self.move_to(OUTGOING, dest, FAILED, dest, name, meta)

    def counts(self) -> dict[str, int]:
        """How many instances are in each state (per destination for the per-destination ones)."""
        result = {INCOMING: len(self.names(INCOMING)), PROCESSING: len(self.names(PROCESSING))}
        for state in (OUTGOING, SENT, FAILED):
            base = self.dir(state)
            for folder in sorted(base.iterdir()) if base.is_dir() else []:
                result[f"{state}/{folder.name}"] = len(self.names(state, folder.name))
        return result

    def iter_state(self, state: str, dest: str | None = None) -> Iterator[Path]:
        for name in self.names(state, dest):
            yield self.dir(state, dest) / f"{name}.dcm"


# A spool name as Spool.new_name makes it (and nothing that could climb out of a folder).
_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")


def locate(spool_root: Path | str, logged_spool_path: str | None,
           name: str | None = None) -> Path | None:
    """Where the spool at `spool_root` holds a logged instance now, or None.

    The log keeps the path the pipeline read (processing/NAME.dcm), which is gone once the image
    moved on; only its NAME is used (or `name`, the decision key, which is the same): NAME.dcm is
    looked for in incoming/, processing/, outgoing/*/, sent/*/ and failed/*/. Only a regular
    file, not a symbolic link, whose resolved path lies inside the resolved spool root is
    returned: a log row naming any other file gets None."""
    name = name or (Path(logged_spool_path).stem if logged_spool_path else None)
    if not name or not _NAME.match(name):
        return None
    try:
        root = Path(spool_root).resolve(strict=True)
    except OSError:
        return None
    file_name = f"{name}.dcm"
    candidates = [root / INCOMING / file_name, root / PROCESSING / file_name]
    for state in (OUTGOING, SENT, FAILED):
        folder = root / state
        if folder.is_dir():
            candidates += sorted(folder.glob(f"*/{file_name}"))
    for candidate in candidates:
        try:
            if candidate.is_symlink() or not candidate.is_file():
                continue
            if candidate.resolve(strict=True).is_relative_to(root):
                return candidate
        except OSError:  # moved on while we looked: try the next place
            continue
    return None


def _dumps(meta: dict[str, Any]) -> bytes:
    return json.dumps(meta, sort_keys=True, default=str).encode()
