"""Processes the node benchmarks drive: the node itself (`python -m dicomnode serve`), the plain
relay, the sink, and an in-process sender that streams fresh instances over one association.

Every server binds 127.0.0.1; run the scripts inside `unshare -n` with lo up, as `make test` does.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import psutil
import pydicom
import yaml
from pydicom.dataset import Dataset
from pynetdicom import AE, _config, evt

from bench.common import REPO_ROOT
from dicomnode.receive import set_tcp_nodelay
from dicomnode.send import send_c_store_guarded

# Send each instance from its file as stored: the sender costs the same whatever it sends to.
_config.STORE_SEND_CHUNKED_DATASET = True

SENDER_AE = "BENCHSCU"


def new_uid() -> str:
    """A fresh 2.25 UUID-derived UID of fixed length (44), so it can be patched in place."""
    return f"2.25.{(1 << 128) + uuid.uuid4().int}"


_TEMPLATE_NUMBERS = itertools.count()


class Template:
    """One source file re-saved with a placeholder SOP Instance UID; `renew()` writes a fresh UID
    over both places it occurs (file meta and dataset) so every send is a new instance without
    re-encoding megabytes of pixel data per image."""

    def __init__(self, source: Path, workdir: Path, sop_class: str | None = None) -> None:
        ds = pydicom.dcmread(source)
        if sop_class is not None:  # e.g. a film stored as Secondary Capture, sent as a CR
            ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
        placeholder = new_uid()
        ds.SOPInstanceUID = placeholder
        ds.file_meta.MediaStorageSOPInstanceUID = placeholder
        # one file per Template: the same source in two input sets must not share a file
        self.path = workdir / f"template-{source.stem}-{next(_TEMPLATE_NUMBERS)}.dcm"
        ds.save_as(self.path)
        self.sop_class = str(ds.SOPClassUID)
        self.transfer_syntax = str(ds.file_meta.TransferSyntaxUID)
        self.source = source
        data = self.path.read_bytes()
        needle = placeholder.encode()
        self.offsets = [m.start() for m in re.finditer(re.escape(needle), data)]
        if len(self.offsets) != 2:
            raise RuntimeError(f"{source}: placeholder UID found {len(self.offsets)} times, not 2")
        self._handle = open(self.path, "r+b")  # noqa: SIM115 - closed by close()

    def renew(self) -> str:
        uid = new_uid().encode()
        for offset in self.offsets:
            self._handle.seek(offset)
            self._handle.write(uid)
        self._handle.flush()
        return uid.decode()

    def close(self) -> None:
        self._handle.close()


@dataclass
class Sent:
    uid: str
    started: float  # unix time the C-STORE began
    replied: float  # unix time the reply arrived: the receiver has the instance
    reply_ms: float
    status: int


def _associate(ae: AE, port: int, called_ae: str) -> Any:
    assoc = ae.associate(
        "127.0.0.1", port, ae_title=called_ae, evt_handlers=[(evt.EVT_CONN_OPEN, set_tcp_nodelay)]
    )
    if not assoc.is_established:
        raise RuntimeError(f"{called_ae} on port {port} refused the association")
    return assoc


def stream(
    port: int, called_ae: str, templates: list[Template], count: int, incidents: list | None = None
) -> list[Sent]:
    """Send `count` instances (templates in turn, each with a fresh UID) over one association.

    If the association is lost mid-stream (pynetdicom 3.0's reactor race, which
    send_c_store_guarded works around, or a timeout), the send is counted in `incidents` with
    how long it hung, a new association is opened and the stream goes on with a fresh UID: one lost
    association must not void a run of a thousand images, and it is reported, not hidden.
    """
    ae = AE(ae_title=SENDER_AE)
    # Generous: on a loaded 2-core machine one reply can take seconds; a timeout would abort the
    # association and the run, which is worse than a slow number.
    ae.acse_timeout, ae.dimse_timeout, ae.network_timeout = 120, 120, 120
    for pair in sorted({(t.sop_class, t.transfer_syntax) for t in templates}):
        ae.add_requested_context(pair[0], pair[1])
    assoc = _associate(ae, port, called_ae)
    sent: list[Sent] = []
    try:
        index = 0
        while index < count:
            template = templates[index % len(templates)]
            uid = template.renew()
            started, clock = time.time(), time.perf_counter()
            try:
                # the node's own guard against pynetdicom 3.0's reactor race (see forward.py)
                status = send_c_store_guarded(assoc, template.path)
            except RuntimeError:  # the association had already gone
                status = Dataset()
            reply_ms = (time.perf_counter() - clock) * 1000.0
            if "Status" not in status:
                if incidents is None or len(incidents) >= 5:
                    raise RuntimeError(f"{called_ae}: association lost after {index} of {count}")
                incidents.append({"index": index, "hung_ms": reply_ms, "at": started})
                assoc = _associate(ae, port, called_ae)
                continue
            sent.append(Sent(uid, started, time.time(), reply_ms, int(status.Status)))
            index += 1
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()
    failed = [s for s in sent if s.status != 0]
    if failed:
        raise RuntimeError(f"{len(failed)} C-STOREs failed, first status 0x{failed[0].status:04X}")
    return sent


class Server:
    """A server subprocess; `port` is read from its output once it listens."""

    def __init__(self, name: str, argv: list[str], output: Path, port_pattern: str) -> None:
        self.name = name
        self.output = output
        self._log: IO[bytes] = open(output, "wb")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            argv, cwd=REPO_ROOT, stdout=self._log, stderr=subprocess.STDOUT, env=env
        )
        self.ps = psutil.Process(self.process.pid)
        self.port = self._wait_port(re.compile(port_pattern))

    def _wait_port(self, pattern: re.Pattern[str], timeout: float = 120.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.output.read_text(errors="replace")
            match = pattern.search(text)
            if match:
                return int(match.group(1))
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.process.returncode}:\n{text}")
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"{self.name} did not start listening:\n{self.output.read_text()}")

    def tree(self) -> list[psutil.Process]:
        """The server and its live child processes (the node's isolated decode worker)."""
        try:
            return [self.ps, *self.ps.children(recursive=True)]
        except psutil.Error:
            return [self.ps]

    def cpu_seconds(self) -> float:
        total = 0.0
        for process in self.tree():
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                total += times.user + times.system
        return total

    def peak_rss_mb(self) -> dict[str, float]:
        """VmHWM (the kernel's high-water mark of resident memory) of the server process and of
        each live child; `total` adds them (an upper bound: the peaks need not coincide)."""
        peaks = {}
        for process in self.tree():
            with contextlib.suppress(OSError, psutil.Error):
                status = Path(f"/proc/{process.pid}/status").read_text()
                hwm = next(ln for ln in status.splitlines() if ln.startswith("VmHWM:"))
                label = "main" if process.pid == self.ps.pid else f"child {process.name()}"
                peaks[label if label not in peaks else f"{label} {process.pid}"] = (
                    int(hwm.split()[1]) / 1024.0
                )
        return {**peaks, "total": sum(peaks.values())}

    def stop(self, timeout: float = 60.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def start_sink(workdir: Path) -> tuple[Server, Path]:
    record = workdir / "sink-arrivals.tsv"
    record.touch()
    server = Server(
        "sink",
        [sys.executable, "-m", "bench.sink", "--record", str(record)],
        workdir / "sink.out",
        r"port (\d+)",
    )
    return server, record


def start_relay(workdir: Path, sink_port: int, chunked: bool = False, max_pdu: int = 0) -> Server:
    argv = [sys.executable, "-m", "bench.relay", "--spool", str(workdir / "relay-spool"),
            "--sink-port", str(sink_port)]  # fmt: skip
    argv += ["--max-pdu", str(max_pdu)] + (["--chunked-receive"] if chunked else [])
    return Server("relay", argv, workdir / "relay.out", r"port (\d+)")


def node_config(
    workdir: Path, sink_port: int | None, max_pdu: int = 0, **classify: Any
) -> dict[str, Any]:
    destinations = []
    if sink_port is not None:
        destinations.append({"name": "sink", "type": "dicom", "ae_title": "BENCHSINK",
                             "host": "127.0.0.1", "port": sink_port,
                             "retry_delay_s": 0.5})  # fmt: skip
    return {
        "receive": {"ae_title": "DICOMNODE", "host": "127.0.0.1", "port": 0, "max_pdu": max_pdu},
        "spool": {"path": str(workdir / "node-spool")},
        "log": {"url": f"sqlite:///{workdir / 'node-log.sqlite3'}"},
        "classify": classify,
        "destinations": destinations,
        # Without a sink (the classifier benchmark) images are dropped on purpose; the node
        # refuses a config that would send them nowhere without saying so.
        "routing": {"default": {"action": "forward" if destinations else "discard"}},
    }


def start_node(workdir: Path, config: dict[str, Any]) -> Server:
    """The node exactly as deployed: `python -m dicomnode serve --config FILE`."""
    # its own folder, as /etc/dicomnode: the node watches the config's folder for reloads, and
    # the log database and server output beside it would wake that watcher on every write
    config_path = workdir / "config" / "node.yaml"
    config_path.parent.mkdir(exist_ok=True)
    config_path.write_text(yaml.safe_dump(config))
    argv = [sys.executable, "-m", "dicomnode", "serve", "--config", str(config_path)]
    return Server("node", argv, workdir / "node.out", r"listening on [^\s:]+:(\d+)")


def read_arrivals(record: Path) -> dict[str, float]:
    arrivals = {}
    for line in record.read_text().splitlines():
        uid, _, stamp = line.partition("\t")
        with contextlib.suppress(ValueError):
            arrivals[uid] = float(stamp)
    return arrivals


def wait_arrivals(record: Path, uids: list[str], timeout: float) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        arrivals = read_arrivals(record)
        missing = [u for u in uids if u not in arrivals]
        if not missing:
            return arrivals
        if time.monotonic() > deadline:
            raise TimeoutError(f"sink is missing {len(missing)} of {len(uids)} instances")
        time.sleep(0.1)


class RssSampler(threading.Thread):
    """Samples the RSS of a server and its children (summed) every `interval` seconds: the peak
    within one input set (VmHWM gives each process's lifetime peak)."""

    def __init__(self, server: Server, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.server, self.interval = server, interval
        self.peak = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            rss = 0
            for process in self.server.tree():
                with contextlib.suppress(psutil.Error):
                    rss += process.memory_info().rss
            self.peak = max(self.peak, rss)
            self._stop_event.wait(self.interval)

    def stop(self) -> float:
        self._stop_event.set()
        self.join()
        return self.peak / 2**20
