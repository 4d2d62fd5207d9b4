"""Hostile peers on the DICOM port (issue 18): malformed PDUs get PS3.8 answers at once, PDUs
longer than advertised are aborted, stalled and trickling connections cannot lock modalities
out, C-STOREs that contradict themselves are refused with nothing stored, and a seeded network
fuzz campaign leaves the node answering and every good image delivered."""

from __future__ import annotations

import contextlib
import os
import random
import socket
import struct
import threading
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import Verification

from dicomnode.repeat_limiter import RepeatFilter, RepeatLimiter
from dicomnode.spool import INCOMING, OUTGOING
from tests.node_helpers import NODE_AE, send_files
from tests.store_forward_helpers import echo, make_images

NO_CLASSIFY = {"classify": {"modalities": []}}
DX = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
HEADER = struct.Struct(">BBL")


def associate_rq(calling: bytes = b"PROBE", called: bytes = NODE_AE.encode(),
                 context_id: int = 1, abstract: str = Verification) -> bytes:
    """A real A-ASSOCIATE-RQ (pynetdicom's encoder), then AE titles and the context ID set
    byte by byte, as a broken or hostile peer would send them."""
    primitive = A_ASSOCIATE()
    primitive.calling_ae_title, primitive.called_ae_title = "PROBE", NODE_AE
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.presentation_context_definition_list = [build_context(abstract)]
    primitive.presentation_context_definition_list[0].context_id = 1
    maximum = MaximumLengthNotification()
    maximum.maximum_length_received = 16384
    primitive.user_information = [maximum]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    raw = bytearray(pdu.encode())
    raw[10:26] = called.ljust(16, b" ")[:16]
    raw[26:42] = calling.ljust(16, b" ")[:16]
    offset = 74  # variable items: the application context, then the presentation context
    while offset < len(raw):
        if raw[offset] == 0x20:
            raw[offset + 4] = context_id
        offset += 4 + struct.unpack_from(">H", raw, offset + 2)[0]
    return bytes(raw)


def answer_to(port: int, data: bytes, then_wait: float = 5.0) -> tuple[bytes, float]:
    """(what the node sent back before closing, seconds until it closed)."""
    with socket.create_connection(("127.0.0.1", port)) as peer:
        peer.settimeout(then_wait)
        started = time.monotonic()
        peer.sendall(data)
        got = b""
        while True:
            try:
                chunk = peer.recv(65536)
            except TimeoutError:
                pytest.fail(f"the node did not close within {then_wait} s (sent {got[:10]!r})")
            except ConnectionResetError:
                break
            if not chunk:
                break
            got += chunk
        return got, time.monotonic() - started


def pdu_kind(answer: bytes) -> tuple[int, ...]:
    """(type,) + the three reason bytes of an A-ASSOCIATE-RJ or A-ABORT."""
    return (answer[0], answer[7], answer[8], answer[9]) if len(answer) >= 10 else tuple(answer)


