"""Lanes: the worker threads that take spooled instances in arrival order and run them through
the pipeline (dicomnode.pipeline.Pipeline.process), and the queues they take them from.

- The classify lane: instances the node may classify (CR, DX), `classify.workers` threads, each
  owning one warmed ViewClassifier (LiteRT interpreters are not thread-safe) and one decode
  process. Each decode gets at most `guard.patience_s` there.
- The pass-through lane: every other instance (CT, MR, SR, ...), one worker that only reads the
  header, logs and routes, so it never waits behind inference (`classify.pass_through_lane`).
- The slow lane: images whose decode outlasted guard.patience_s (or that declare more than
  guard.slow_lane_mpixel), one worker that decodes each with its whole size-scaled deadline. A
  huge film, or a codestream that decodes slowly on purpose, so holds only this lane. The image
  waits in incoming/ meanwhile, as any queued image does.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dicomnode import tag
from dicomnode.classify import ViewClassifier
from dicomnode.guard import IsolatedDecoder
from dicomnode.spool import INCOMING, PROCESSING

if TYPE_CHECKING:
    from dicomnode.pipeline import Pipeline

log = logging.getLogger(__name__)

_STOP = object()


class Lanes:
    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.config = pipeline.config
        self.spool = pipeline.spool
        self._queue: queue.Queue[Any] = queue.Queue()  # the classify lane
        self._pass_through: queue.Queue[Any] = queue.Queue()  # never classified: no AI wait
        self._slow: queue.Queue[Any] = queue.Queue()  # decodes that outlasted guard.patience_s
        self._workers: list[threading.Thread] = []
        self._decoders: list[IsolatedDecoder] = []
        self._busy = 0
        self._busy_lock = threading.Lock()
        self._stopping = threading.Event()

    def lane_of(self, sop_class_uid: str | None) -> queue.Queue[Any]:
        """The pass-through lane for instances the node will not classify, by SOP class (known
        from the C-STORE request, before any parsing); the classify lane for the rest."""
        if (self.config.classify.pass_through_lane and sop_class_uid
                and (not self.pipeline.classifies or tag.not_taggable(sop_class_uid) is not None)):
            return self._pass_through
        return self._queue

    def start(self) -> None:
        """Load and warm one classifier (and decode process) per worker, then resume the spool."""
        workers: list[tuple[ViewClassifier | None, IsolatedDecoder | None]] = []
        for _ in range(self.config.classify.workers):
            classifier = decoder = None
            if self.pipeline.classifies and self.pipeline.classifier_factory is not None:
                classifier = self.pipeline.classifier_factory()
                if self.pipeline.isolate_decode:
                    decoder = self._new_decoder()
                    decoder.start()  # spawn now: the first image must not pay for it
                    self._decoders.append(decoder)
            workers.append((classifier, decoder))
        loaded = [c for c, _ in workers if c is not None]
        self.pipeline.model_sha256 = loaded[0].sha256 if loaded else None
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
        if self._decoders and self.pipeline.limits.patience_s is not None:
            worker = threading.Thread(target=self._work_slow_lane, name="classify-slow",
                                      daemon=True)  # fmt: skip
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
            self._slow.put(_STOP)
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
                and self._slow.empty() and not self.spool.names(INCOMING))

    def _work(self, classifier: ViewClassifier | None, decoder: IsolatedDecoder | None,
              lane: queue.Queue[Any] | None = None) -> None:
        if lane is None:  # the classify lane: below receiving and forwarding in CPU priority
            lower_thread_priority(self.config.classify.nice)
        patience = self.pipeline.limits.patience_s if lane is None else None
        lane = self._queue if lane is None else lane
        while True:
            name = lane.get()
            if name is _STOP or self._stopping.is_set():
                return
            self._process_one(name, classifier, decoder, patience)

    def _work_slow_lane(self) -> None:
        """Images whose decode outlasted guard.patience_s, each given its full deadline. Its
        classifier and decode process start with the first such image, not with the node."""
        lower_thread_priority(self.config.classify.nice)
        classifier: ViewClassifier | None = None
        decoder: IsolatedDecoder | None = None
        while True:
            name = self._slow.get()
            if name is _STOP or self._stopping.is_set():
                return
            if decoder is None:
                assert self.pipeline.classifier_factory is not None  # started when classifying
                classifier = self.pipeline.classifier_factory()
                decoder = self._new_decoder()
                self._decoders.append(decoder)
            self._process_one(name, classifier, decoder, patience=None, slow_lane=True)

    def _process_one(self, name: str, classifier: ViewClassifier | None,
                     decoder: IsolatedDecoder | None, patience: float | None,
                     slow_lane: bool = False) -> None:
        with self._busy_lock:
            self._busy += 1
        try:
            self.pipeline.process(name, classifier, decoder, patience, slow_lane)
        except Exception as exc:  # a bug must not stop the worker or lose the instance
            log.exception("pipeline failed on %s", name)
            spool = self.spool
            meta = spool.read_meta(spool.dir(PROCESSING) / f"{name}.dcm")
            try:
                spool.fail_processing(name, f"{type(exc).__name__}: {exc}", meta)
            except OSError:
                log.exception("could not move %s to failed/", name)
        finally:
            with self._busy_lock:
                self._busy -= 1

    def _new_decoder(self) -> IsolatedDecoder:
        return IsolatedDecoder(self.pipeline.limits, nice=self.config.classify.nice)

    def to_slow_lane(self, name: str) -> None:
        """A claimed image goes back to incoming/ and waits for the slow lane."""
        self.spool.unclaim(name)
        self._slow.put(name)


def lower_thread_priority(nice: int) -> None:
    """Raise this thread's niceness (Linux: a thread id is a valid PRIO_PROCESS target)."""
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + nice)
    except OSError as exc:  # not permitted in some sandboxes: run at normal priority
        log.warning("could not lower the classify worker's priority: %s", exc)
