"""Pipeline: the worker threads that take spooled instances in arrival order and run
classify -> tag -> log -> route, then hand the result to the forwarders.

Two lanes: instances the node may classify (CR, DX) queue for the classify workers, each owning
one warmed ViewClassifier (LiteRT interpreters are not thread-safe); every other instance (CT,
MR, SR, ...) takes the pass-through lane, one worker that only reads the header, logs and
routes, so it never waits behind inference (`classify.pass_through_lane`).
"""

from __future__ import annotations

import io
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import pydicom
from pydicom.dataset import Dataset

from dicomnode import route as routing
from dicomnode import tag
from dicomnode.classify import Prediction, ViewClassifier
from dicomnode.config import LogConfig, NodeConfig
from dicomnode.guard import IsolatedDecoder, Limits, check_file, preprocess_guarded
from dicomnode.identity import set_implementation
from dicomnode.logdb.entry import InstanceLogEntry, patient_id_in_configured_form
from dicomnode.preprocess import PreprocessError
from dicomnode.series_views import SeriesViews
from dicomnode.spool import INCOMING, PROCESSING, Spool, write_atomic

log = logging.getLogger(__name__)

_STOP = object()
DEFER_SIZE = 64 * 1024  # bytes; values larger than this are read from the file on access


class InstanceLog(Protocol):
    def record_instance(self, entry: InstanceLogEntry) -> int | None: ...


def patient_id_for_log(patient_id: str | None, config: LogConfig) -> str | None:
    # The log's own helper, so an auditor's query hashes a typed ID the same way.
    return patient_id_in_configured_form(patient_id, config.patient_id, config.patient_id_salt)


def _text(ds: Dataset | None, keyword: str) -> str | None:
    if ds is None:
        return None
    try:
        value = ds.get(keyword)
    except Exception:  # a malformed element: the log says None rather than the worker dying
        return None
    text = str(value).strip() if value is not None else ""
    return text or None


def _parse_time(text: str | None) -> datetime:
    try:
        return datetime.fromisoformat(str(text))
    except (TypeError, ValueError):
        return datetime.now(timezone.utc)


