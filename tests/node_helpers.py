"""Real peers for node tests: a recording pynetdicom SCP, Orthanc, DCMTK storescu/echoscu, and a
node config builder. Fixtures in conftest.py wrap these; other tests may use them directly."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification

from dicomnode.config import NodeConfig
from dicomnode.logdb.models import ForwardAttemptRow, InstanceRow
from dicomnode.receive import retired_image_storage_classes, set_tcp_nodelay

NODE_AE = "DICOMNODE"
SINK_AE = "SINK"
ORTHANC_AE = "ORTHANC"
PEER_ENV = {**os.environ, "TCP_NODELAY": "1"}  # DCMTK and Orthanc read this


def stop_process(process: subprocess.Popen | None, timeout: float = 30.0) -> None:
    """SIGTERM a child (it shuts down cleanly), SIGKILL it if it has not exited in `timeout`."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Received:
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    calling_ae: str
    encoded: bytes  # preamble + file meta + the dataset bytes exactly as sent

    def dataset(self) -> Dataset:
        from io import BytesIO

        import pydicom

        return pydicom.dcmread(BytesIO(self.encoded))


def received_file(event: evt.Event) -> bytes:
    """A C-STORE's dataset as a file; a node started in this process makes pynetdicom write
    received datasets to files (dicomnode.receive.ReceiveToFiles), so read it from there."""
    if event.dataset_path is not None:
        return Path(event.dataset_path).read_bytes()
    return event.encoded_dataset(include_meta=True)


class RecordingSCP:
    """A pynetdicom storage SCP on 127.0.0.1 that keeps every instance it receives (in memory),
    with the raw bytes as sent. `transfer_syntaxes` limits what it accepts (to test fallbacks);
    `status` is what it answers."""

    def __init__(
        self,
        ae_title: str = SINK_AE,
        transfer_syntaxes: list[str] | None = None,
        status: int = 0x0000,
    ) -> None:
        self.ae = AE(ae_title=ae_title)
        self.ae_title = ae_title
        self.status = status
        syntaxes = transfer_syntaxes or ALL_TRANSFER_SYNTAXES
        self.ae.add_supported_context(Verification)
        for context in AllStoragePresentationContexts:
            self.ae.add_supported_context(context.abstract_syntax, syntaxes)
        # Like a PACS that still takes old modalities' retired image classes (as the node does).
        for retired_class in retired_image_storage_classes():
            self.ae.add_supported_context(retired_class, syntaxes)
        self.received: list[Received] = []
        self.associations = 0
        self._lock = threading.Condition()
        self._server: Any = None

    def _on_store(self, event: evt.Event) -> int:
        item = Received(
            str(event.request.AffectedSOPClassUID),
            str(event.request.AffectedSOPInstanceUID),
            str(event.context.transfer_syntax),
            event.assoc.requestor.ae_title,
            received_file(event),
        )
        with self._lock:
            self.received.append(item)
            self._lock.notify_all()
        return self.status

    def _on_open(self, event: evt.Event) -> None:
        set_tcp_nodelay(event)
        with self._lock:
            self.associations += 1

    def start(self) -> RecordingSCP:
        self._server = self.ae.start_server(
            ("127.0.0.1", 0),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._on_store), (evt.EVT_CONN_OPEN, self._on_open)],
        )
        return self

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def destination(self, name: str = "sink") -> dict:
        return {
            "name": name,
            "type": "dicom",
            "ae_title": self.ae_title,
            "host": "127.0.0.1",
            "port": self.port,
            "retry_delay_s": 0.5,
        }

    def wait_for(self, count: int, timeout: float = 60.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self.received) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{self.ae_title} got {len(self.received)} of {count}")
                self._lock.wait(left)
            return list(self.received)

    def by_uid(self, sop_instance_uid: str) -> Received:
        matches = [r for r in self.received if r.sop_instance_uid == sop_instance_uid]
        assert matches, f"{self.ae_title} never received {sop_instance_uid}"
        return matches[-1]

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self.ae.shutdown()