def established(port: int) -> socket.socket:
    """A raw socket with an accepted association (the node's A-ASSOCIATE-AC read)."""
    peer = socket.create_connection(("127.0.0.1", port))
    peer.settimeout(5)
    peer.sendall(associate_rq())
    header = peer.recv(6)
    assert header[0] == 0x02, header
    length = HEADER.unpack(header)[2]
    while length:
        length -= len(peer.recv(length))
    return peer


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_malformed_requests_get_ps38_answers_at_once_and_leave_a_trace(start_node, tmp_path):
    outbox = {"name": "outbox", "type": "folder", "path": str(tmp_path / "outbox")}
    node = start_node([outbox], **NO_CLASSIFY)
    reject, abort = 0x03, 0x07
    cases = {  # what a peer sends -> (PDU type, result or 0, source, reason) the node answers
        "16 spaces as calling AE": (associate_rq(calling=b" " * 16), (reject, 1, 1, 3)),
        "NUL-padded calling AE": (associate_rq(calling=b"CT1".ljust(16, b"\0")), (reject, 1, 1, 3)),
        "control character in calling AE": (associate_rq(calling=b"C\x07T1"), (reject, 1, 1, 3)),
        "backslash in called AE": (associate_rq(called=b"DICOM\\NODE"), (reject, 1, 1, 7)),
        "even presentation context ID": (associate_rq(context_id=2), (abort, 0, 2, 6)),
        "unknown PDU type 0x09": (HEADER.pack(0x09, 0, 4) + b"abcd", (abort, 0, 2, 1)),
        "100 MB A-ASSOCIATE-RQ claim": (HEADER.pack(0x01, 0, 100 << 20) + b"x" * 4096,
                                        (abort, 0, 2, 6)),
        "P-DATA-TF before association": (HEADER.pack(0x04, 0, 6) + b"\0\0\0\2\1\3",
                                         (abort, 0, 2, 2)),
    }
    for name, (request, expected) in cases.items():
        answer, seconds = answer_to(node.port, request)
        assert pdu_kind(answer) == expected, (name, answer[:12].hex())
        assert seconds < 1.0, (name, seconds)
    assert echo(node.port)  # and the node still answers
    cut = node.metrics.connections_cut
    assert cut.labels("bad_ae_title")._value.get() == 4
    assert cut.labels("bad_context_id")._value.get() == 1
    assert cut.labels("unknown_pdu")._value.get() == 1
    assert cut.labels("oversize")._value.get() == 1
    assert cut.labels("unexpected_pdu")._value.get() == 1
    wait_for(lambda: len(node.log_store.associations()) >= 9, 10, "associations not logged")
    rows = node.log_store.associations()
    rejected = [r.reason for r in rows if r.outcome == "rejected"]
    assert len(rejected) == 4 and all("A-ASSOCIATE-RJ" in r for r in rejected), rejected
    assert any("calling AE title b'CT1\\x00" in r for r in rejected), rejected
    assert any("unknown PDU type 0x09" in (r.reason or "") for r in rows)


def test_a_pdu_longer_than_advertised_is_aborted_within_a_second(start_node, tmp_path):
    outbox = {"name": "outbox", "type": "folder", "path": str(tmp_path / "outbox")}
    node = start_node([outbox], **NO_CLASSIFY)
    with established(node.port) as peer:
        started = time.monotonic()
        peer.sendall(HEADER.pack(0x04, 0, 100 << 20) + b"\0" * 65536)  # 100 MB claimed
        answer = peer.recv(10)
        assert pdu_kind(answer) == (0x07, 0, 2, 6), answer.hex()
        assert peer.recv(10) == b""
        seconds = time.monotonic() - started
    assert seconds < 1.0, seconds
    print(f"100 MB P-DATA-TF claim aborted in {seconds * 1000:.0f} ms")
    wait_for(lambda: node.log_store.associations(outcome="aborted"), 10, "abort not logged")
    rows = node.log_store.associations(outcome="aborted")
    assert len(rows) == 1, [tuple(r) for r in rows]
    (row,) = rows
    assert row.calling_ae == "PROBE"
    assert "cut off by the node: PDU type 0x04 of 104857600 bytes, over the 65536" in row.reason
    assert echo(node.port)


@contextlib.contextmanager
def stalled_peers(port: int, count: int = 40) -> Iterator[list[socket.socket]]:
    """`count` connections that each send an A-ASSOCIATE-RQ header promising 1000 bytes; then
    every other one goes silent and the rest trickle a byte a second. Closed on exit."""
    peers = []
    for _ in range(count):
        peer = socket.create_connection(("127.0.0.1", port))
        peer.sendall(HEADER.pack(0x01, 0, 1000))
        peers.append(peer)
    stop = threading.Event()

    def trickle() -> None:
        while not stop.wait(1.0):
            for peer in peers[::2]:
                with contextlib.suppress(OSError):
                    peer.send(b"\0")

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        yield peers
    finally:
        stop.set()
        thread.join()
        for peer in peers:
            peer.close()


