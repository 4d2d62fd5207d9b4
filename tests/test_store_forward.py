"""Store-and-forward proofs with real processes on loopback (run inside `unshare -n`, as `make
test` does): the node is `python -m dicomnode serve`, destinations are pynetdicom SCPs that record
what they get. Measured numbers are printed as `store-forward: ...` lines (pytest -s shows them).
"""

from __future__ import annotations

import json
import statistics
import time
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dicomnode.cli import app
from dicomnode.spool import FAILED, INCOMING, OUTGOING, PROCESSING, SENT, TMP
from tests.node_helpers import free_port
from tests.shared_data import SHARED
from tests.store_forward_helpers import (
    Modality,
    NodeProcess,
    Sink,
    log_rows,
    make_images,
    uid_of,
    write_config,
)

pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared data not at {SHARED}")

FAST_RETRY = {"initial_s": 0.2, "multiplier": 2.0, "max_delay_s": 1.0, "jitter_s": 0.1}


def report(**numbers: object) -> None:
    print("store-forward:", json.dumps(numbers, sort_keys=True))


def sink_destination(name: str, sink: Sink, **extra: object) -> dict:
    return {"name": name, "type": "dicom", "ae_title": sink.ae_title, "host": "127.0.0.1",
            "port": sink.fixed_port, "retry": FAST_RETRY, "idle_release_s": 1.0,
            "acse_timeout": 5, "dimse_timeout": 10, "network_timeout": 10, **extra}  # fmt: skip


@pytest.fixture
def cleanup():
    """Things to stop at teardown, last started first."""
    things: list = []
    try:
        yield things
    finally:
        for thing in reversed(things):
            thing.stop()


def spool_files(workdir: Path, state: str, dest: str | None = None) -> list[Path]:
    folder = workdir / "spool" / state / dest if dest else workdir / "spool" / state
    return sorted(folder.glob("*.dcm")) if folder.is_dir() else []


def test_kill9_three_times_while_streaming_loses_nothing(tmp_path, cleanup):
    sink = Sink(ae_title="SINK")
    cleanup.append(sink.start())
    port = free_port()
    config = write_config(tmp_path / "node.yaml", tmp_path, port, [sink_destination("sink", sink)])
    node = NodeProcess(config, port, tmp_path)
    cleanup.append(node.start())
    files = make_images(tmp_path / "images", 300)
    modality = Modality(port, files)
    cleanup.append(modality.start())
    kills = 0
    for threshold in (70, 150, 230):  # kill mid-stream, three times, restarting each time
        deadline = time.monotonic() + 120
        while len(modality.acked) < threshold and time.monotonic() < deadline:
            time.sleep(0.005)
        node.kill9()
        kills += 1
        time.sleep(0.3)  # the modality meets a dead port for a moment
        node.start()
    modality.join(300)
    acked = set(modality.acked)
    assert len(acked) == 300, f"modality got Success for {len(acked)} of 300"
    sink.wait_for_uids(acked, timeout=120)
    time.sleep(1.0)  # anything still coming (a duplicate) comes now
    counts = Counter(sink.uids())
    duplicates = {uid: n for uid, n in counts.items() if n > 1}
    extra_copies = sum(n - 1 for n in duplicates.values())
    resent_by_modality = set(modality.unanswered)
    report(test="kill9", kills=kills, images=300, acknowledged=len(acked),
           delivered_unique=len(counts), delivered_total=sum(counts.values()),
           duplicate_images=len(duplicates), extra_copies=extra_copies,
           duplicates_resent_by_modality=len(set(duplicates) & resent_by_modality),
           unanswered_stores=len(resent_by_modality))  # fmt: skip
    assert acked <= set(counts)  # every acknowledged image delivered
    # Duplicates only from what was in flight at a kill: per kill at most the modality's
    # unanswered store, the image in the pipeline worker, and the forwarder's image in hand.
    assert extra_copies <= 3 * kills, duplicates
    node.stop()
    assert not spool_files(tmp_path, OUTGOING, "sink") and not spool_files(tmp_path, INCOMING)
    assert not spool_files(tmp_path, PROCESSING)
    assert len(spool_files(tmp_path, SENT, "sink")) >= 300


