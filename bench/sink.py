"""Benchmark sink: a pynetdicom storage SCP that records, per instance, when it arrived.

Run as its own process so it never competes with the sender or the system under test for the GIL:
  python -m bench.sink --record FILE
It prints `port N` on stdout once listening, appends `<SOP Instance UID>\t<unix time>` to FILE for
every C-STORE (flushed per line, so the harness can count arrivals), and stops on SIGTERM.
Nothing is decoded or written to disk: the sink must never be the bottleneck.
"""

from __future__ import annotations

import argparse
import signal
import threading
import time

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification

from dicomnode.receive import set_tcp_nodelay

SINK_AE = "BENCHSINK"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", required=True)
    args = parser.parse_args()
    ae = AE(ae_title=SINK_AE)
    # What a PACS typically offers (DCMTK and pynetdicom default to ~16 KiB): senders stream
    # files in PDUs of this size rather than holding a whole instance in one PDU.
    ae.maximum_pdu_size = 16382
    ae.maximum_associations = 16
    ae.add_supported_context(Verification)
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    record = open(args.record, "a", buffering=1)  # noqa: SIM115 - closed at exit below
    lock = threading.Lock()

    def on_store(event: evt.Event) -> int:
        arrived = time.time()
        with lock:
            record.write(f"{event.request.AffectedSOPInstanceUID}\t{arrived:.6f}\n")
        return 0x0000

    server = ae.start_server(
        ("127.0.0.1", 0),
        block=False,
        evt_handlers=[(evt.EVT_C_STORE, on_store), (evt.EVT_CONN_OPEN, set_tcp_nodelay)],
    )
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    print(f"port {server.server_address[1]}", flush=True)
    stop.wait()
    server.shutdown()
    ae.shutdown()
    record.close()


if __name__ == "__main__":
    main()
