"""Baseline for the node: a plain store-and-forward relay (no parsing, no classification, no log).

  python -m bench.relay --spool DIR --sink-port PORT [--sink-ae AE]

A pynetdicom SCP accepts every storage SOP class in every transfer syntax (as the node does), writes
each received instance atomically (temp file, fsync, rename, directory fsync: the node's
`write_atomic`) and only then answers Success; one forwarder thread sends the files, in arrival
order, over one reused association (TCP_NODELAY on both sides, the file sent as stored), then moves
them to sent/. It prints `port N` once listening and stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import itertools
import os
import queue
import signal
import threading
from pathlib import Path

from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, _config, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification

from dicomnode.receive import set_tcp_nodelay
from dicomnode.spool import write_atomic

_config.STORE_SEND_CHUNKED_DATASET = True  # like the node's forwarder: send the file as stored

RELAY_AE = "BENCHRELAY"


class Relay:
    def __init__(self, spool: Path, sink_host: str, sink_port: int, sink_ae: str) -> None:
        self.incoming, self.sent, self.tmp = spool / "incoming", spool / "sent", spool / "tmp"
        for folder in (self.incoming, self.sent, self.tmp):
            folder.mkdir(parents=True, exist_ok=True)
        self.sink = (sink_host, sink_port, sink_ae)
        self.queue: queue.Queue[Path | None] = queue.Queue()
        self.counter = itertools.count()
        self.scp = AE(ae_title=RELAY_AE)
        self.scp.maximum_pdu_size = 0  # as the node's default max_pdu: 0
        self.scp.maximum_associations = 32
        self.scp.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
        for context in AllStoragePresentationContexts:
            self.scp.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        self.scu = AE(ae_title=RELAY_AE)
        self.forwarder = threading.Thread(target=self._forward, name="forward", daemon=True)

    def on_store(self, event: evt.Event) -> int:
        path = self.incoming / f"{next(self.counter):012d}.dcm"
        write_atomic(path, event.encoded_dataset(include_meta=True), self.tmp)
        self.queue.put(path)
        return 0x0000

    def _forward(self) -> None:
        assoc, wanted = None, []
        while (path := self.queue.get()) is not None:
            meta = read_file_meta_info(path)
            pair = (str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))
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
            assoc.send_c_store(path)
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
    args = parser.parse_args()
    Relay(args.spool, args.sink_host, args.sink_port, args.sink_ae).serve()


if __name__ == "__main__":
    main()