def test_destination_down_then_back_in_order_other_keeps_its_latency(tmp_path, cleanup):
    flaky, steady = Sink(ae_title="FLAKY"), Sink(ae_title="STEADY")
    cleanup.extend([flaky.start(), steady.start()])
    port = free_port()
    dests = [sink_destination("flaky", flaky), sink_destination("steady", steady)]
    config = write_config(tmp_path / "node.yaml", tmp_path, port, dests)
    node = NodeProcess(config, port, tmp_path)
    cleanup.append(node.start())

    def stream(files: list[Path]) -> Modality:
        modality = Modality(port, files, pause_s=0.1)  # a modality's pace, not a burst
        modality.start().join(120)
        assert len(modality.acked) == len(files)
        return modality

    def latencies(modality: Modality, sink: Sink) -> list[float]:
        sink.wait_for_uids(set(modality.acked), timeout=60)
        arrived = sink.first_arrival()
        return [arrived[uid] - at for uid, at in modality.acked.items()]

    before = stream(make_images(tmp_path / "a", 20, "a"))
    baseline = latencies(before, steady)
    latencies(before, flaky)
    flaky.down()
    down_started = time.monotonic()
    during = stream(make_images(tmp_path / "b", 40, "b"))
    during_latency = latencies(during, steady)  # steady got everything while flaky is down
    assert not set(during.acked) & set(flaky.uids())
    queued = len(spool_files(tmp_path, OUTGOING, "flaky"))
    assert queued == 40, f"flaky queue holds {queued}"
    head = spool_files(tmp_path, OUTGOING, "flaky")[0]
    retrying = json.loads(head.with_suffix(".json").read_text())
    assert retrying["attempts"] >= 1 and retrying["last_outcome"] == "retry"
    flaky.start()  # back, same port
    outage_s = time.monotonic() - down_started
    flaky.wait_for_uids(set(during.acked), timeout=60)
    order = [u for u in flaky.uids() if u in during.acked]
    sent_order = [uid_of(p) for p in sorted((tmp_path / "b").glob("*.dcm"))]
    report(test="outage", outage_s=round(outage_s, 2), queued_while_down=queued,
           flaky_delivered_after=len(set(order)), flaky_in_order=order == sent_order,
           steady_latency_ms_baseline_median=round(statistics.median(baseline) * 1000, 1),
           steady_latency_ms_baseline_max=round(max(baseline) * 1000, 1),
           steady_latency_ms_during_outage_median=round(
               statistics.median(during_latency) * 1000, 1),
           steady_latency_ms_during_outage_max=round(max(during_latency) * 1000, 1),
           retry_attempts_on_head=retrying["attempts"])  # fmt: skip
    assert order == sent_order  # every queued image, in order
    node.stop()
    _, forwards = log_rows(tmp_path)
    assert any(f.destination == "flaky" and f.outcome == "retry" for f in forwards)
    sent_rows = {
        f.sop_instance_uid for f in forwards if f.destination == "flaky" and f.outcome == "sent"
    }
    assert set(during.acked) <= sent_rows


