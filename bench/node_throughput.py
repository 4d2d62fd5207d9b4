"""Node throughput beside a plain store-and-forward relay (issues 5 and 16).

A sender streams N fresh instances over one association per input set to (a) bench/relay.py, a
pynetdicom SCP that spools atomically and forwards (no parsing, no classification, no log) and
(b) the node, started as deployed (`python -m dicomnode serve`, Int8 model, SQLite log, 1 worker);
both forward to the same kind of sink SCP (bench/sink.py, its own process). Per input set:
images/s end to end (first C-STORE sent -> last instance at the sink), median/p95 C-STORE reply time
seen by the sender, median receive-to-forwarded latency (reply to the sender -> arrival at the
sink), CPU seconds and peak RSS of the relay/node process. The same figures per kind:
pass-through (SOP classes the node never classifies: CT, ...) and classified (CR, DX). The mixed
set streams a CT series on one association while CR films arrive on a second, at once.

Run inside a loopback-only namespace, like the tests:
  unshare -n sh -c 'ip link set lo up && .venv/bin/python -m bench.node_throughput'
  ... --quick (a few images per set: a smoke run), --profile (py-spy on the node, separate run)
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.common import SHARED, median, percentile, print_table, write_json
from bench.peers import (
    RssSampler,
    Sent,
    Server,
    Template,
    node_config,
    start_node,
    start_relay,
    start_sink,
    stream,
    wait_arrivals,
)

CORPUS = "dicom/corpus/files"
INPUT_SETS = {
    # name: (files sent in turn, N, N with --quick)
    "CR 1955x1841 (uncompressed + J2K lossless)": (
        ["CR__RG1_UNCR.dcm", "CR__RG1_J2KR.dcm"], 300, 6,
    ),
    "DX 2614x3072 12-bit": (["DX__animals_cat.dcm"], 300, 4),
    "small (CR 16x16 + CT 128x128)": (["CR__77654033_CR1_6154.dcm", "CT__CT_small.dcm"], 1000, 20),
    "CT series 512x512 16-bit": (["CT__693_UNCR.dcm"], 500, 10),
}
# name: {stream: (files, N, N with --quick)}; the streams run at once, each on its association
MIXED_SETS = {
    "mixed (CT series + CR films at once)": {
        "CT series": (["CT__693_UNCR.dcm"], 300, 10),
        "CR films": (["CR__RG1_UNCR.dcm", "CR__RG1_J2KR.dcm"], 30, 2),
    },
}
CLASSIFIED_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1",
                          "1.2.840.10008.5.1.4.1.1.1.1.1"}  # CR, DX (presentation, processing)
GOALS = {"throughput_ratio_min": 0.9, "reply_ratio_max": 1.1, "node_rss_mb_max": 250.0,
         "pass_through_latency_ratio_max": 2.0, "pass_through_cpu_ratio_max": 1.3,
         "first_image_over_steady_max": 2.0}


def kind_of(template: Template) -> str:
    return "classified" if template.sop_class in CLASSIFIED_SOP_CLASSES else "pass-through"


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def clear_sent(spool: Path) -> None:
    """Delivered files are kept by design; drop them between sets so disk use stays bounded."""
    sent = spool / "sent"
    if sent.is_dir():
        for path in sent.rglob("*"):
            if path.is_file():
                path.unlink(missing_ok=True)


def run_set(target: Server, record: Path, called_ae: str,
            streams: list[tuple[list[Template], int]], spool: Path) -> dict[str, Any]:
    """One input set: each stream on its own association, all at once; figures overall and per
    kind (pass-through, classified)."""
    load_before = load_average()
    cpu_before = target.cpu_seconds()
    sampler = RssSampler(target)
    sampler.start()
    incidents: list[dict[str, float]] = []
    outcomes: list[list[Sent] | BaseException] = [[] for _ in streams]

    def send(index: int, templates: list[Template], count: int) -> None:
        try:
            outcomes[index] = stream(target.port, called_ae, templates, count, incidents)
        except BaseException as exc:  # re-raised below, in the caller's thread
            outcomes[index] = exc

    threads = [threading.Thread(target=send, args=(i, t, n)) for i, (t, n) in enumerate(streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    kinds: dict[str, str] = {}
    sent: list[Sent] = []
    for outcome, (templates, _) in zip(outcomes, streams, strict=True):
        if isinstance(outcome, BaseException):
            raise outcome
        for index, item in enumerate(outcome):  # stream() sends the templates in turn
            kinds[item.uid] = kind_of(templates[index % len(templates)])
        sent += outcome
    sent.sort(key=lambda item: item.started)
    count = len(sent)
    arrivals = wait_arrivals(record, [s.uid for s in sent], timeout=max(120.0, 3.0 * count))
    cpu_s = target.cpu_seconds() - cpu_before
    rss_mb = sampler.stop()
    clear_sent(spool)
    stages = node_log_stages(spool.parent / "node-log.sqlite3", {s.uid for s in sent})
    by_kind = {kind: figures([s for s in sent if kinds[s.uid] == kind], arrivals)
               for kind in sorted(set(kinds.values()))}  # fmt: skip
    return {
        **stages,
        **figures(sent, arrivals),
        "by_kind": by_kind,
        "sender_only_images_per_s": count / (sent[-1].replied - sent[0].started),
        "cpu_s": cpu_s,
        "cpu_ms_per_image": cpu_s * 1000.0 / count,
        "peak_rss_mb_in_set": rss_mb,
        "lost_associations": incidents,
        "load_before": load_before,
        "load_after": load_average(),
    }


def figures(sent: list[Sent], arrivals: dict[str, float]) -> dict[str, Any]:
    """Rate, reply and receive-to-forwarded figures of these instances (sorted by start)."""
    replies = [s.reply_ms for s in sent]
    latencies = [(arrivals[s.uid] - s.replied) * 1000.0 for s in sent]
    last = max(arrivals[s.uid] for s in sent)
    return {
        "n": len(sent),
        "images_per_s": len(sent) / max(last - sent[0].started, 1e-9),
        "reply_ms_median": median(replies),
        "reply_ms_p95": percentile(replies, 95),
        "first_reply_ms": replies[0],
        "receive_to_forwarded_ms_median": median(latencies),
        "receive_to_forwarded_ms_p95": percentile(latencies, 95),
        "first_receive_to_forwarded_ms": latencies[0],
    }


def node_log_stages(database: Path, uids: set[str]) -> dict[str, Any]:
    """The node's own per-image timings from its log rows (nothing for the relay): processing_ms
    (parse + decode + classify + tag) and inference_ms (the model alone)."""
    if not database.is_file():
        return {}
    with sqlite3.connect(database) as db:
        rows = db.execute(
            "SELECT sop_instance_uid, processing_ms, inference_ms, action FROM instances"
        ).fetchall()
    rows = [r for r in rows if r[0] in uids]
    processing = [r[1] for r in rows if r[1] is not None]
    inference = [r[2] for r in rows if r[2] is not None]
    # "tagged"-style actions mean a second full copy of the image was written (and fsynced)
    stages: dict[str, Any] = {"node_actions": dict(Counter(r[3] for r in rows))}
    if processing:
        stages["node_processing_ms_median"] = median(processing)
    if inference:
        stages["node_inference_ms_median"] = median(inference)
        stages["node_inference_ms_p95"] = percentile(inference, 95)
    return stages


def run_target(kind: str, workdir: Path, sets: dict[str, list[tuple[list[Template], int]]],
               profile: Path | None, max_pdu: int, workers: int,
               nice: int | None = None) -> dict[str, Any]:
    workdir.mkdir(parents=True)
    sink, record = start_sink(workdir)
    target: Server | None = None
    spy: subprocess.Popen | None = None
    try:
        if kind.startswith("relay"):
            target = start_relay(workdir, sink.port, kind == "relay-chunked", max_pdu)
            called_ae, spool = "BENCHRELAY", workdir / "relay-spool"
        else:
            classify = {"workers": workers} if nice is None else {"workers": workers, "nice": nice}
            config = node_config(workdir, sink.port, max_pdu, **classify)
            target = start_node(workdir, config)
            called_ae, spool = "DICOMNODE", workdir / "node-spool"
        if profile is not None:
            spy = start_profiler(target.process.pid, profile)
        results = {name: run_set(target, record, called_ae, streams, spool)
                   for name, streams in sets.items()}  # fmt: skip
        results["process_peak_rss_mb"] = target.peak_rss_mb()  # type: ignore[assignment]
        return results
    finally:
        if spy is not None:
            spy.send_signal(2)  # SIGINT: py-spy writes its output and exits
            spy.wait(60)
        if target is not None:
            target.stop()
        sink.stop()


def start_profiler(pid: int, output: Path) -> subprocess.Popen:
    py_spy = shutil.which("py-spy") or str(Path(os.sys.executable).parent / "py-spy")
    spy = subprocess.Popen(
        [py_spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "100",
         "--threads", "--subprocesses", "--output", str(output)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)  # attached before the first image
    return spy


def thread_role(thread: str, in_child: bool) -> str:
    if in_child:
        return "decode worker process (guard)"
    name = thread.partition("): ")[2]
    if name.startswith("classify-"):
        return "pipeline worker (classify-N)"
    if name.startswith("pass-through"):
        return "pipeline worker (pass-through)"
    if name.startswith("forward-"):
        return "forwarder (forward-DEST)"
    if "reactor" in name or name.startswith(("RequestorThread", "AcceptorThread")):
        return "pynetdicom association threads (receive, C-STORE handler, send)"
    return f"other: {name}"


def summarise_profile(raw: Path, top: int = 12) -> dict[str, Any]:
    """py-spy raw (collapsed) stacks -> samples per thread role, and for the pipeline worker and
    the decode process the functions their samples are spent in (inclusive, by function)."""
    roles: Counter[str] = Counter()
    pipeline: Counter[str] = Counter()
    decode: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        processes = [f for f in frames if f.startswith("process ")]
        thread = next((f for f in frames if f.startswith("thread (")), "thread (?)")
        calls = [_frame_name(f) for f in frames if not f.startswith(("process ", "thread ("))]
        role = thread_role(thread, len(processes) > 1)
        roles[role] += count
        total += count
        marker = _first(calls, "Pipeline.process")
        if role.startswith("pipeline") and marker is not None:
            for name in set(calls[calls.index(marker) + 1 :]):
                pipeline[name] += count
        marker = _first(calls, "guarded_preprocess_file")
        if role.startswith("decode") and marker is not None:
            for name in set(calls[calls.index(marker) + 1 :]):
                decode[name] += count

    def shares(counter: Counter[str], base: int) -> list[tuple[str, int, float]]:
        return [(n, c, round(100 * c / max(base, 1), 1)) for n, c in counter.most_common(top)]

    pipeline_total = roles["pipeline worker (classify-N)"]
    decode_total = roles["decode worker process (guard)"]
    return {"samples": total, "roles": shares(roles, total),
            "pipeline_worker": shares(pipeline, pipeline_total),
            "decode_process": shares(decode, decode_total)}  # fmt: skip


def _first(calls: list[str], prefix: str) -> str | None:
    return next((c for c in calls if c.startswith(prefix)), None)


def _frame_name(frame: str) -> str:
    """"func (path/to/file.py:123)" -> "func (to/file.py)": one entry per function."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(path).parts
    short = "/".join(parts[-2:]) if len(parts) >= 2 else path
    return f"{name} ({short})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few images per set (smoke run)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every N by this")
    parser.add_argument("--targets", default="relay,node",
                        help="relay, node, relay-chunked (relay receiving to a file)")
    parser.add_argument("--profile", action="store_true",
                        help="also record the node with py-spy (timings of that run are skewed)")
    parser.add_argument("--max-pdu", type=int, default=65536,
                        help="receive max PDU for relay and node (default: the node's 64 KiB; "
                        "0: unlimited)")
    parser.add_argument("--workers", type=int, default=1, help="the node's classify.workers")
    parser.add_argument("--nice", type=int, default=None,
                        help="the node's classify.nice (default: the node's default)")
    parser.add_argument("--only", default="",
                        help="run only input sets whose name contains this (several: a|b)")
    parser.add_argument("--output", default="node_throughput.json")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-throughput-"))
    try:
        sets: dict[str, list[tuple[list[Template], int]]] = {}
        all_sets = {**{name: {name: spec} for name, spec in INPUT_SETS.items()}, **MIXED_SETS}
        for name, streams in all_sets.items():
            if args.only and not any(o in name for o in args.only.split("|")):
                continue
            sets[name] = []
            for files, full_n, quick_n in streams.values():
                templates = [Template(SHARED / CORPUS / f, workdir) for f in files]
                count = quick_n if args.quick else max(len(files), round(full_n * args.scale))
                sets[name].append((templates, count))
        results: dict[str, Any] = {}
        # raw stacks stay in the temporary folder (about 1 MB); the summary goes into the JSON
        profile_raw = workdir / "node_profile.raw.txt" if args.profile else None
        for kind in args.targets.split(","):
            print(f"-- {kind} (load {load_average()})", flush=True)
            results[kind] = run_target(kind, workdir / kind, sets,
                                       profile_raw if kind == "node" else None,
                                       args.max_pdu, args.workers, args.nice)  # fmt: skip
        report(results, sets, args, profile_raw)
    except BaseException:
        for log in sorted(workdir.rglob("*.out")):  # what the servers said, for the post-mortem
            print(f"--- {log.relative_to(workdir)} (last lines)\n" + "\n".join(
                log.read_text(errors="replace").splitlines()[-25:]))  # fmt: skip
        raise
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def report(results: dict[str, Any], sets: dict, args: argparse.Namespace,
           profile_raw: Path | None) -> None:
    rows = []
    for name in sets:
        for kind in results:
            r = results[kind][name]
            rows.append([name, kind, r["n"], f"{r['images_per_s']:.1f}",
                         f"{r['reply_ms_median']:.1f}", f"{r['reply_ms_p95']:.1f}",
                         f"{r['receive_to_forwarded_ms_median']:.1f}",
                         f"{r['cpu_ms_per_image']:.1f}", f"{r['peak_rss_mb_in_set']:.0f}",
                         r["load_before"]])  # fmt: skip
    print_table(["input set", "target", "N", "images/s", "reply ms median", "reply ms p95",
                 "recv->fwd ms median", "CPU ms/image", "peak RSS MB",
                 "load before (1/5/15 min)"], rows)  # fmt: skip
    print()
    krows = []
    for name in sets:
        for kind in results:
            for image_kind, k in results[kind][name]["by_kind"].items():
                krows.append([name, kind, image_kind, k["n"], f"{k['images_per_s']:.1f}",
                              f"{k['reply_ms_median']:.1f}", f"{k['first_reply_ms']:.1f}",
                              f"{k['receive_to_forwarded_ms_median']:.1f}",
                              f"{k['receive_to_forwarded_ms_p95']:.1f}",
                              f"{k['first_receive_to_forwarded_ms']:.1f}"])  # fmt: skip
    print_table(["input set", "target", "kind", "N", "images/s", "reply ms median",
                 "first reply ms", "recv->fwd ms median", "recv->fwd ms p95",
                 "first recv->fwd ms"], krows)  # fmt: skip
    for kind in results:
        for name in sets:
            for incident in results[kind][name]["lost_associations"]:
                print(f"{kind}, {name}: association lost at image {incident['index']} after "
                      f"{incident['hung_ms'] / 1000:.1f} s; re-associated")  # fmt: skip
    if "node" in results:
        print("\nnode log rows (median ms): " + "; ".join(
            f"{name}: processing {r.get('node_processing_ms_median', 0):.1f}, "
            f"inference {r.get('node_inference_ms_median', 0):.1f}"
            for name in sets for r in [results["node"][name]]))  # fmt: skip
    comparison = compare(results, sets) if {"relay", "node"} <= results.keys() else {}
    for kind in results:
        peaks = results[kind]["process_peak_rss_mb"]
        parts = ", ".join(f"{k} {v:.0f}" for k, v in peaks.items() if k != "total")
        verdict = f"  {_ok(peaks['main'] <= 250)} (goal <= 250)" if kind == "node" else ""
        print(f"{kind} peak RSS (VmHWM, whole run, MB): {parts}{verdict}")
    payload: dict[str, Any] = {"quick": args.quick, "scale": args.scale, "goals": GOALS,
                               "max_pdu": args.max_pdu, "node_workers": args.workers,
                               "node_nice": args.nice,
                               "results": results, "comparison": comparison}  # fmt: skip
    if profile_raw is not None and profile_raw.is_file():
        summary = summarise_profile(profile_raw)
        payload["profile"] = summary
        print(f"\npy-spy on the node: {summary['samples']} samples (100 Hz, non-idle threads)")
        for title, key in (("by thread role", "roles"),
                           ("pipeline worker, inside Pipeline.process", "pipeline_worker"),
                           ("decode process", "decode_process")):  # fmt: skip
            print(f"{title}:")
            for name, count, share in summary[key]:
                print(f"  {share:5.1f}%  {count:6d}  {name}")
    print(f"\nwrote {write_json(args.output, payload)}")