class Pipeline:
    def __init__(
        self,
        config: NodeConfig,
        spool: Spool,
        instance_log: InstanceLog | None,
        on_dispatched: Callable[[list[str]], None],
        classifier_factory: Callable[[], ViewClassifier] | None = None,
    ) -> None:
        self.config = config
        self.spool = spool
        self.instance_log = instance_log
        self.on_dispatched = on_dispatched
        self.classifier_factory = classifier_factory
        self._queue: queue.Queue[Any] = queue.Queue()  # the classify lane
        self._pass_through: queue.Queue[Any] = queue.Queue()  # never classified: no AI wait
        self._workers: list[threading.Thread] = []
        self._busy = 0
        self._busy_lock = threading.Lock()
        self.model_sha256: str | None = None  # of the loaded model, once started
        # Hostile-input limits: the `guard:` config section (security), defaults until it exists.
        guard = getattr(config, "guard", None)
        self.limits = guard.limits() if guard is not None else Limits()
        self.isolate_decode = bool(getattr(guard, "isolate", True))
        self._decoders: list[IsolatedDecoder] = []
        self._stopping = threading.Event()
        self.series_views = SeriesViews()

    @property
    def classifies(self) -> bool:
        return bool(self.config.classify.modalities)

    def lane_of(self, sop_class_uid: str | None) -> queue.Queue[Any]:
        """The pass-through lane for instances the node will not classify, by SOP class (known
        from the C-STORE request, before any parsing); the classify lane for the rest."""
        if (self.config.classify.pass_through_lane and sop_class_uid
                and (not self.classifies or tag.not_taggable(sop_class_uid) is not None)):
            return self._pass_through
        return self._queue

    def start(self) -> None:
        """Load and warm one classifier (and decode process) per worker, then resume the spool."""
        workers: list[tuple[ViewClassifier | None, IsolatedDecoder | None]] = []
        for _ in range(self.config.classify.workers):
            classifier = decoder = None
            if self.classifies and self.classifier_factory is not None:
                classifier = self.classifier_factory()
                if self.isolate_decode:
                    decoder = IsolatedDecoder(self.limits, nice=self.config.classify.nice)
                    decoder.start()  # spawn now: the first image must not pay for it
                    self._decoders.append(decoder)
            workers.append((classifier, decoder))
        loaded = [c for c, _ in workers if c is not None]
        self.model_sha256 = loaded[0].sha256 if loaded else None
        resumed = self.spool.resume()
        for name in self.spool.names(INCOMING):
            self.submit(self.spool.dir(INCOMING) / f"{name}.dcm")
        if resumed:
            log.info("resumed %d instances left in processing/", resumed)
        for index, (classifier, decoder) in enumerate(workers):
            worker = threading.Thread(
                target=self._work, args=(classifier, decoder), name=f"classify-{index}", daemon=True
            )
            worker.start()
            self._workers.append(worker)
        if self.config.classify.pass_through_lane:
            worker = threading.Thread(target=self._work, args=(None, None, self._pass_through),
                                      name="pass-through", daemon=True)  # fmt: skip
            worker.start()
            self._workers.append(worker)

    def submit(self, path: Path, sop_class_uid: str | None = None) -> None:
        """Queue a spooled instance in its lane; the receiver passes the SOP class it has, others
        (the drop folder, the start-up scan) let it be read from the sidecar."""
        if sop_class_uid is None:
            sop_class_uid = self.spool.read_meta(path).get("sop_class_uid")
        self.lane_of(sop_class_uid).put(path.stem)

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the image in hand, not the backlog: what is queued stays in incoming/ and is
        resumed by the next start, so SIGTERM with a thousand images waiting is still quick."""
        self._stopping.set()
        for _ in self._workers:
            self._queue.put(_STOP)
            self._pass_through.put(_STOP)
        for worker in self._workers:
            worker.join(timeout)
        self._workers.clear()
        for decoder in self._decoders:
            decoder.close()
        self._decoders.clear()

    def idle(self) -> bool:
        with self._busy_lock:
            busy = self._busy
        return (busy == 0 and self._queue.empty() and self._pass_through.empty()
                and not self.spool.names(INCOMING))

    def _work(self, classifier: ViewClassifier | None, decoder: IsolatedDecoder | None,
              lane: queue.Queue[Any] | None = None) -> None:
        if lane is None:  # the classify lane: below receiving and forwarding in CPU priority
            lower_thread_priority(self.config.classify.nice)
        lane = self._queue if lane is None else lane
        while True:
            name = lane.get()
            if name is _STOP or self._stopping.is_set():
                return
            with self._busy_lock:
                self._busy += 1
            try:
                self.process(name, classifier, decoder)
            except Exception as exc:  # a bug must not stop the worker or lose the instance
                log.exception("pipeline failed on %s", name)
                meta = self.spool.read_meta(self.spool.dir(PROCESSING) / f"{name}.dcm")
                try:
                    self.spool.fail_processing(name, f"{type(exc).__name__}: {exc}", meta)
                except OSError:
                    log.exception("could not move %s to failed/", name)
            finally:
                with self._busy_lock:
                    self._busy -= 1

    def process(
        self,
        name: str,
        classifier: ViewClassifier | None,
        decoder: IsolatedDecoder | None = None,
    ) -> InstanceLogEntry | None:
        path = self.spool.claim(name)
        if path is None:  # another worker has it, or it was queued twice
            return None
        started = time.perf_counter()
        meta = self.spool.read_meta(path)
        entry = InstanceLogEntry(
            received_at=_parse_time(meta.get("received_at")),
            calling_ae=str(meta.get("calling_ae", "")),
            called_ae=str(meta.get("called_ae", "")),
            peer_address=str(meta.get("peer_address", "")),
            sop_class_uid=str(meta.get("sop_class_uid", "")),
            sop_instance_uid=str(meta.get("sop_instance_uid", "")),
            study_instance_uid=None,
            series_instance_uid=None,
            modality=None,
            patient_id=None,
            transfer_syntax_uid=meta.get("transfer_syntax_uid"),
            action="skipped",
            spool_path=str(path),
            decision_key=name,
        )
        payload = path
        ds: Dataset | None = None
        try:
            # deflate bombs are refused before pydicom inflates them in this process (security)
            check_file(path, self.limits, meta.get("transfer_syntax_uid"))
            # Large values (pixel data) stay on disk until used: the decode process reads the
            # pixels itself, so this process holds headers only unless it writes a tagged copy.
            ds = pydicom.dcmread(path, defer_size=DEFER_SIZE)
            self._describe(entry, ds)
        except Exception as exc:
            ds = None
            entry.action = "unreadable"
            entry.error = f"cannot parse dataset: {type(exc).__name__}: {exc}"
        if ds is not None and (entry.modality or "").upper() in self._modalities():
            not_taggable = tag.not_taggable(entry.sop_class_uid or _text(ds, "SOPClassUID"))
            if not_taggable is None:
                payload = self._classify_and_tag(name, path, ds, entry, classifier, decoder, meta)
            else:  # forwarded untouched: this IOD has no ViewPosition with these terms
                entry.action, entry.decision_reason = "skipped", not_taggable
        series_note = self.series_views.note(
            entry.sop_class_uid, entry.series_instance_uid, entry.sop_instance_uid,
            entry.view_position_after)
        if series_note:
            entry.decision_reason = "; ".join(filter(None, (entry.decision_reason, series_note)))
        entry.processing_ms = (time.perf_counter() - started) * 1000.0
        decision = routing.route(self.config, entry, ds)
        entry.routing = decision.as_log()
        if getattr(self, "metrics", None) is not None:  # set by metrics.attach_to_node
            self.metrics.image_processed(entry)
        instance_id = None
        if self.instance_log is not None:
            try:
                instance_id = self.instance_log.record_instance(entry)
            except Exception:  # the image still goes on; the failure is in the node's log
                log.exception("could not log %s", entry.sop_instance_uid)
        meta = {**meta, "instance_id": instance_id, "action": entry.action}
        self.spool.dispatch(name, payload, decision.destinations, meta)
        log_image_line(entry, decision)
        self.on_dispatched(decision.destinations)
        return entry

    def _modalities(self) -> set[str]:
        return {m.upper() for m in self.config.classify.modalities}

    def _describe(self, entry: InstanceLogEntry, ds: Dataset) -> None:
        entry.study_instance_uid = _text(ds, "StudyInstanceUID")
        entry.series_instance_uid = _text(ds, "SeriesInstanceUID")
        entry.modality = _text(ds, "Modality")
        entry.patient_id = patient_id_for_log(_text(ds, "PatientID"), self.config.log)
        # entry.sop_instance_uid stays the C-STORE's Affected SOP Instance UID: the identity the
        # instance travels under (forward attempts are logged by it), even where a malformed
        # dataset carries a different one inside.
        entry.sop_instance_uid = entry.sop_instance_uid or _text(ds, "SOPInstanceUID") or ""
        entry.view_position_before = _view_position(ds)
        entry.view_position_after = entry.view_position_before

    def _classify_and_tag(
        self,
        name: str,
        path: Path,
        ds: Dataset,
        entry: InstanceLogEntry,
        classifier: ViewClassifier | None,
        decoder: IsolatedDecoder | None,
        meta: dict[str, Any],
    ) -> Path:
        """Returns the file to forward: the received one, or a tagged copy in processing/."""
        if classifier is None:
            entry.action, entry.error = "skipped", "no classifier loaded"
            return path
        try:
            # Guarded decode: size limits from the header, and (isolated) a killable process.
            grey = (decoder.preprocess_file(path, self.limits.deadline_s(ds)) if decoder
                    else preprocess_guarded(ds, self.limits))
        except PreprocessError as exc:
            entry.action, entry.error = "unreadable", str(exc)
            return path
        prediction: Prediction = classifier.predict(grey, self.config.tag.threshold_overrides())
        record_prediction(entry, prediction, classifier.sha256)
        decision = tag.decide(entry.view_position_before, prediction, self.config.tag,
                              tag.body_part_of(ds))
        entry.action = decision.action
        entry.decision_reason = decision.reason
        if not decision.writes:
            return path
        tag.apply(
            ds, decision, prediction, classifier.sha256, self.config.tag,
            source_of_previous_values=str(meta.get("calling_ae", "")),
        )  # fmt: skip
        try:
            buffer = io.BytesIO()
            set_implementation(ds.file_meta)  # the node wrote this file (PS3.10 7.1)
            ds.save_as(buffer)  # as read: same transfer syntax, encapsulated pixel data as-is
            tagged = self.spool.dir(PROCESSING) / f"{name}.out"
            write_atomic(tagged, buffer.getvalue(), self.spool.dir("tmp"))
        except Exception as exc:
            entry.action = "unreadable"
            entry.error = f"cannot write the tagged dataset: {type(exc).__name__}: {exc}"
            return path
        entry.view_position_after = decision.after
        return tagged


def log_image_line(entry: InstanceLogEntry, decision: routing.RoutingDecision) -> None:
    """The operator's one line per image; an image routed nowhere is a WARNING unless a rule
    discarded it on purpose (a config that could do that is refused at start and reload)."""
    where = ", ".join(decision.destinations)
    if not where:
        where = (f"discarded by {decision.rules[-1]}" if decision.action == "discard"
                 else "NOWHERE")
    level = logging.WARNING if where == "NOWHERE" else logging.INFO
    log.log(level, "%s from %s: %s%s -> %s (%.0f ms)", entry.sop_instance_uid, entry.calling_ae,
            entry.action, f" {entry.view_position_after}" if entry.view_position_after else "",
            where, entry.processing_ms or 0.0)


def record_prediction(entry: InstanceLogEntry, prediction: Prediction, sha256: str) -> None:
    """The model's output as the log keeps it: every class probability and the thresholds."""
    entry.label = prediction.label
    entry.probability_ap = prediction.probabilities.get("AP")
    entry.probability_pa = prediction.probabilities.get("PA")
    entry.probability_la = prediction.probabilities.get("LAT")
    entry.probability_other = prediction.probabilities.get("OTHER")
    entry.confidence = prediction.confidence
    entry.model_sha256 = sha256
    entry.inference_ms = prediction.inference_ms
    entry.thresholds = {"source": prediction.threshold_source, **(prediction.thresholds or {})}


def lower_thread_priority(nice: int) -> None:
    """Raise this thread's niceness (Linux: a thread id is a valid PRIO_PROCESS target)."""
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + nice)
    except OSError as exc:  # not permitted in some sandboxes: run at normal priority
        log.warning("could not lower the classify worker's priority: %s", exc)


def _view_position(ds: Dataset) -> str | None:
    try:
        return tag.current_view(ds)
    except Exception:
        return None
