"""Baseline for the node: a plain store-and-forward relay (no parsing, no classification, no log).

  python -m bench.relay --spool DIR --sink-port PORT [--sink-ae AE]

A pynetdicom SCP accepts every storage SOP class in every transfer syntax (as the node does), writes
each received instance atomically (temp file, fsync, rename, directory fsync: the node's
`write_atomic`) and only then answers Success; one forwarder thread sends the files, in arrival
order, over one reused association (TCP_NODELAY on both sides, the file sent as stored), then moves
them to sent/. It prints `port N` once listening and stops on SIGTERM.

--chunked-receive: pynetdicom writes each incoming dataset straight to a temporary file in the
spool (STORE_RECV_CHUNKED_DATASET) and the relay fsyncs and renames it, instead of holding the whole
instance in memory (BytesIO growth + `encoded_dataset()` copies): the comparison for peak RSS.
"""

from __future__ import annotations

import argparse
import itertools
import os
import queue
import signal
import tempfile
import threading
import time
from pathlib import Path

from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, _config, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification

from dicomnode.receive import set_tcp_nodelay
from dicomnode.send import send_c_store_guarded
from dicomnode.spool import _fsync_dir, write_atomic

_config.STORE_SEND_CHUNKED_DATASET = True  # like the node's forwarder: send the file as stored

RELAY_AE = "BENCHRELAY"


class Relay:
    def __init__(
        self,
        spool: Path,
        sink_host: str,
        sink_port: int,
        sink_ae: str,
        chunked: bool = False,
        max_pdu: int = 0,
    ) -> None:
        self.incoming, self.sent, self.tmp = spool / "incoming", spool / "sent", spool / "tmp"
        for folder in (self.incoming, self.sent, self.tmp):
            folder.mkdir(parents=True, exist_ok=True)
        self.chunked = chunked
        if chunked:  # pynetdicom's temporary files on the spool's filesystem: rename, no copy
            _config.STORE_RECV_CHUNKED_DATASET = True
            tempfile.tempdir = str(self.tmp)
        self.sink = (sink_host, sink_port, sink_ae)
        self.queue: queue.Queue[Path | None] = queue.Queue()
        self.counter = itertools.count()
        self.scp = AE(ae_title=RELAY_AE)
        self.scp.maximum_pdu_size = max_pdu  # the node's receive.max_pdu (default 0: unlimited)
        self.scp.maximum_associations = 32
        self.scp.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
        for context in AllStoragePresentationContexts:
            self.scp.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        self.scu = AE(ae_title=RELAY_AE)
        # The node's defaults (receive and destination): 30 s ACSE, 60 s DIMSE and network.
        for ae in (self.scp, self.scu):
            ae.acse_timeout, ae.dimse_timeout, ae.network_timeout = 30, 60, 60
        self.forwarder = threading.Thread(target=self._forward, name="forward", daemon=True)

    def on_store(self, event: evt.Event) -> int:
        path = self.incoming / f"{next(self.counter):012d}.dcm"
        if self.chunked:
            received = event.dataset_path  # complete and flushed once the handler runs
            with open(received, "rb") as handle:
                os.fsync(handle.fileno())
            os.rename(received, path)
            _fsync_dir(self.incoming)
        else:
            write_atomic(path, event.encoded_dataset(include_meta=True), self.tmp)
        self.queue.put(path)
        return 0x0000

    def _forward(self) -> None:
        assoc, wanted = None, []
        while (path := self.queue.get()) is not None:
            meta = read_file_meta_info(path)
            pair = (str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))
            while True:  # until the sink has it: re-associate after an abort or timeout
                if pair not in wanted or assoc is None or not assoc.is_established:
                    wanted = [*wanted, pair] if pair not in wanted else wanted
                    if assoc is not None and assoc.is_established:
                        assoc.release()
                    self.scu.requested_contexts = []
                    for sop_class, ts in wanted:
                        self.scu.add_requested_context(sop_class, ts)
                    host, port, ae_title = self.sink
                    assoc = self.scu.associate(
                        host, port, ae_title=ae_title,
                        evt_handlers=[(evt.EVT_CONN_OPEN, set_tcp_nodelay)],
                    )  # fmt: skip
                if assoc.is_established:
                    status = send_c_store_guarded(assoc, path)  # the node's race guard
                    if status.get("Status") == 0x0000:
                        break
                    assoc.abort()
                time.sleep(0.5)
            os.replace(path, self.sent / path.name)
        if assoc is not None and assoc.is_established:
            assoc.release()

    def serve(self) -> None:
        self.forwarder.start()
        server = self.scp.start_server(
            ("127.0.0.1", 0),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self.on_store), (evt.EVT_CONN_OPEN, set_tcp_nodelay)],
        )
        stop = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
        print(f"port {server.server_address[1]}", flush=True)
        stop.wait()
        server.shutdown()
        self.queue.put(None)
        self.forwarder.join(30)
        self.scp.shutdown()
        self.scu.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spool", type=Path, required=True)
    parser.add_argument("--sink-port", type=int, required=True)
    parser.add_argument("--sink-host", default="127.0.0.1")
    parser.add_argument("--sink-ae", default="BENCHSINK")
    parser.add_argument("--chunked-receive", action="store_true")
    parser.add_argument("--max-pdu", type=int, default=0, help="as the node's receive.max_pdu")
    args = parser.parse_args()
    relay = Relay(args.spool, args.sink_host, args.sink_port, args.sink_ae, args.chunked_receive,
                  args.max_pdu)  # fmt: skip
    relay.serve()


if __name__ == "__main__":
    main()