def test_stalled_and_trickling_peers_cannot_lock_modalities_out(start_node, tmp_path):
    outbox = {"name": "outbox", "type": "folder", "path": str(tmp_path / "outbox")}
    node = start_node([outbox], receive={"read_timeout_s": 3}, **NO_CLASSIFY)
    assert node.config.receive.max_associations == 32
    with stalled_peers(node.port) as peers:
        started = time.monotonic()
        assert echo(node.port), "C-ECHO refused while 40 peers stall"
        image = make_images(tmp_path / "images", 1)[0]
        assert send_files(node.port, image) == [0x0000]
        answered = time.monotonic() - started
        assert answered < 10, answered
        for peer in peers:
            peer.settimeout(10)
            with contextlib.suppress(ConnectionResetError):
                assert peer.recv(16) == b""
        closed = time.monotonic() - started
    print(f"C-ECHO and C-STORE answered {answered:.1f} s into 40 stalled peers; all 40 "
          f"closed after {closed:.1f} s (deadline 3 s)")
    assert closed < 3 + 2
    assert node.metrics.connections_cut.labels("deadline")._value.get() == 40
    wait_for(lambda: len(list((tmp_path / "outbox").rglob("*.dcm"))) == 1, 30, "not delivered")


def raw_c_store(assoc, dataset, context_id: int, sop_class: str, sop_instance: str) -> int:
    """A C-STORE whose command names the given UIDs, whatever the dataset holds."""
    request = C_STORE()
    request.MessageID, request.Priority = 7, 2
    request.AffectedSOPClassUID, request.AffectedSOPInstanceUID = sop_class, sop_instance
    request.DataSet = BytesIO(encode(dataset, False, True))
    assoc._reactor_checkpoint.clear()  # pause the reactor, as pynetdicom's own send_c_*() do
    while not assoc._is_paused:
        time.sleep(0.0001)
    try:
        assoc.dimse.send_msg(request, context_id)
        _context, response = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    return int(response.Status)


def test_c_stores_that_contradict_themselves_are_refused_and_nothing_is_stored(start_node,
                                                                              tmp_path):
    outbox = {"name": "outbox", "type": "folder", "path": str(tmp_path / "outbox")}
    node = start_node([outbox], **NO_CLASSIFY)
    image = make_images(tmp_path / "images", 1)[0]
    dataset = dcmread(image)
    sop_class, sop_instance = str(dataset.SOPClassUID), str(dataset.SOPInstanceUID)
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(sop_class, ["1.2.840.10008.1.2.1"])
    ae.add_requested_context(DX, ["1.2.840.10008.1.2.1"])
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=NODE_AE)
    assert assoc.is_established
    try:
        contexts = {str(c.abstract_syntax): c.context_id for c in assoc.accepted_contexts}
        store_context, echo_context = contexts[sop_class], contexts[Verification]
        assert sop_class != DX
        statuses = {
            "instance UID differs": raw_c_store(assoc, dataset, store_context, sop_class,
                                                generate_uid()),
            "class UID differs": raw_c_store(assoc, dataset, contexts[DX], DX, sop_instance),
            "on another class's context": raw_c_store(assoc, dataset, store_context, DX,
                                                      sop_instance),
            "on the Verification context": raw_c_store(assoc, dataset, echo_context,
                                                       sop_class, sop_instance),
        }
        assert statuses == {"instance UID differs": 0xA900, "class UID differs": 0xA900,
                            "on another class's context": 0x0122,
                            "on the Verification context": 0x0122}
        stored = [p for folder in (INCOMING, OUTGOING)
                  for p in (node.spool.root / folder).rglob("*.dcm")]
        assert stored == []
        assert raw_c_store(assoc, dataset, store_context, sop_class, sop_instance) == 0x0000
    finally:
        assoc.release()
        ae.shutdown()
    wait_for(lambda: len(list((tmp_path / "outbox").rglob("*.dcm"))) == 1, 30, "not delivered")
    refused = node.metrics.refused
    assert refused.labels("uid_mismatch")._value.get() == 2
    assert refused.labels("wrong_context")._value.get() == 2