class Orthanc:
    """Orthanc 1.10 in a temporary folder. It listens on every interface, so run it only inside a
    private network namespace (`make test` runs pytest inside `unshare -n`)."""

    def __init__(self, workdir: Path, **settings: Any) -> None:
        self.workdir = workdir
        self.settings = settings  # more Orthanc configuration (AcceptedTransferSyntaxes, ...)
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> Orthanc:
        storage = self.workdir / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "dicomnode-test",
            "DicomAet": ORTHANC_AE,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "UnknownSopClassAccepted": True,
            "Plugins": [],
            "HttpServerEnabled": True,
            "DicomServerEnabled": True,
            **self.settings,
        }
        config_path = self.workdir / "orthanc.json"
        config_path.write_text(json.dumps(config))
        log = open(self.workdir / "orthanc.log", "wb")  # noqa: SIM115 - lives as long as Orthanc
        self.process = subprocess.Popen(
            ["Orthanc", str(config_path)], env=PEER_ENV, stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited: {(self.workdir / 'orthanc.log').read_text()}")
            try:
                self.get("/system")
                return self
            except OSError:
                time.sleep(0.1)
        raise TimeoutError("Orthanc did not answer its REST API")

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as r:
            body = r.read()
        return json.loads(body) if body[:1] in (b"{", b"[") else body

    def instance_file(self, sop_instance_uid: str) -> bytes:
        found = self.find_instance(sop_instance_uid)
        assert found, f"Orthanc has no instance {sop_instance_uid}"
        return self.get(f"/instances/{found}/file")

    def find_instance(self, sop_instance_uid: str) -> str | None:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}/tools/lookup",
            data=sop_instance_uid.encode(),
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as r:
            hits = json.loads(r.read())
        return next((h["ID"] for h in hits if h["Type"] == "Instance"), None)

    def destination(self, name: str = "orthanc") -> dict:
        return {
            "name": name,
            "type": "dicom",
            "ae_title": ORTHANC_AE,
            "host": "127.0.0.1",
            "port": self.dicom_port,
            "retry_delay_s": 0.5,
        }

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None


def node_config(tmp_path: Path, destinations: list[dict], **sections: Any) -> NodeConfig:
    """A config for an in-process node on an ephemeral port, everything under tmp_path."""
    data: dict[str, Any] = {
        "receive": {"ae_title": NODE_AE, "host": "127.0.0.1", "port": 0},
        "spool": {"path": str(tmp_path / "spool")},
        "log": {"url": f"sqlite:///{tmp_path / 'log.sqlite3'}"},
        "destinations": destinations,
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    return NodeConfig.model_validate(data)


def storescu(
    port: int, *files: Path, options: tuple[str, ...] = (), called_ae: str = NODE_AE
) -> subprocess.CompletedProcess:
    """DCMTK storescu as a modality: proposes only the files' own SOP classes (-R)."""
    assert shutil.which("storescu"), "dcmtk storescu is required (make system-deps)"
    return subprocess.run(
        ["storescu", "-aet", "MODALITY", "-aec", called_ae, *options, "127.0.0.1", str(port)]
        + [str(f) for f in files],
        env=PEER_ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )


def echoscu(port: int, called_ae: str = NODE_AE) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["echoscu", "-aet", "MODALITY", "-aec", called_ae, "127.0.0.1", str(port)],
        env=PEER_ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )


def log_written(node: Any, timeout: float = 30.0) -> None:
    """Wait for the node's log writer: events reach the database in batches, moments after the
    spool shows them (dicomnode.log_journal)."""
    deadline = time.monotonic() + timeout
    while node.journal is not None and node.journal.pending():
        assert time.monotonic() < deadline, "the log journal was not written"
        time.sleep(0.02)


def instance_rows(node: Any) -> list[InstanceRow]:
    log_written(node)
    with node.log_store.engine.connect() as connection:
        return list(connection.execute(sa.select(InstanceRow).order_by(InstanceRow.id)))


