"""Nothing acknowledged into nowhere, no reload that strands queued images, one node per spool,
and a line per image in the service log."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from dicomnode.config import ConfigError, NodeConfig
from dicomnode.config_file import load_config
from dicomnode.node import Node
from dicomnode.spool import OUTGOING, TMP, Spool, SpoolInUse
from dicomnode.spool_retention import MIB, purge_pass, sent_copies
from dicomnode.watch import ConfigWatcher, apply_config
from tests.node_helpers import free_port, node_config, send_files
from tests.shared_data import SHARED
from tests.store_forward_helpers import make_images

pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared data not at {SHARED}")

NO_CLASSIFY = {"classify": {"modalities": []}}


def test_a_config_without_destinations_is_refused_at_start(tmp_path):
    port = free_port()
    config = tmp_path / "min.yaml"
    config.write_text(f"receive:\n  port: {port}\nspool:\n  path: {tmp_path / 'spool'}\n")
    result = subprocess.run([sys.executable, "-m", "dicomnode", "serve", "-c", str(config)],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 1
    assert "refusing to start" in result.stderr and "sent nowhere" in result.stderr
    assert "no destinations are configured" in result.stderr
    assert "action: discard" in result.stderr  # the fix, when dropping is what they want
    assert "listening" not in result.stderr
    with pytest.raises(ConfigError, match="sent nowhere"):  # the same check in-process
        Node(node_config(tmp_path, [], routing={"default": {"destinations": []}})).start()


def test_an_empty_default_route_is_refused_but_an_explicit_discard_runs(start_node, tmp_path,
                                                                        caplog):
    outbox = {"name": "outbox", "type": "folder", "path": str(tmp_path / "outbox")}
    with pytest.raises(ConfigError, match=r"routing\.default\.destinations is empty"):
        Node(node_config(tmp_path, [outbox], routing={"default": {"destinations": []}})).start()
    node = start_node([], routing={"default": {"action": "discard"}}, **NO_CLASSIFY)
    image = make_images(tmp_path / "images", 1)[0]
    with caplog.at_level(logging.INFO, logger="dicomnode.pipeline"):
        assert send_files(node.port, image) == [0]
        assert node.wait_idle(30)
    (line,) = [r for r in caplog.records if r.name == "dicomnode.pipeline"]
    assert "discarded by (default)" in line.getMessage() and line.levelno == logging.INFO
    assert_discard_is_visible(node, tmp_path, rule="(default)")


def assert_discard_is_visible(node: Node, tmp_path: Path, rule: str) -> None:
    """A discarded instance: counted, in sent/_discarded/, flagged in the log, and DEGRADED."""
    from typer.testing import CliRunner

    from dicomnode.cli import app
    from dicomnode.health import check_health
    from dicomnode.spool import DISCARDED, SENT

    assert node.metrics.discarded.labels(rule)._value.get() == 1
    assert len(list(node.spool.dir(SENT, DISCARDED).glob("*.dcm"))) == 1
    flagged = CliRunner().invoke(app, ["log", "query", "--db", node.config.log.url,
                                       "--delivery", "discarded", "--format", "jsonl"])
    assert flagged.exit_code == 0, flagged.output
    (row,) = [json.loads(x) for x in flagged.output.splitlines()]
    assert row["delivery"] == "discarded" and row["routing"]["rules"][-1] == rule
    none = CliRunner().invoke(app, ["log", "query", "--db", node.config.log.url,
                                    "--delivery", "none", "--format", "jsonl"])
    assert none.output.strip() == ""  # no longer "none": it is not waiting for anything
    data = node.config.model_dump(mode="json")
    data["receive"]["port"] = node.port
    report = check_health(NodeConfig.model_validate(data), timeout=3)
    assert report.ok and report.state == "DEGRADED", report.line
    assert report.line.startswith("DEGRADED discarded 1 in the last 60 min")
    later = check_health(NodeConfig.model_validate(data), timeout=3, discarded_window_s=0.0)
    assert later.state == "OK", later.line  # outside the window: a fact no longer shown


def test_a_discard_rule_is_counted_flagged_and_shown_in_health(start_node, tmp_path):
    outbox = {"name": "outbox", "type": "folder", "path": str(tmp_path / "outbox")}
    node = start_node([outbox], routing={"rules": [
        {"name": "drop-room-9", "when": {"calling_ae": "ROOM9"}, "action": "discard"}],
        "default": {"destinations": ["outbox"]}}, **NO_CLASSIFY)
    images = make_images(tmp_path / "images", 2)
    assert send_files(node.port, images[0], calling_ae="ROOM9") == [0]
    assert send_files(node.port, images[1]) == [0]
    assert node.wait_idle(30)
    assert len(list((tmp_path / "outbox").rglob("*.dcm"))) == 1
    assert_discard_is_visible(node, tmp_path, rule="drop-room-9")


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_reloads_that_would_strand_images_are_refused_and_the_old_config_kept(start_node,
                                                                             tmp_path):
    outbox = {"name": "outbox", "type": "folder", "path": str(tmp_path / "outbox")}
    down = {"name": "down", "type": "dicom", "ae_title": "NOBODY", "host": "127.0.0.1",
            "port": free_port(), "retry": {"initial_s": 60}}  # fmt: skip
    config = node_config(tmp_path, [outbox, down], **NO_CLASSIFY)
    node = start_node([], config=config)
    image = make_images(tmp_path / "images", 1)[0]
    assert send_files(node.port, image) == [0]
    deadline = time.monotonic() + 30
    while not node.spool.names(OUTGOING, "down"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    path = tmp_path / "node.yaml"
    watcher = ConfigWatcher(path, lambda: load_config(path), lambda new: apply_config(node, new))
    base = config.model_dump(mode="json")

    # A save cut short after the receive section: valid YAML, no destinations.
    path.write_text(yaml.safe_dump({"receive": base["receive"]}))
    assert watcher.reload() is False
    assert "sent nowhere" in watcher.last_error
    # Dropping the destination that still has an image queued.
    write_yaml(path, {**base, "destinations": [outbox]})
    assert watcher.reload() is False
    assert "'down'" in watcher.last_error and "1 image(s) wait in outgoing/down/" in \
        watcher.last_error
    assert [d.name for d in node.config.destinations] == ["outbox", "down"]
    assert set(node.forwarders) == {"outbox", "down"}
    # Adding one, then dropping it while nothing is queued for it, is fine.
    write_yaml(path, {**base, "destinations": [outbox, down, {**outbox, "name": "extra"}]})
    assert watcher.reload() is True
    write_yaml(path, {**base, "destinations": [outbox, down]})
    assert watcher.reload() is True and set(node.forwarders) == {"outbox", "down"}


def test_a_second_node_on_one_spool_is_refused_naming_the_spool_and_pid(start_node, tmp_path):
    outbox = {"name": "outbox", "type": "folder", "path": str(tmp_path / "outbox")}
    first = start_node([outbox], **NO_CLASSIFY)
    marker = first.spool.dir(TMP) / "in-flight.part"  # a half-received file of the first node
    marker.write_bytes(b"x")
    second = Node(node_config(tmp_path, [outbox], **NO_CLASSIFY))  # same spool, another port
    with pytest.raises(SpoolInUse) as refused:
        second.start()
    message = str(refused.value)
    assert str(tmp_path / "spool") in message and f"PID {os.getpid()}" in message
    assert marker.exists()  # the second node touched nothing of the first's
    assert send_files(first.port, make_images(tmp_path / "images", 1)[0]) == [0]
    assert first.wait_idle(30)
    first.stop()
    Node(node_config(tmp_path, [outbox], **NO_CLASSIFY)).start().stop()  # free again


def sent_names(spool) -> list[str]:
    return sorted(c.name for c in sent_copies(spool))


def test_sent_copies_are_purged_by_age_size_and_disk_pressure_never_past_log_retention(tmp_path):
    spool = Spool(tmp_path / "spool")
    spool.ensure(["pacs"])
    images = make_images(tmp_path / "images", 6)
    now = time.time()
    for index, image in enumerate(images):  # one a day, oldest first: 5, 4, ... 0 days old
        spool.dispatch(f"{index:04d}", image, ["pacs"], {"name": f"{index:04d}"})
        spool.mark_sent("pacs", f"{index:04d}", {"name": f"{index:04d}"})
        dcm = spool.dir("sent", "pacs") / f"{index:04d}.dcm"
        os.utime(dcm, (now - (5 - index) * 86400 - 60,) * 2)
    size = (spool.dir("sent", "pacs") / "0000.dcm").stat().st_size

    def config(**spool_settings):
        log = spool_settings.pop("log", {})
        return NodeConfig.model_validate({"spool": {"path": str(spool.root), **spool_settings},
                                          "log": log, "disk": {"min_free_mb": 1}})

    report = purge_pass(spool, config(sent_retention_days=3.5), now=now)
    assert report.by_reason == {"age": 2} and sent_names(spool) == ["0002", "0003", "0004",
                                                                      "0005"]  # fmt: skip
    report = purge_pass(spool, config(sent_retention_days=30, log={"retention_days": 2.5}),
                        now=now)  # fmt: skip
    assert report.by_reason == {"age": 1}  # the log's retention is the shorter: it wins
    report = purge_pass(spool, config(sent_max_mb=2.5 * size / MIB), now=now)
    assert report.by_reason == {"size": 1} and sent_names(spool) == ["0004", "0005"]
    free = iter([0, 10 * MIB])  # under twice the 1 MB floor once, then fine
    oldest = (spool.dir("sent", "pacs") / "0004.dcm").stat().st_size  # UIDs vary in length
    report = purge_pass(spool, config(), now=now, free_bytes=lambda: next(free))
    assert report.by_reason == {"disk": 1} and sent_names(spool) == ["0005"]
    assert report.bytes_freed == oldest


def test_files_of_aborted_transfers_left_in_tmp_are_removed_once_stale(tmp_path):
    from dicomnode.spool_retention import STALE_TMP_S

    spool = Spool(tmp_path / "spool")
    spool.ensure(["pacs"])
    now = time.time()
    abandoned = spool.dir(TMP) / "tmpabandoned.dcm"  # what pynetdicom leaves of an aborted C-STORE
    abandoned.write_bytes(b"\0" * 1000)
    os.utime(abandoned, (now - STALE_TMP_S - 1,) * 2)
    arriving = spool.dir(TMP) / "tmparriving.dcm"  # a transfer in progress
    arriving.write_bytes(b"\0" * 10)
    report = purge_pass(spool, NodeConfig.model_validate({"spool": {"path": str(spool.root)}}),
                        now=now)  # fmt: skip
    assert report.by_reason == {"stale_tmp": 1} and report.bytes_freed == 1000
    assert not abandoned.exists() and arriving.exists()


def test_the_node_purges_sent_copies_logs_and_counts_it(start_node, tmp_path, caplog):
    outbox = {"name": "outbox", "type": "folder", "path": str(tmp_path / "outbox")}
    with caplog.at_level(logging.INFO, logger="dicomnode.spool_retention"):
        node = start_node([outbox], spool={"sent_retention_days": 1e-5,  # under a second
                                           "retention_interval_s": 0.2}, **NO_CLASSIFY)
        assert send_files(node.port, *make_images(tmp_path / "images", 3)) == [0, 0, 0]
        assert node.wait_idle(30)
        deadline = time.monotonic() + 30
        while sent_copies(node.spool):
            assert time.monotonic() < deadline, "sent/ was never purged"
            time.sleep(0.1)
    assert len(list((tmp_path / "outbox").glob("*.dcm"))) == 3  # delivered copies stay
    purged = node.metrics.spool_purged.labels("age")._value.get()
    assert purged == 3
    assert any("purged" in r.getMessage() and "older than the retention" in r.getMessage()
               for r in caplog.records)


@pytest.mark.parametrize("clash", ["receive", "web"])
def test_a_port_clash_names_the_listener_and_nothing_claims_to_listen(tmp_path, clash):
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    busy = taken.getsockname()[1]
    ports = {"receive": free_port(), "web": free_port(), clash: busy}
    config = write_yaml(tmp_path / "node.yaml", {
        "receive": {"port": ports["receive"]}, "spool": {"path": str(tmp_path / "spool")},
        "log": {"url": f"sqlite:///{tmp_path / 'log.sqlite3'}"},
        "classify": {"modalities": []}, "web": {"enabled": True, "port": ports["web"]},
        "destinations": [{"name": "outbox", "type": "folder", "path": str(tmp_path / "out")}],
    })  # fmt: skip
    try:
        result = subprocess.run([sys.executable, "-m", "dicomnode", "serve", "-c", str(config)],
                                capture_output=True, text=True, timeout=120)  # fmt: skip
    finally:
        taken.close()
    assert result.returncode == 1
    listener = {"receive": "DICOM listener (receive.host/port)",
                "web": "web view listener (web.host/port)"}[clash]
    assert f"{listener} cannot bind 127.0.0.1:{busy}: Address already in use" in result.stderr
    assert "listening" not in result.stderr and "Traceback" not in result.stderr


def test_health_reports_each_destination_and_fails_when_one_keeps_failing(start_node, tmp_path):
    from typer.testing import CliRunner

    from dicomnode.cli import app

    outbox = {"name": "outbox", "type": "folder", "path": str(tmp_path / "outbox")}
    down = {"name": "down", "type": "dicom", "ae_title": "NOBODY", "host": "127.0.0.1",
            "port": free_port(), "acse_timeout": 2, "network_timeout": 2,
            "retry": {"initial_s": 0.2, "max_delay_s": 0.5, "jitter_s": 0}}  # fmt: skip
    config = node_config(tmp_path, [outbox, down], **NO_CLASSIFY)
    node = start_node([], config=config)
    assert send_files(node.port, make_images(tmp_path / "images", 1)[0]) == [0]
    written = config.model_dump(mode="json")
    written["receive"]["port"] = node.port  # the port the running node took
    path = write_yaml(tmp_path / "node.yaml", written)
    deadline = time.monotonic() + 30
    while True:
        names = node.spool.names(OUTGOING, "down")
        if names and "failing_since" in node.spool.read_meta(
                node.spool.dir(OUTGOING, "down") / f"{names[0]}.dcm"):
            break
        assert time.monotonic() < deadline, "the head never failed"
        time.sleep(0.1)
    patient = CliRunner().invoke(app, ["health", "-c", str(path), "--timeout", "3"])
    assert patient.exit_code == 0, patient.output  # failing, but not for 10 minutes yet
    assert "down: unreachable, queue 1, oldest waiting" in patient.output
    assert "outbox: queue 0" in patient.output
    time.sleep(1.2)
    strict = CliRunner().invoke(app, ["health", "-c", str(path), "--timeout", "3",
                                      "--max-failing-min", "0.01"])  # fmt: skip
    assert strict.exit_code == 1
    assert strict.output.startswith("FAIL destination down failing for")


def test_sigterm_during_a_50_image_association_lets_it_finish_and_loses_nothing(tmp_path):
    import signal

    from pydicom.uid import ExplicitVRLittleEndian
    from pynetdicom import AE
    from pynetdicom.sop_class import ComputedRadiographyImageStorage

    from tests.node_helpers import NODE_AE
    from tests.store_forward_helpers import NodeProcess, echo, uid_of, write_config

    port = free_port()
    outbox = tmp_path / "outbox"
    config = write_config(tmp_path / "node.yaml", tmp_path, port,
                          [{"name": "outbox", "type": "folder", "path": str(outbox)}],
                          receive={"shutdown_grace_s": 60})  # fmt: skip
    files = make_images(tmp_path / "images", 50)
    node = NodeProcess(config, port, tmp_path).start()
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(ComputedRadiographyImageStorage, [ExplicitVRLittleEndian])
    statuses = []
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AE)
        assert assoc.is_established
        for index, path in enumerate(files):
            statuses.append(int(assoc.send_c_store(path).Status))
            if index == 9:
                node.process.send_signal(signal.SIGTERM)
                time.sleep(0.5)
                assert not echo(port)  # stopping: no new associations meanwhile
            time.sleep(0.05)
        assoc.release()
        released = assoc.is_released
    finally:
        ae.shutdown()
    exit_code = node.process.wait(90)
    node.process = None
    log_text = node.log_text()
    assert statuses == [0] * 50 and released  # every C-STORE answered, then a proper release
    assert exit_code == 0, log_text
    assert "stopping: no new associations; waiting up to 60 s for 1 in progress" in log_text
    assert "dicomnode: stopped" in log_text and "Traceback" not in log_text
    node = NodeProcess(config, port, tmp_path).start()  # what was not forwarded yet goes now
    try:
        wanted = {f"{uid_of(p)}.dcm" for p in files}
        deadline = time.monotonic() + 60
        while {p.name for p in outbox.glob("*.dcm")} != wanted:
            assert time.monotonic() < deadline, "an acknowledged image was never delivered"
            time.sleep(0.1)
    finally:
        node.stop()


def test_refused_and_accepted_associations_are_counted_logged_and_queryable(start_node, tmp_path):
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification
    from typer.testing import CliRunner

    from dicomnode.cli import app
    from tests.node_helpers import NODE_AE

    outbox = {"name": "outbox", "type": "folder", "path": str(tmp_path / "outbox")}
    config = node_config(tmp_path, [outbox], receive={"allowed_callers": ["MODALITY"]},
                         **NO_CLASSIFY)  # fmt: skip
    node = start_node([], config=config)

    def associate(calling: str) -> bool:
        ae = AE(ae_title=calling)
        ae.add_requested_context(Verification)
        try:
            assoc = ae.associate("127.0.0.1", node.port, ae_title=NODE_AE)
            established = assoc.is_established
            if established:
                assoc.release()
            return established
        finally:
            ae.shutdown()

    assert associate("MODALITY") and not associate("INTRUDER")
    path = tmp_path / "node.yaml"
    watcher = ConfigWatcher(path, lambda: load_config(path), lambda new: apply_config(node, new))
    data = config.model_dump(mode="json")
    data["receive"]["allowed_callers"] = ["MODALITY", "INTRUDER"]
    write_yaml(path, data)
    assert watcher.reload() is True
    assert associate("INTRUDER")  # the reloaded allow-list, without a restart
    deadline = time.monotonic() + 10
    while len(node.log_store.associations()) < 3:
        assert time.monotonic() < deadline, "associations not in the log"
        time.sleep(0.05)
    rows = node.log_store.associations()
    assert [(r.outcome, r.calling_ae) for r in reversed(rows)] == [
        ("accepted", "MODALITY"), ("rejected", "INTRUDER"), ("accepted", "INTRUDER")]
    refused = rows[1]
    assert refused.reason == "0x01/0x01/0x03 calling AE title not recognised"
    assert refused.called_ae == NODE_AE and refused.peer_address.startswith("127.0.0.1:")
    assert node.metrics.associations.labels("rejected")._value.get() == 1
    assert node.metrics.associations.labels("accepted")._value.get() == 2
    listed = CliRunner().invoke(app, ["log", "associations", "--db", config.log.url,
                                      "--outcome", "rejected", "--json"])  # fmt: skip
    assert listed.exit_code == 0, listed.output
    (line,) = [json.loads(x) for x in listed.output.splitlines()]
    assert line["calling_ae"] == "INTRUDER" and line["outcome"] == "rejected"


def test_aborted_associations_are_recorded_with_who_aborted_and_how(start_node, tmp_path):
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    from tests.node_helpers import NODE_AE

    outbox = {"name": "outbox", "type": "folder", "path": str(tmp_path / "outbox")}
    node = start_node([outbox], **NO_CLASSIFY)

    def established(calling: str):
        ae = AE(ae_title=calling)
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", node.port, ae_title=NODE_AE)
        assert assoc.is_established
        return ae, assoc

    ae, assoc = established("ABORTER")
    assoc.abort()  # A-ABORT from the service user
    ae.shutdown()
    ae, assoc = established("CUTOFF")
    assoc.dul.socket.socket.shutdown(2)  # the cable pulled: no A-ABORT, no A-RELEASE
    deadline = time.monotonic() + 15
    while len(node.log_store.associations(outcome="aborted")) < 2:
        assert time.monotonic() < deadline, [tuple(r) for r in node.log_store.associations()]
        time.sleep(0.05)
    ae.shutdown()
    aborted = {r.calling_ae: r.reason for r in node.log_store.associations(outcome="aborted")}
    assert aborted == {
        "ABORTER": "A-ABORT from the peer (source: service user)",
        "CUTOFF": "connection lost or cut off (A-P-ABORT: closed mid-association, the read "
                  "deadline, or a protocol error)"}
    assert node.metrics.associations.labels("aborted")._value.get() == 2
    assert node.metrics.associations.labels("accepted")._value.get() == 2


def test_failed_images_make_health_degraded_not_failed(tmp_path, start_node):
    from typer.testing import CliRunner

    from dicomnode.cli import app
    from dicomnode.spool import FAILED

    outbox = {"name": "outbox", "type": "folder", "path": str(tmp_path / "outbox")}
    config = node_config(tmp_path, [outbox], **NO_CLASSIFY)
    node = start_node([], config=config)
    data = config.model_dump(mode="json")
    data["receive"]["port"] = node.port
    path = write_yaml(tmp_path / "node.yaml", data)
    healthy = CliRunner().invoke(app, ["health", "-c", str(path), "--timeout", "3"])
    assert healthy.exit_code == 0 and healthy.output.startswith("OK "), healthy.output
    given_up = node.spool.dir(FAILED, "outbox")
    given_up.mkdir(parents=True, exist_ok=True)
    (given_up / "0001.json").write_text('{"error": "refused: 0xA900"}')
    (given_up / "0001.dcm").write_bytes(b"kept")
    degraded = CliRunner().invoke(app, ["health", "-c", str(path), "--timeout", "3"])
    assert degraded.exit_code == 0, degraded.output  # a restart would not fix it
    assert degraded.output.startswith("DEGRADED failed 1 (given up on, in failed/outbox")


def test_a_reload_that_needs_a_restart_says_so_in_health(start_node, tmp_path):
    from dicomnode.health import check_health

    outbox = {"name": "outbox", "type": "folder", "path": str(tmp_path / "outbox")}
    config = node_config(tmp_path, [outbox], **NO_CLASSIFY)
    node = start_node([], config=config)
    data = config.model_dump(mode="json")
    data["receive"]["max_associations"] = 5
    path = write_yaml(tmp_path / "node.yaml", data)
    watcher = ConfigWatcher(path, lambda: load_config(path), lambda new: apply_config(node, new))
    assert watcher.reload() is True
    data["receive"]["port"] = node.port
    report = check_health(load_config(write_yaml(path, data)), timeout=3)
    assert report.state == "DEGRADED", report.line
    assert "restart needed: receive settings changed in a reload" in report.line


def test_stalled_peers_and_bare_connects_free_their_association_slots(tmp_path):
    import socket
    import struct

    from tests.store_forward_helpers import NodeProcess, echo, write_config

    port = free_port()
    config = write_config(tmp_path / "node.yaml", tmp_path, port,
                          [{"name": "outbox", "type": "folder", "path": str(tmp_path / "out")}],
                          receive={"read_timeout_s": 1, "max_associations": 2})  # fmt: skip
    node = NodeProcess(config, port, tmp_path).start()
    stalled = []
    try:
        for _ in range(2):  # an A-ASSOCIATE-RQ header promising 1000 bytes, then nothing
            peer = socket.create_connection(("127.0.0.1", port))
            peer.sendall(struct.pack(">BBL", 0x01, 0, 1000))
            stalled.append(peer)
        started = time.monotonic()
        for peer in stalled:
            peer.settimeout(20)
            assert peer.recv(16) == b""  # the node closed it
        assert time.monotonic() - started < 10
        while not echo(port):  # the slots are free again
            assert time.monotonic() - started < 15, "the stalled peers still hold their slots"
            time.sleep(0.2)
        print(f"stalled peers cut off and slots free after {time.monotonic() - started:.1f} s")
        for _ in range(5):  # port scanners, load balancers' checks: connect and close
            socket.create_connection(("127.0.0.1", port)).close()
        started = time.monotonic()
        while not echo(port):
            assert time.monotonic() - started < 5, "bare connections still hold their slots"
            time.sleep(0.1)
        print(f"after 5 bare connects the node answered in {time.monotonic() - started:.1f} s")
    finally:
        for peer in stalled:
            peer.close()
        node.stop()
    log_text = node.log_text()
    assert "Traceback" not in log_text, log_text[-3000:]


def test_a_config_edit_made_during_start_up_is_reloaded(tmp_path):
    """serve starts watching the config file only once the node listens; an edit made in
    between gives no file event, so the watcher compares the file with what the node started
    from and reloads at once (a clean-clone CI run lost such an edit: the reload test wrote the
    file right after the node's first C-ECHO)."""
    path = tmp_path / "node.yaml"
    path.write_text("first\n")
    loaded = path.read_bytes()
    path.write_text("second\n")  # before the watcher starts
    seen: list[str] = []
    watcher = ConfigWatcher(path, lambda: path.read_text(), seen.append, debounce_s=0.05,
                            loaded=loaded).start()
    try:
        deadline = time.monotonic() + 10
        while not seen and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        watcher.stop()
    assert seen == ["second\n"]
    unchanged = ConfigWatcher(path, lambda: path.read_text(), seen.append, debounce_s=0.05,
                              loaded=path.read_bytes()).start()
    time.sleep(1.0)
    unchanged.stop()
    assert seen == ["second\n"]  # no reload when nothing changed


def test_health_reads_the_journal_while_the_log_writer_empties_it(tmp_path):
    """`dicomnode health` lists the journal, then reads the oldest event's age; the log writer
    may have applied and removed that event in between (a clean-clone CI run crashed health
    with FileNotFoundError this way). The oldest event still there counts; none, no line."""
    from dicomnode.health import _oldest_age

    gone, waiting = tmp_path / "1.instance.json", tmp_path / "2.instance.json"
    waiting.write_text("{}")
    os.utime(waiting, (time.time() - 30, time.time() - 30))
    assert 29 < _oldest_age([gone, waiting]) < 60
    assert _oldest_age([gone]) is None