def random_pdu(rng: random.Random) -> bytes:
    """One malformed or hostile PDU: every type, truncated items, huge lengths, random bytes."""
    kind = rng.randrange(6)
    if kind == 0:  # random bytes
        return rng.randbytes(rng.randrange(1, 300))
    if kind == 1:  # any type, a length that lies (short, long, huge)
        length = rng.choice([0, 1, 5, 100, 70000, 1 << 31, (1 << 32) - 1])
        return HEADER.pack(rng.randrange(256), 0, length) + rng.randbytes(rng.randrange(0, 64))
    request = bytearray(associate_rq())
    if kind == 2:  # an A-ASSOCIATE-RQ cut short, its length still claiming the whole
        return bytes(request[: rng.randrange(6, len(request))])
    if kind == 3:  # bytes flipped anywhere in a valid request
        for _ in range(rng.randrange(1, 8)):
            request[rng.randrange(len(request))] = rng.randrange(256)
        return bytes(request)
    if kind == 4:  # an item length that runs past the PDU
        struct.pack_into(">H", request, 76, rng.choice([0, 1, 0xFFFF]))
        return bytes(request)
    # a valid request, then a P-DATA-TF with broken PDV items
    pdv = struct.pack(">LBB", rng.choice([0, 1, 2, 1000, 1 << 30]), rng.randrange(256), 3)
    return bytes(request) + HEADER.pack(0x04, 0, len(pdv) + 4) + pdv + rng.randbytes(4)


def test_bounded_network_fuzz_campaign_keeps_the_node_up_and_loses_nothing(start_node,
                                                                           tmp_path):
    outbox = {"name": "outbox", "type": "folder", "path": str(tmp_path / "outbox")}
    node = start_node([outbox], receive={"read_timeout_s": 1}, **NO_CLASSIFY)
    images = make_images(tmp_path / "images", 6)
    rng = random.Random(18)
    deadline = time.monotonic() + 20  # time-boxed: seeded, so the same PDUs every run
    sent = rounds = 0
    while time.monotonic() < deadline:
        for _ in range(25):
            with socket.create_connection(("127.0.0.1", node.port)) as peer:
                peer.settimeout(3)
                try:
                    peer.sendall(random_pdu(rng))
                    peer.shutdown(socket.SHUT_WR)
                    while peer.recv(65536):
                        pass
                except OSError:
                    pass  # the node closed on us: that is one of the right answers
        rounds += 1
        assert echo(node.port), f"no C-ECHO answer after fuzz round {rounds}"
        if sent < len(images):
            assert send_files(node.port, images[sent]) == [0x0000]
            sent += 1
    assert rounds >= 3, rounds
    wait_for(lambda: len(list((tmp_path / "outbox").rglob("*.dcm"))) == sent, 30,
             "a good image sent during the campaign was not delivered")
    print(f"{rounds * 25} hostile connections in {rounds} rounds; {sent} images delivered")


def test_repeated_library_warnings_are_summarised_not_written_one_by_one():
    import logging

    now = [0.0]
    records = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    handler = Keep()
    handler.addFilter(RepeatFilter(limiter=RepeatLimiter(burst=5, window_s=60,
                                                         clock=lambda: now[0])))
    logger = logging.getLogger("pynetdicom.presentation.test_flood")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        for index in range(1000):  # one association request with 1,000 fake transfer syntaxes
            logger.warning(f"The Transfer Syntax Name '1.2.3.x{index}' is non-conformant")
        now[0] = 61.0
        logger.warning("The Transfer Syntax Name '9.9' is non-conformant")
    finally:
        logger.removeHandler(handler)
    assert len(records) == 6
    assert records[-1].endswith("(995 more like it held back in the 60 s before)")


