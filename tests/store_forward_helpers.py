"""Real pieces for the store-and-forward proofs: the node as a `python -m dicomnode serve` process
(so it can be killed with SIGKILL), a recording SCP on a fixed port that keeps arrival times, a
modality that keeps sending through node restarts, and small real images with fresh UIDs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pydicom
import sqlalchemy as sa
import yaml
from pydicom.filereader import read_file_meta_info
from pydicom.uid import generate_uid
from pynetdicom import AE, _config, evt
from pynetdicom.sop_class import Verification

from dicomnode.logdb.models import ForwardAttemptRow, InstanceRow
from dicomnode.receive import set_tcp_nodelay
from dicomnode.send import send_c_store_guarded
from tests.node_helpers import NODE_AE, RecordingSCP, free_port, stop_process
from tests.shared_data import SHARED

REPO = Path(__file__).resolve().parent.parent
# 2.3 kB real CR image (uncompressed): keeps 300-image streams fast on 2 cores
SMALL_CR = SHARED / "dicom" / "corpus" / "files" / "CR__77654033_CR1_6154.dcm"


def make_images(folder: Path, count: int, prefix: str = "img") -> list[Path]:
    """`count` copies of the small CR with new SOP Instance UIDs (and one new study)."""
    folder.mkdir(parents=True, exist_ok=True)
    ds = pydicom.dcmread(SMALL_CR)
    ds.StudyInstanceUID = generate_uid()
    paths = []
    for index in range(count):
        uid = generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.InstanceNumber = index + 1
        path = folder / f"{prefix}{index:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def uid_of(path: Path) -> str:
    return str(read_file_meta_info(path).MediaStorageSOPInstanceUID)


class Sink(RecordingSCP):
    """RecordingSCP on a chosen port (to go down and come back there), with arrival times."""

    def __init__(self, port: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fixed_port = port or free_port()
        self.arrivals: list[tuple[str, float]] = []  # (SOP Instance UID, time.monotonic())

    def _on_store(self, event: evt.Event) -> int:
        status = super()._on_store(event)
        with self._lock:
            self.arrivals.append((str(event.request.AffectedSOPInstanceUID), time.monotonic()))
        return status

    def start(self) -> Sink:
        self._server = self.ae.start_server(
            ("127.0.0.1", self.fixed_port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._on_store), (evt.EVT_CONN_OPEN, self._on_open)],
        )
        return self

    def down(self) -> None:
        """Gone: no new associations, and the open ones (the node reuses one) aborted."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        for assoc in self.ae.active_associations:
            assoc.abort()

    def uids(self) -> list[str]:
        with self._lock:
            return [uid for uid, _ in self.arrivals]

    def first_arrival(self) -> dict[str, float]:
        with self._lock:
            first: dict[str, float] = {}
            for uid, at in self.arrivals:
                first.setdefault(uid, at)
            return first

    def wait_for_uids(self, wanted: set[str], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if wanted <= set(self.uids()):
                return
            time.sleep(0.05)
        missing = wanted - set(self.uids())
        raise TimeoutError(f"{self.ae_title}: {len(missing)} of {len(wanted)} never arrived")


def write_config(path: Path, workdir: Path, port: int, destinations: list[dict], **sections: Any
                 ) -> Path:  # fmt: skip
    data: dict[str, Any] = {
        "receive": {"ae_title": NODE_AE, "host": "127.0.0.1", "port": port},
        "spool": {"path": str(workdir / "spool")},
        "log": {"url": f"sqlite:///{workdir / 'log.sqlite3'}"},
        "classify": {"modalities": []},  # routing/queue proofs: no model, fast
        "disk": {"min_free_mb": 0},
        "destinations": destinations,
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class NodeProcess:
    """`python -m dicomnode serve -c CONFIG` as a child process."""

    def __init__(self, config: Path, port: int, workdir: Path) -> None:
        self.config = config
        self.port = port
        self.workdir = workdir
        self.process: subprocess.Popen | None = None
        self.starts = 0

    def start(self, timeout: float = 60.0) -> NodeProcess:
        self.starts += 1
        log = open(self.workdir / f"node-{self.starts}.log", "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "dicomnode", "serve", "-c", str(self.config),
             "--log-level", "INFO"],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"node exited: {self.log_text()}")
            if echo(self.port):
                return self
            time.sleep(0.1)
        text = self.log_text()
        self.stop()  # the caller never gets this process to stop: stop it here
        raise TimeoutError(f"node did not answer C-ECHO: {text}")

    def log_text(self) -> str:
        logs = sorted(self.workdir.glob("node-*.log"))
        return "\n".join(p.read_text(errors="replace") for p in logs)

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)
        self.process = None

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None


