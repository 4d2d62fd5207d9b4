"""Hostile-input guards for the classify stage: decoding in a separate process with a time and
memory limit, after the header-only checks of dicomnode.pixel_checks.

* `check_file` / `check_dataset` (pixel_checks, re-exported here) read only headers and refuse
  images whose pixels would expand past `Limits.max_pixel_bytes` or whose codestream would send
  a parser into a loop. They are cheap and run in the node's own process.
* `IsolatedDecoder` runs read + guard + `preprocess_dataset` in a long-lived child process. A C
  decoder stuck in a loop cannot be interrupted from a Python thread, so the only reliable way
  to bound an image's processing time is a process we can kill: on timeout the child is killed
  and replaced, the image raises `DecodeTimeout`, and the queue moves on. The child also runs
  under an address-space limit (RLIMIT_AS), so a decode that slips past the header checks hits
  MemoryError there instead of exhausting the node. The child is reused between images; one
  spawn (about a second of imports) is paid at start and after each kill, not per image.

Every error here subclasses `PreprocessError`, which the pipeline already records as
`unreadable` before forwarding the original file untouched.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from pydicom.dataset import Dataset

from dicomnode.pixel_checks import (  # noqa: F401  (re-exported: the guard's public checks)
    GuardError,
    ImageTooLarge,
    MalformedCodestream,
    MiB,
    check_dataset,
    check_file,
    declared_pixel_bytes,
    int_element,
)
from dicomnode.preprocess import PreprocessError

LOGGER = logging.getLogger(__name__)


class DecodeTimeout(GuardError):
    """Processing one image took longer than Limits.timeout_s; the worker was killed."""


class DecoderCrashed(GuardError):
    """The decode worker died (signal, memory limit) while processing the image."""


@dataclass(frozen=True)
class Limits:
    # 512 MiB of decoded pixels is ~10x the largest single radiograph (43x43 cm at 100 um, 16-bit
    # is ~37 MiB) and still leaves room on an 8 GB Jetson for the float copies windowing makes.
    max_pixel_bytes: int = 512 * MiB
    timeout_s: float = 30.0  # the most one image gets, however large it says it is
    # The deadline of one image scales with its declared size: a radiograph decodes in well under
    # a second here (bench/README.md), so a small file that decodes for minutes (a hostile
    # JPEG 2000 codestream) is cut off after seconds instead of holding the queue for timeout_s.
    min_timeout_s: float = 5.0
    timeout_per_mpixel_s: float = 1.0
    # Address-space cap of the decode worker; None disables it. Virtual size, not resident:
    # numpy/OpenBLAS and the decoders map a few hundred MiB before touching any pixel.
    worker_memory_bytes: int | None = 4096 * MiB
    # The most a decode may hold a classify worker; past it the image moves to the slow lane,
    # which gives it the whole deadline above (dicomnode.pipeline). None: no slow lane.
    patience_s: float | None = 3.0
    # Images declaring more megapixels than this go to the slow lane without trying: the largest
    # radiograph (43 x 43 cm at 100 um) is 18.5 MP, and a 16384 x 16384 film takes ~8 s here.
    slow_lane_mpixel: float = 40.0

    def declared_mpixel(self, ds: Dataset | None) -> float | None:
        """rows x columns x frames / 1e6 as the dataset declares it; None when not readable."""
        if ds is None:
            return None
        try:
            pixels = int_element(ds, "Rows", 0) * int_element(ds, "Columns", 0) * (
                int_element(ds, "NumberOfFrames", 1) or 1)
        except GuardError:
            return None
        return max(pixels, 0) / 1e6

    def deadline_s(self, ds: Dataset | None) -> float:
        """Seconds the decode of this dataset may take: min_timeout_s + timeout_per_mpixel_s per
        declared megapixel (rows x columns x frames), at most timeout_s."""
        megapixels = self.declared_mpixel(ds)
        if megapixels is None:
            return self.timeout_s
        return min(self.timeout_s, self.min_timeout_s + self.timeout_per_mpixel_s * megapixels)


# --- the isolated decoder ---------------------------------------------------------------------


def preprocess_guarded(ds: Dataset, limits: Limits):
    """check_dataset + preprocess_dataset, in this process, with one error type.

    The pipeline treats PreprocessError as "unreadable: forward untouched"; any other exception
    would count as a node bug and park the image in failed/. Decoders and LUT code raise many
    types on hostile input (ValueError, KeyError, IndexError, struct.error, ...), so everything
    that escapes them is reported as a PreprocessError naming the original type.
    """
    from dicomnode.preprocess import preprocess_dataset

    check_dataset(ds, limits)
    try:
        return preprocess_dataset(ds)
    except PreprocessError:
        raise
    except MemoryError as exc:
        raise DecoderCrashed("decode ran out of memory") from exc
    except Exception as exc:
        raise PreprocessError(f"cannot preprocess: {type(exc).__name__}: {exc}") from exc


def guarded_preprocess_file(path: str | Path, limits: Limits):
    """read -> guard -> preprocess in the current process (what the worker runs per image)."""
    import pydicom

    check_file(path, limits)
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:
        raise PreprocessError(f"cannot read DICOM: {exc}") from exc
    return preprocess_guarded(ds, limits)


def _guarded_decompress_file(path: str | Path, limits: Limits) -> bytes:
    """read -> guard -> decompress to native pixels (Explicit VR LE); the new file's bytes."""
    import io

    import pydicom

    check_file(path, limits)
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:
        raise PreprocessError(f"cannot read DICOM: {exc}") from exc
    check_dataset(ds, limits)
    try:
        ds.decompress(generate_instance_uid=False)  # same instance: keep its SOP Instance UID
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
    except MemoryError as exc:
        raise DecoderCrashed("decompression ran out of memory") from exc
    except Exception as exc:
        raise PreprocessError(f"cannot decompress: {type(exc).__name__}: {exc}") from exc
    return buffer.getvalue()