def test_a_request_with_a_thousand_fake_syntaxes_writes_a_few_lines(tmp_path):
    from tests.node_helpers import free_port
    from tests.store_forward_helpers import NodeProcess, write_config

    port = free_port()
    config = write_config(tmp_path / "node.yaml", tmp_path, port,
                          [{"name": "outbox", "type": "folder", "path": str(tmp_path / "out")}])
    node = NodeProcess(config, port, tmp_path).start()
    try:
        before = len(node.log_text().splitlines())
        ae = AE(ae_title="FLOOD")
        ae.requested_contexts = [build_context(
            Verification, [f"1.2.3.x{i}" if i % 2 else f"01.02.{i}.." for i in range(1000)])]
        assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AE)
        assert not assoc.is_established  # no syntax it could accept
        ae.shutdown()
        assert echo(port)
    finally:
        node.stop()
    lines = node.log_text().splitlines()[before:]
    print(f"{len(lines)} service log lines for 1,000 fake transfer syntaxes")
    assert len(lines) < 100, "\n".join(lines[:120])  # 2,000+ lines without the limit



def large_cr(source: Path, target: Path, rows: int, columns: int) -> Path:
    """The small CR with a rows x columns 16-bit random image: a big instance, real encoding."""
    import numpy as np

    dataset = dcmread(source)
    dataset.Rows, dataset.Columns = rows, columns
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 16, 12, 11
    dataset.PixelRepresentation, dataset.SamplesPerPixel = 0, 1
    pixels = np.random.default_rng(18).integers(0, 4096, (rows, columns), dtype=np.uint16)
    dataset.PixelData = pixels.tobytes()
    dataset["PixelData"].VR = "OW"
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    dataset.save_as(target, enforce_file_format=True)
    return target


def test_instances_stream_to_the_spool_and_one_over_max_instance_mb_is_refused(start_node,
                                                                             tmp_path):
    from pynetdicom.dsutils import split_dataset

    outbox = tmp_path / "outbox"
    node = start_node([{"name": "outbox", "type": "folder", "path": str(outbox)}],
                      receive={"max_instance_mb": 16}, **NO_CLASSIFY)
    small = make_images(tmp_path / "images", 1)[0]
    fits = large_cr(small, tmp_path / "fits.dcm", 2000, 3000)  # 12 MB
    too_large = large_cr(small, tmp_path / "too-large.dcm", 3000, 3000)  # 18 MB
    assert send_files(node.port, fits, too_large) == [0x0000, 0xA700]
    wait_for(lambda: len(list(outbox.rglob("*.dcm"))) == 1, 30, "not delivered")
    (delivered,) = outbox.rglob("*.dcm")
    _meta, sent_at = split_dataset(fits)
    _meta, delivered_at = split_dataset(delivered)
    # the dataset exactly as sent, copied behind the node's own file meta
    assert delivered.read_bytes()[delivered_at:] == fits.read_bytes()[sent_at:]
    assert node.metrics.refused.labels("too_large")._value.get() == 1
    assert list((node.spool.root / "tmp").iterdir()) == []  # pynetdicom's files cleaned up


def test_an_association_waits_for_work_and_answers_at_once_when_spoken_to(start_node, tmp_path):
    from dicomnode.reactor_wait import WaitingDUL

    outbox = {"name": "outbox", "type": "folder", "path": str(tmp_path / "outbox")}
    node = start_node([outbox], **NO_CLASSIFY)
    ae = AE(ae_title="IDLER")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=NODE_AE)
    assert assoc.is_established
    try:
        (accepted,) = [a for a in node.receiver.ae.active_associations if a.is_acceptor]
        assert isinstance(accepted.dul, WaitingDUL)  # no 1 ms polls, busy or idle
        answered = []
        for pause in (0.0, 0.3, 1.2):  # at once, then after short and long quiet spells
            time.sleep(pause)
            started = time.monotonic()
            assert assoc.send_c_echo().Status == 0x0000
            answered.append(time.monotonic() - started)
        # the DUL waits on the socket and on a wake-up for what it must send, the association
        # thread on the DUL: each wakes when its work arrives, not at the end of its longest
        # wait (MAX_WAIT_S for the DUL, 1 s for the association thread)
        print("C-ECHO answered in " + ", ".join(f"{a * 1000:.1f} ms" for a in answered))
        assert max(answered) < 0.08, answered
    finally:
        assoc.release()
        ae.shutdown()
    wait_for(lambda: not node.receiver.ae.active_associations, 5, "release not seen at once")
    # each association's wake-up socket pair is closed once it has ended: descriptors do not
    # pile up over thousands of short connections (the fuzz campaign ran out of them)
    open_before = len(os.listdir("/proc/self/fd"))
    for _ in range(30):
        assert echo(node.port)
    open_after = len(os.listdir("/proc/self/fd"))
    assert open_after <= open_before + 4, (open_before, open_after)