def test_permanent_rejection_goes_to_failed_once_with_status_and_reason(tmp_path, cleanup):
    rejecting = Sink(ae_title="REJECTS", status=0xA900)
    cleanup.append(rejecting.start())
    port = free_port()
    config = write_config(tmp_path / "node.yaml", tmp_path, port,
                          [sink_destination("rejects", rejecting)])  # fmt: skip
    node = NodeProcess(config, port, tmp_path)
    cleanup.append(node.start())
    files = make_images(tmp_path / "images", 5)
    Modality(port, files).start().join(60)
    deadline = time.monotonic() + 30
    while len(spool_files(tmp_path, FAILED, "rejects")) < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(2.0)  # ten times the first retry delay: a retry loop would show now
    failed = spool_files(tmp_path, FAILED, "rejects")
    assert len(failed) == 5
    assert len(rejecting.uids()) == 5  # each tried exactly once
    meta = json.loads(failed[0].with_suffix(".json").read_text())
    assert meta["last_status"] == 0xA900 and "permanent" in meta["last_detail"]
    runner = CliRunner()
    listed = runner.invoke(app, ["queue", "list", "-c", str(config), "--state", "failed"])
    assert listed.exit_code == 0, listed.output
    assert listed.output.count("failed/rejects") == 5 and "permanent" in listed.output
    # the operator fixes the peer and retries: the node (still running) sends them again
    rejecting.status = 0x0000
    retried = runner.invoke(app, ["queue", "retry", "-c", str(config), "--dest", "rejects"])
    assert retried.exit_code == 0 and "5 image(s)" in retried.output, retried.output
    deadline = time.monotonic() + 30
    while len(spool_files(tmp_path, SENT, "rejects")) < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(spool_files(tmp_path, SENT, "rejects")) == 5
    node.stop()
    _, forwards = log_rows(tmp_path)
    failed_rows = [f for f in forwards if f.outcome == "failed"]
    report(test="permanent", rejected=len(failed_rows), sink_saw=len(rejecting.uids()),
           retry_rows=sum(f.outcome == "retry" for f in forwards))  # fmt: skip
    assert len(failed_rows) == 5 and all(f.dimse_status == 0xA900 for f in failed_rows)
    assert all("permanent" in (f.detail or "") for f in failed_rows)
    assert not any(f.outcome == "retry" for f in forwards)
    purged = runner.invoke(app, ["queue", "purge", "sent", "-c", str(config), "--yes"])
    assert purged.exit_code == 0 and "deleted 5" in purged.output
    assert not spool_files(tmp_path, SENT, "rejects")


def test_eight_concurrent_senders_all_delivered_log_complete(tmp_path, cleanup):
    sink = Sink(ae_title="SINK")
    cleanup.append(sink.start())
    port = free_port()
    config = write_config(tmp_path / "node.yaml", tmp_path, port, [sink_destination("sink", sink)])
    node = NodeProcess(config, port, tmp_path)
    cleanup.append(node.start())
    modalities = [
        Modality(port, make_images(tmp_path / f"m{i}", 50, f"m{i}_"), calling_ae=f"MOD{i}")
        for i in range(8)
    ]
    started = time.monotonic()
    for modality in modalities:
        cleanup.append(modality.start())
    for modality in modalities:
        modality.join(300)
    acked = set().union(*(m.acked for m in modalities))
    assert len(acked) == 400
    sink.wait_for_uids(acked, timeout=120)
    elapsed = time.monotonic() - started
    node.stop()
    instances, forwards = log_rows(tmp_path)
    logged = Counter(r.sop_instance_uid for r in instances)
    sent = {f.sop_instance_uid for f in forwards if f.outcome == "sent"}
    callers = {r.calling_ae for r in instances}
    report(test="concurrent", senders=8, images=400, delivered=len(set(sink.uids())),
           duplicates=len(sink.uids()) - len(set(sink.uids())), logged=len(logged),
           seconds=round(elapsed, 2))  # fmt: skip
    assert set(logged) == acked and all(n == 1 for n in logged.values())
    assert sent == acked
    assert callers == {f"MOD{i}" for i in range(8)}
    assert all(r.routing.get("destinations") == ["sink"] for r in instances)