def _worker_main(conn: Connection, limits: Limits, niceness: int | None = None) -> None:
    import dicomnode.preprocess  # noqa: F401  (import before "ready": not part of any timeout)

    if niceness is not None:
        # Decoding yields the CPU to receiving (see ClassifyConfig.nice). Absolute, not os.nice():
        # a restart spawned by the classify thread already inherits that thread's niceness.
        own = os.getpriority(os.PRIO_PROCESS, 0)
        os.setpriority(os.PRIO_PROCESS, 0, max(niceness, own))

    if limits.worker_memory_bytes:
        import resource

        resource.setrlimit(
            resource.RLIMIT_AS, (limits.worker_memory_bytes, limits.worker_memory_bytes)
        )
    conn.send(("ready",))
    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        try:
            if isinstance(request, tuple) and request[0] == "decompress":
                conn.send(("ok", _guarded_decompress_file(request[1], limits)))
                continue
            conn.send(("ok", guarded_preprocess_file(request, limits)))
        except PreprocessError as exc:
            conn.send(("error", type(exc).__name__, str(exc)))
        except MemoryError:
            conn.send(("error", "DecoderCrashed", "decode exceeded the worker memory limit"))
        except Exception as exc:  # a decoder bug must not kill the worker silently
            conn.send(("error", "PreprocessError", f"{type(exc).__name__}: {exc}"))


WORKER_START_TIMEOUT_S = 120.0  # a cold start on a Jetson SD card imports slowly

_ERRORS = {
    cls.__name__: cls
    for cls in (PreprocessError, GuardError, ImageTooLarge, MalformedCodestream, DecodeTimeout,
                DecoderCrashed)
}