def test_a_transfer_is_aborted_when_the_spool_runs_short_midway_and_nothing_is_kept(start_node,
                                                                                  tmp_path):
    outbox = tmp_path / "outbox"
    node = start_node([{"name": "outbox", "type": "folder", "path": str(outbox)}],
                      disk={"min_free_mb": 100}, **NO_CLASSIFY)
    free = iter([10**12] * 2 + [0] * 1000)  # room when the transfer starts, then the disk fills
    node.receiver.disk_guard.free_bytes = lambda: next(free)
    small = make_images(tmp_path / "images", 1)[0]
    big = large_cr(small, tmp_path / "big.dcm", 4000, 5000)  # 40 MB: checked every 16 MiB
    assert send_files(node.port, big) == [None]  # aborted: no status
    assert node.metrics.connections_cut.labels("no_room")._value.get() == 1
    wait_for(lambda: node.log_store.associations(outcome="aborted"), 10, "abort not logged")
    (row,) = node.log_store.associations(outcome="aborted")
    assert "transfer stopped: disk full: 0 MB free" in row.reason, row.reason
    node.receiver.disk_guard.free_bytes = lambda: 10**12  # space is back
    assert send_files(node.port, small) == [0x0000]
    wait_for(lambda: len(list(outbox.rglob("*.dcm"))) == 1, 30, "not delivered")
    received = [p.name for p in node.spool.dir(INCOMING).iterdir()]
    assert received == [], received  # nothing of the aborted one was kept


@contextlib.contextmanager
def _accepted_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(client, the server's accepted socket) on loopback; both closed afterwards."""
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    accepted, _ = listener.accept()
    try:
        yield client, accepted
    finally:
        for sock in (client, accepted, listener):
            sock.close()


def test_a_connection_its_peer_already_closed_is_told_apart_without_blocking():
    from dicomnode.wire_guard import closed_by_peer

    with _accepted_pair() as (client, accepted):
        started = time.monotonic()
        assert not closed_by_peer(accepted)  # open and quiet: a modality about to associate
        assert time.monotonic() - started < 0.5
        client.sendall(b"\x01\x00")
        time.sleep(0.05)
        assert not closed_by_peer(accepted)  # its request has begun
        assert accepted.recv(2) == b"\x01\x00"  # peeked, not consumed
    with _accepted_pair() as (client, accepted):
        client.close()
        time.sleep(0.05)
        assert closed_by_peer(accepted)  # connect-and-close: a scanner or a health check
    with _accepted_pair() as (client, accepted):
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()  # RST
        time.sleep(0.05)
        assert closed_by_peer(accepted)


def test_connect_and_close_cycles_are_dropped_in_the_accept_loop_and_counted(start_node,
                                                                              tmp_path):
    outbox = {"name": "outbox", "type": "folder", "path": str(tmp_path / "outbox")}
    node = start_node([outbox], **NO_CLASSIFY)
    for _ in range(200):
        with socket.create_connection(("127.0.0.1", node.port)):
            pass
    assert echo(node.port)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        dropped = node.metrics.connections_cut.labels(reason="closed_before_request")._value.get()
        if dropped >= 1:
            break
        time.sleep(0.1)
    assert dropped >= 1, "no connect-and-close was dropped before an association was made"
    print(f"{dropped:.0f} of 200 connect-and-close cycles dropped in the accept loop")
    wait_for(lambda: not [a for a in node.receiver.ae.active_associations
                          if not a.is_established], 10, "the cycles that got through to end")