def compare(results: dict[str, Any], sets: dict) -> dict[str, Any]:
    """Node against relay, per set and per kind, with the issue's goals."""
    print()
    comparison: dict[str, Any] = {}
    crows = []
    for name in sets:
        relay, node = results["relay"][name], results["node"][name]
        entry = comparison[name] = {
            "throughput_ratio": node["images_per_s"] / relay["images_per_s"],
            "reply_ratio": node["reply_ms_median"] / relay["reply_ms_median"],
            "cpu_ratio": node["cpu_ms_per_image"] / relay["cpu_ms_per_image"],
            "by_kind": {},
        }
        crows.append([name, "all", f"{entry['throughput_ratio']:.2f}x",
                      _ok(entry["throughput_ratio"] >= 0.9), f"{entry['reply_ratio']:.2f}x",
                      _ok(entry["reply_ratio"] <= 1.1), "", "", f"{entry['cpu_ratio']:.2f}x",
                      ""])  # fmt: skip
        for image_kind, k in node["by_kind"].items():
            r = relay["by_kind"][image_kind]
            latency = k["receive_to_forwarded_ms_median"] / r["receive_to_forwarded_ms_median"]
            first = k["first_receive_to_forwarded_ms"] / max(
                k["receive_to_forwarded_ms_median"], 1e-9)
            entry["by_kind"][image_kind] = {
                "throughput_ratio": k["images_per_s"] / r["images_per_s"],
                "latency_ratio": latency,
                "first_over_steady": first,
            }
            pure = len(node["by_kind"]) == 1  # CPU per image splits only where one kind ran
            crows.append([
                name, image_kind, f"{k['images_per_s'] / r['images_per_s']:.2f}x",
                _ok(k["images_per_s"] / r["images_per_s"] >= 0.9), "", "",
                f"{latency:.2f}x",
                _ok(latency <= 2.0) if image_kind == "pass-through" else "",
                f"{entry['cpu_ratio']:.2f}x" if pure else "",
                _ok(entry["cpu_ratio"] <= 1.3) if pure and image_kind == "pass-through" else "",
            ])  # fmt: skip
    print_table(["input set", "kind", "node/relay images/s", ">= 0.9x", "reply median",
                 "<= 1.1x", "recv->fwd median", "<= 2x (pass-through)", "CPU ms/image",
                 "<= 1.3x (pass-through)"], crows)  # fmt: skip
    return comparison


def _ok(passed: bool) -> str:
    return "yes" if passed else "NO"


if __name__ == "__main__":
    main()