def forward_rows(node: Any) -> list[ForwardAttemptRow]:
    log_written(node)
    with node.log_store.engine.connect() as connection:
        return list(connection.execute(sa.select(ForwardAttemptRow).order_by(ForwardAttemptRow.id)))


def send_files(
    port: int, *files: Path, called_ae: str = NODE_AE, calling_ae: str = "RAWSCU"
) -> list[int | None]:
    """pynetdicom C-STORE of files exactly as stored on disk (no decode/re-encode, unlike storescu,
    which re-encodes through dcmdata); proposes each file's own SOP class and transfer syntax."""
    from pydicom.filereader import read_file_meta_info
    from pynetdicom import _config

    _config.STORE_SEND_CHUNKED_DATASET = True  # raw bytes from the file
    ae = AE(ae_title=calling_ae)
    pairs = []
    for path in files:
        meta = read_file_meta_info(path)
        pair = (str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))
        if pair not in pairs:
            pairs.append(pair)
            ae.add_requested_context(*pair[:1], [pair[1]])
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae,
                         evt_handlers=[(evt.EVT_CONN_OPEN, set_tcp_nodelay)])  # fmt: skip
    assert assoc.is_established, "node refused the association"
    statuses: list[int | None] = []
    try:
        for path in files:
            status = assoc.send_c_store(path)
            statuses.append(int(status.Status) if "Status" in status else None)
    finally:
        assoc.release()
        ae.shutdown()
    return statuses


def without_view_position(source: Path, target: Path) -> Path:
    """A copy of a real file with ViewPosition removed (pixel data written back untouched)."""
    import pydicom

    ds = pydicom.dcmread(source)
    if "ViewPosition" in ds:
        del ds.ViewPosition
    ds.save_as(target)
    return target


def as_cr_image(source: Path, target: Path) -> Path:
    """A real film stored as Secondary Capture (the reference chest files are), re-filed as the
    CR image a modality would send: SOP class and SOP Instance UID new, all else as it was."""
    import pydicom
    from pydicom.uid import ComputedRadiographyImageStorage, generate_uid

    ds = pydicom.dcmread(source)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = ComputedRadiographyImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(target)
    return target


def jpeg_as_dicom(jpeg: Path, target: Path, modality: str = "CR") -> Path:
    """Wrap an 8-bit grey baseline JPEG radiograph, codestream unchanged, in a CR/DX DICOM file
    with no ViewPosition (JPEG Baseline transfer syntax)."""
    from PIL import Image
    from pydicom.dataset import FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import (
        ComputedRadiographyImageStorage,
        DigitalXRayImageStorageForPresentation,
        JPEGBaseline8Bit,
        generate_uid,
    )

    with Image.open(jpeg) as image:
        assert image.mode == "L", f"{jpeg} is not 8-bit grey"
        columns, rows = image.size
    sop_class = (
        ComputedRadiographyImageStorage
        if modality == "CR"
        else DigitalXRayImageStorageForPresentation
    )
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName = "TEST-LAT-1", "Test^Lateral"
    ds.Modality = modality
    ds.BodyPartExamined = "CHEST"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.LossyImageCompression = "01"
    ds.PixelData = encapsulate([jpeg.read_bytes()])
    ds["PixelData"].VR = "OB"
    ds.save_as(target, enforce_file_format=True)
    return target


# Routing for a node without destinations (receive-side tests): unmatched images are dropped on
# purpose; without it the node refuses to start (it would acknowledge images into nowhere).
DISCARD_UNMATCHED = {"default": {"action": "discard"}}


def dataset_bytes(encoded_file: bytes) -> bytes:
    """The bytes after the file meta group: what "forwarded untouched" compares."""
    import io

    from pydicom.filereader import _read_file_meta_info, read_preamble

    stream = io.BytesIO(encoded_file)
    read_preamble(stream, False)
    _read_file_meta_info(stream)
    return stream.read()