class IsolatedDecoder:
    """`preprocess_file(path)` in a killable child process with a timeout.

    Thread-safe (one image at a time per instance); give each pipeline worker its own instance
    for parallel decoding. Use as a context manager or call close().
    """

    def __init__(self, limits: Limits | None = None, nice: int = 0) -> None:
        self.limits = limits or Limits()
        # The node's own niceness + nice, whichever thread later (re)spawns the worker.
        self.niceness = os.getpriority(os.PRIO_PROCESS, os.getpid()) + nice if nice else None
        self._context = multiprocessing.get_context("spawn")  # safe beside pynetdicom threads
        self._lock = threading.Lock()
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None
        self.restarts = 0

    def _ensure_worker(self) -> Connection:
        if self._process is None or not self._process.is_alive():
            self._stop_worker()
            parent, child = self._context.Pipe()
            process = self._context.Process(
                target=_worker_main, args=(child, self.limits, self.niceness), daemon=True,
                name="dicomnode-decode",
            )  # fmt: skip
            process.start()
            child.close()
            self._process, self._conn = process, parent
            try:
                ready = parent.poll(WORKER_START_TIMEOUT_S) and parent.recv() == ("ready",)
            except (EOFError, OSError):
                ready = False
            if not ready:
                self._stop_worker()
                raise DecoderCrashed("decode worker did not start")
        assert self._conn is not None
        return self._conn

    def _stop_worker(self) -> None:
        if self._conn is not None:
            self._conn.close()
        if self._process is not None:
            if self._process.is_alive():
                self._process.kill()
            self._process.join(5)
        self._process = self._conn = None

    def start(self) -> IsolatedDecoder:
        """Spawn the worker now (the node does this before it listens), not on the first image."""
        with self._lock:
            self._ensure_worker()
        return self

    def preprocess_file(self, path: str | Path, timeout_s: float | None = None):
        """uint8 (224, 224) for the DICOM file at `path`, or a PreprocessError subclass; killed
        after timeout_s (default Limits.timeout_s; the pipeline passes Limits.deadline_s)."""
        return self._call(str(path), path, timeout_s)

    def _call(self, request: object, path: str | Path, timeout_s: float | None = None):
        timeout_s = self.limits.timeout_s if timeout_s is None else timeout_s
        with self._lock:
            conn = self._ensure_worker()
            conn.send(request)
            if not conn.poll(timeout_s):
                LOGGER.warning("decoding %s took over %g s; killing the decode worker", path,
                               timeout_s)  # fmt: skip
                self._stop_worker()
                self.restarts += 1
                raise DecodeTimeout(f"processing exceeded {timeout_s:g} s (its deadline: "
                                    f"guard.min_timeout_s + timeout_per_mpixel_s per declared "
                                    f"megapixel, at most guard.timeout_s)")
            try:
                reply = conn.recv()
            except (EOFError, OSError) as exc:
                self._stop_worker()
                self.restarts += 1
                raise DecoderCrashed("decode worker died while processing the image") from exc
        if reply[0] == "ok":
            return reply[1]
        raise _ERRORS.get(reply[1], PreprocessError)(reply[2])

    def decompress_file(self, path: str | Path) -> Dataset:
        """The file decompressed to native pixels, decoded in the worker (forwarding fallback
        for peers that refuse the compressed transfer syntax)."""
        import io

        import pydicom

        encoded = self._call(("decompress", str(path)), path)
        return pydicom.dcmread(io.BytesIO(encoded))

    def close(self) -> None:
        with self._lock:
            self._stop_worker()

    def __enter__(self) -> IsolatedDecoder:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


_shared_lock = threading.Lock()
_shared_decoder: IsolatedDecoder | None = None


def decompress_isolated(path: str | Path) -> Dataset:
    """IsolatedDecoder.decompress_file on one process shared by the forwarders (spawned on first
    use). GDCM aborts the whole process on some hostile headers; this keeps that out of the node.
    """
    global _shared_decoder
    with _shared_lock:
        if _shared_decoder is None:
            _shared_decoder = IsolatedDecoder(Limits(timeout_s=120.0))
        decoder = _shared_decoder
    return decoder.decompress_file(path)