def echo(port: int) -> bool:
    ae = AE(ae_title="PROBE")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 2
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AE)
        if not assoc.is_established:
            return False
        status = assoc.send_c_echo()
        assoc.release()
        return "Status" in status and status.Status == 0
    finally:
        ae.shutdown()


class Modality:
    """Sends files in order over one association, re-associating (and re-sending the file whose
    C-STORE got no answer) whenever the node goes away, as a real modality's queue does."""

    def __init__(self, port: int, files: list[Path], calling_ae: str = "MODALITY",
                 pause_s: float = 0.0) -> None:  # fmt: skip
        _config.STORE_SEND_CHUNKED_DATASET = True  # raw bytes from the file
        self.port = port
        self.files = files
        self.calling_ae = calling_ae
        self.pause_s = pause_s
        self.acked: dict[str, float] = {}  # uid -> time.monotonic() of the Success response
        self.unanswered: list[str] = []  # uids sent at least once without an answer
        self.other_status: dict[str, int] = {}
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"modality-{calling_ae}")

    def start(self) -> Modality:
        self._thread.start()
        return self

    def join(self, timeout: float = 300.0) -> None:
        self._thread.join(timeout)
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _associate(self, ae: AE) -> Any:
        while not self._stop.is_set():
            assoc = ae.associate("127.0.0.1", self.port, ae_title=NODE_AE,
                                 evt_handlers=[(evt.EVT_CONN_OPEN, set_tcp_nodelay)])  # fmt: skip
            if assoc.is_established:
                return assoc
            time.sleep(0.1)
        return None

    def _run(self) -> None:
        ae = AE(ae_title=self.calling_ae)
        meta = read_file_meta_info(self.files[0])
        ae.add_requested_context(str(meta.MediaStorageSOPClassUID), [str(meta.TransferSyntaxUID)])
        assoc = None
        try:
            for path in self.files:
                uid = uid_of(path)
                while not self._stop.is_set():
                    if assoc is None or not assoc.is_established:
                        assoc = self._associate(ae)
                        if assoc is None:
                            return
                    try:
                        # pynetdicom's reactor can take the response (then a resend): the
                        # node's guard, as its forwarder and bench/relay.py use it
                        status = send_c_store_guarded(assoc, path)
                    except (OSError, RuntimeError, ValueError, AttributeError):
                        status = None
                    if status is not None and "Status" in status:
                        code = int(status.Status)
                        if code == 0:
                            self.acked[uid] = time.monotonic()
                        else:
                            self.other_status[uid] = code
                        break
                    self.unanswered.append(uid)  # node gone mid-store: send it again
                    assoc = None
                if self.pause_s:
                    time.sleep(self.pause_s)
        except BaseException as exc:  # surfaced by join()
            self.error = exc
        finally:
            if assoc is not None and assoc.is_established:
                assoc.release()
            ae.shutdown()


def log_rows(workdir: Path) -> tuple[list[Any], list[Any]]:
    engine = sa.create_engine(f"sqlite:///{workdir / 'log.sqlite3'}")
    try:
        with engine.connect() as connection:
            instances = list(connection.execute(sa.select(InstanceRow)))
            forwards = list(connection.execute(sa.select(ForwardAttemptRow)))
    finally:
        engine.dispose()
    return instances, forwards