def test_free_space_floor_refuses_then_recovers_on_reload(tmp_path, cleanup):
    import shutil

    sink = Sink(ae_title="SINK")
    cleanup.append(sink.start())
    port = free_port()
    free_mb = shutil.disk_usage(tmp_path).free / 1024 / 1024
    dests = [sink_destination("sink", sink)]
    config = write_config(tmp_path / "node.yaml", tmp_path, port, dests,
                          disk={"min_free_mb": free_mb + 1024})  # fmt: skip
    node = NodeProcess(config, port, tmp_path)
    cleanup.append(node.start())
    files = make_images(tmp_path / "images", 6)
    refused = Modality(port, files[:3])
    refused.start().join(60)
    assert not refused.acked
    assert set(refused.other_status.values()) == {0xA700}
    for state in (INCOMING, PROCESSING, TMP):  # nothing written, not even partly
        assert not list((tmp_path / "spool" / state).iterdir()), state
    # space returns: here the operator lowers the floor; the watched config is reloaded live
    write_config(config, tmp_path, port, dests, disk={"min_free_mb": 0})
    deadline = time.monotonic() + 30
    accepted = None
    while time.monotonic() < deadline:
        accepted = Modality(port, files[3:4])
        accepted.start().join(60)
        if accepted.acked:
            break
        time.sleep(0.3)
    assert accepted is not None and accepted.acked, "node did not recover"
    rest = Modality(port, files[4:])
    rest.start().join(60)
    assert len(rest.acked) == 2
    sink.wait_for_uids(set(accepted.acked) | set(rest.acked), timeout=30)
    node.stop()
    text = node.log_text()
    assert "disk guard" in text and "refusing images with 0xA700" in text
    assert "config reloaded" in text and "space is back" in text
    assert text.count("config reloaded") <= 2  # one change, not a reload loop
    assert not spool_files(tmp_path, FAILED, "_pipeline")  # the reload disturbed no image
    report(test="disk_floor", refused=len(refused.other_status),
           status=hex(next(iter(refused.other_status.values()))),
           delivered_after=len(set(sink.uids())))  # fmt: skip


def test_invalid_config_change_is_refused_and_old_config_kept(tmp_path, cleanup):
    sink = Sink(ae_title="SINK")
    cleanup.append(sink.start())
    port = free_port()
    config = write_config(tmp_path / "node.yaml", tmp_path, port, [sink_destination("sink", sink)])
    node = NodeProcess(config, port, tmp_path)
    cleanup.append(node.start())
    good = config.read_text()
    broken = "routing:\n  rules:\n    - name: broken\n      destinations: [nowhere]\n"
    config.write_text(good + broken)
    deadline = time.monotonic() + 20
    while "config reload refused" not in node.log_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "config reload refused" in node.log_text()
    assert "unknown destination 'nowhere'" in node.log_text()
    files = make_images(tmp_path / "images", 3)
    modality = Modality(port, files)
    modality.start().join(60)
    sink.wait_for_uids(set(modality.acked), timeout=30)  # still routed by the old config
    assert len(modality.acked) == 3


def test_valid_config_change_applies_without_dropping_associations(tmp_path, cleanup):
    first, second = Sink(ae_title="FIRST"), Sink(ae_title="SECOND")
    cleanup.extend([first.start(), second.start()])
    port = free_port()
    dests = [sink_destination("first", first), sink_destination("second", second)]
    config = write_config(tmp_path / "node.yaml", tmp_path, port, dests,
                          routing={"default": {"destinations": ["first"]}})  # fmt: skip
    node = NodeProcess(config, port, tmp_path)
    cleanup.append(node.start())
    files = make_images(tmp_path / "images", 60)
    modality = Modality(port, files, pause_s=0.05)  # one association throughout
    cleanup.append(modality.start())
    deadline = time.monotonic() + 60
    while len(modality.acked) < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    write_config(config, tmp_path, port, dests, routing={"default": {"destinations": ["second"]}})
    modality.join(120)
    assert len(modality.acked) == 60 and not modality.unanswered  # the association was kept
    uids = [uid_of(p) for p in files]
    deadline = time.monotonic() + 60
    while len(set(first.uids()) | set(second.uids())) < 60 and time.monotonic() < deadline:
        time.sleep(0.05)
    to_first, to_second = set(first.uids()), set(second.uids())
    split = len(to_first)
    report(test="reload", before_change=split, after_change=len(to_second),
           reloads=node.log_text().count("config reloaded"))  # fmt: skip
    # arrival order: everything before the change went to first, everything after to second
    assert 20 <= split < 60
    assert to_first == set(uids[:split]) and to_second == set(uids[split:])
