"""Retry scheduling, operator queue operations, resume, disk guard metrics and the inbox folder
(in-process node, real SCPs on loopback, real files)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dicomnode import queue_ops
from dicomnode.cli import app
from dicomnode.config_routing import RetryPolicy
from dicomnode.diskguard import DiskGuard
from dicomnode.forward import Forwarder, backoff_s
from dicomnode.metrics import NodeMetrics
from dicomnode.send import classify_status
from dicomnode.spool import FAILED, OUTGOING, SENT, Spool
from tests.node_helpers import forward_rows, free_port, send_files
from tests.shared_data import SHARED
from tests.store_forward_helpers import make_images, uid_of

pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared data not at {SHARED}")


def test_backoff_is_exponential_capped_with_bounded_jitter():
    policy = RetryPolicy(initial_s=1, multiplier=3, max_delay_s=20, jitter_s=0)
    assert [backoff_s(policy, n) for n in range(1, 6)] == [1, 3, 9, 20, 20]
    jittered = RetryPolicy(initial_s=1, multiplier=2, max_delay_s=4, jitter_s=0.5)
    for attempt, base in ((1, 1), (2, 2), (3, 4), (6, 4)):
        waits = {backoff_s(jittered, attempt) for _ in range(50)}
        assert all(base <= w <= base + 0.5 for w in waits) and len(waits) > 1


@pytest.mark.parametrize(
    ("status", "outcome"),
    [(0x0000, "sent"), (0xB000, "sent"), (0xA700, "retry"), (0xA7FF, "retry"),
     (0xA900, "failed"), (0xC000, "failed"), (0xC123, "failed"), (0x0122, "failed")],
)  # fmt: skip
def test_status_classes(status: int, outcome: str):
    delivery = classify_status(status)
    assert delivery.outcome == outcome
    if outcome == "failed":
        assert delivery.detail.startswith("permanent")


def unreachable(name: str, **retry: object) -> dict:
    return {"name": name, "type": "dicom", "ae_title": "NOBODY", "host": "127.0.0.1",
            "port": free_port(), "acse_timeout": 2, "network_timeout": 2,
            "retry": {"initial_s": 0.05, "multiplier": 2, "max_delay_s": 0.2, "jitter_s": 0,
                      **retry}}  # fmt: skip


def test_gives_up_after_max_attempts_in_order_others_flow(start_node, recording_scp, tmp_path):
    node = start_node(
        [unreachable("down", max_attempts=3), recording_scp.destination("sink")],
        classify={"modalities": []}, disk={"min_free_mb": 0},
    )  # fmt: skip
    files = make_images(tmp_path / "images", 3)
    assert send_files(node.port, *files) == [0, 0, 0]
    recording_scp.wait_for(3, timeout=30)  # the other destination is not held up
    spool = node.spool
    deadline = time.monotonic() + 30
    while len(spool.names(FAILED, "down")) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    failed = spool.names(FAILED, "down")
    assert len(failed) == 3
    metas = [json.loads((spool.dir(FAILED, "down") / f"{n}.json").read_text()) for n in failed]
    assert all(m["attempts"] == 3 and m["last_detail"].startswith("gave up after 3") for m in metas)
    rows = [r for r in forward_rows(node) if r.destination == "down"]
    per_image = [[r.outcome for r in rows if r.sop_instance_uid == uid_of(f)] for f in files]
    assert per_image == [["retry", "retry", "failed"]] * 3
    # in order: every attempt on image 1 comes before the first attempt on image 2
    order = [r.sop_instance_uid for r in rows]
    assert order == sorted(order, key=[uid_of(f) for f in files].index)


def test_retry_schedule_is_in_the_json_and_operator_retry_makes_it_due(tmp_path):
    spool = Spool(tmp_path / "spool")
    spool.ensure(["pacs"])
    dest_cfg = unreachable("pacs", initial_s=600, max_delay_s=600)
    from dicomnode.config_routing import DicomDestination

    forwarder = Forwarder(DicomDestination.model_validate(dest_cfg), spool, None, "DICOMNODE")
    image = make_images(tmp_path / "images", 1)[0]
    meta = {"sop_instance_uid": uid_of(image), "name": "0001"}
    spool.dispatch("0001", image, ["pacs"], meta)
    forwarder.start()
    try:
        json_path = spool.dir(OUTGOING, "pacs") / "0001.json"
        deadline = time.monotonic() + 15
        while "next_attempt_at" not in json.loads(json_path.read_text()):
            assert time.monotonic() < deadline, "no retry scheduled"
            time.sleep(0.05)
        scheduled = json.loads(json_path.read_text())
        assert scheduled["attempts"] == 1 and scheduled["last_outcome"] == "retry"
        assert 590 < scheduled["next_attempt_at"] - scheduled["last_attempt_at"] < 610
        listed = CliRunner().invoke(app, ["queue", "list", "--spool", str(spool.root), "--json"])
        row = json.loads(listed.output.splitlines()[0])
        assert row["state"] == "outgoing" and row["attempts"] == 1
        assert row["next_attempt_in_s"] > 500
        touched = queue_ops.retry(spool, "pacs")
        assert [t.name for t in touched] == ["0001"]
        deadline = time.monotonic() + 15  # the running forwarder tries again within a poll
        while json.loads(json_path.read_text()).get("attempts") != 2:
            assert time.monotonic() < deadline, "operator retry not picked up"
            time.sleep(0.05)
    finally:
        forwarder.stop()


def test_restart_resumes_outgoing_at_once_despite_old_schedule(start_node, recording_scp, tmp_path):
    spool = Spool(tmp_path / "spool")
    spool.ensure(["sink"])
    image = make_images(tmp_path / "images", 1)[0]
    meta = {"sop_instance_uid": uid_of(image), "attempts": 5, "name": "0001",
            "next_attempt_at": time.time() + 3600, "scheduled_at": time.time() - 10}  # fmt: skip
    spool.dispatch("0001", image, ["sink"], meta)
    node = start_node([recording_scp.destination("sink")], classify={"modalities": []},
                      disk={"min_free_mb": 0})  # fmt: skip
    recording_scp.wait_for(1, timeout=15)
    assert node.wait_idle(15)
    assert spool.names(SENT, "sink") == ["0001"]


def test_purge_needs_names_for_outgoing_and_deletes_pairs(tmp_path):
    spool = Spool(tmp_path / "spool")
    spool.ensure(["a"])
    images = make_images(tmp_path / "images", 2)
    uids = [uid_of(image) for image in images]
    for index, image in enumerate(images):  # (dispatch moves the file into the spool)
        spool.dispatch(f"000{index}", image, ["a"], {"sop_instance_uid": uids[index]})
    with pytest.raises(ValueError):
        queue_ops.purge(spool, OUTGOING)
    removed = queue_ops.purge(spool, OUTGOING, "a", names=[uids[0]])
    assert [r.name for r in removed] == ["0000"]
    assert spool.names(OUTGOING, "a") == ["0001"]
    assert not (spool.dir(OUTGOING, "a") / "0000.json").exists()
    dry = CliRunner().invoke(app, ["queue", "purge", "failed", "--spool", str(spool.root)])
    assert "would delete 0" in dry.output


def test_disk_guard_refuses_below_floor_counts_and_recovers(tmp_path):
    metrics = NodeMetrics()
    guard = DiskGuard(tmp_path, min_free_mb=0, metrics=metrics)
    assert guard.refusal(1000) is None
    guard.min_free_bytes = guard.free_bytes() + 10 * 1024 * 1024
    reason = guard.refusal(1000)
    assert reason is not None and reason.startswith("disk low")
    assert guard.refusal(1000) is not None and guard.low
    value = metrics.registry.get_sample_value
    assert value("dicomnode_images_refused_total", {"reason": "disk_low"}) == 2
    assert value("dicomnode_disk_low") == 1
    guard.min_free_bytes = 0
    assert guard.refusal(1000) is None and not guard.low
    assert value("dicomnode_disk_low") == 0


def test_inbox_takes_complete_files_once_and_rejects_non_dicom(start_node, recording_scp,
                                                                tmp_path):  # fmt: skip
    inbox = tmp_path / "inbox"
    node = start_node(
        [recording_scp.destination("sink")], classify={"modalities": []},
        disk={"min_free_mb": 0}, inbox={"path": str(inbox), "settle_s": 0.5},
    )  # fmt: skip
    image = make_images(tmp_path / "images", 1)[0]
    data = image.read_bytes()
    target = inbox / "scan.dcm"
    with open(target, "wb") as handle:  # a slow copy: half now, the rest later
        handle.write(data[: len(data) // 2])
        handle.flush()
        os.fsync(handle.fileno())
        time.sleep(0.3)
        assert not recording_scp.received
        handle.write(data[len(data) // 2 :])
    (inbox / "notes.txt").write_text("not DICOM")
    recording_scp.wait_for(1, timeout=20)
    assert recording_scp.received[0].sop_instance_uid == uid_of(image)
    deadline = time.monotonic() + 10
    while not (inbox / ".rejected" / "notes.txt.txt").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (inbox / ".rejected" / "notes.txt.txt").exists()
    assert node.wait_idle(15)
    time.sleep(1.0)  # a second take would arrive now
    assert len(recording_scp.received) == 1
    assert not target.exists() and not list((inbox / ".taking").iterdir())


def test_queue_list_summary(tmp_path: Path):
    spool = Spool(tmp_path / "spool")
    spool.ensure(["x"])
    result = CliRunner().invoke(app, ["queue", "list", "--spool", str(spool.root), "--summary"])
    assert result.exit_code == 0 and "outgoing/x" in result.output


def test_sop_class_the_peer_does_not_support_fails_at_once(start_node, tmp_path):
    from pynetdicom.sop_class import MRImageStorage

    from tests.node_helpers import RecordingSCP

    mr_only = RecordingSCP(ae_title="MRONLY")
    mr_only.ae.supported_contexts = []
    mr_only.ae.add_supported_context(MRImageStorage)
    mr_only.start()
    try:
        node = start_node([mr_only.destination("mr-only")], classify={"modalities": []},
                          disk={"min_free_mb": 0})  # fmt: skip
        image = make_images(tmp_path / "images", 1)[0]  # a CR
        assert send_files(node.port, image) == [0]
        deadline = time.monotonic() + 20
        while not node.spool.names(FAILED, "mr-only") and time.monotonic() < deadline:
            time.sleep(0.05)
        (name,) = node.spool.names(FAILED, "mr-only")
        meta = json.loads((node.spool.dir(FAILED, "mr-only") / f"{name}.json").read_text())
        assert meta["attempts"] == 1
        assert meta["last_detail"].startswith("permanent: SOP class not supported")
        assert not mr_only.received
    finally:
        mr_only.stop()
