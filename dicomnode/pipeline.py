"""Pipeline: classify -> tag -> log -> route for one spooled instance, then the hand-off to the
forwarders. Which worker runs it, and when, is dicomnode.lanes.

A classify worker gives each decode at most `guard.patience_s`: past it, `process` hands the image
to the slow lane (OutlastedPatience), which runs it again with its full size-scaled deadline.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset

from dicomnode import route as routing
from dicomnode import tag
from dicomnode.classify import Prediction, ViewClassifier
from dicomnode.config import LogConfig, NodeConfig
from dicomnode.guard import DecodeTimeout, IsolatedDecoder, Limits, check_file, preprocess_guarded
from dicomnode.lanes import Lanes
from dicomnode.logdb.entry import InstanceLogEntry, patient_id_in_configured_form, record_prediction
from dicomnode.preprocess import PreprocessError
from dicomnode.series_views import SeriesViews
from dicomnode.spool import PROCESSING, Spool, write_atomic

log = logging.getLogger(__name__)

DEFER_SIZE = 64 * 1024  # bytes; values larger than this are read from the file on access


class OutlastedPatience(Exception):
    """A classify-lane decode ran past guard.patience_s, or the image declares more than
    guard.slow_lane_mpixel: it moves to the slow lane."""


class InstanceLog(Protocol):
    # preview: the model input as a PNG (web.previews on and the film classified), else None
    def record_instance(self, entry: InstanceLogEntry,
                        preview: bytes | None = None) -> int | None: ...


def preview_png(model_input: np.ndarray) -> bytes:
    """The model input (uint8 224x224 grey) as the small PNG the log keeps (`web.previews`):
    lossless, so a reviewer sees exactly what the model saw."""
    buffer = io.BytesIO()
    Image.fromarray(model_input, mode="L").save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


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
        self.model_sha256: str | None = None  # of the loaded model, once started
        # Hostile-input limits: the `guard:` config section (security), defaults until it exists.
        guard = getattr(config, "guard", None)
        self.limits = guard.limits() if guard is not None else Limits()
        self.isolate_decode = bool(getattr(guard, "isolate", True))
        self.series_views = SeriesViews()
        self.lanes = Lanes(self)  # the worker threads that call process()

    @property
    def classifies(self) -> bool:
        return bool(self.config.classify.modalities)

    def start(self) -> None:
        self.lanes.start()

    def submit(self, path: Path, sop_class_uid: str | None = None) -> None:
        self.lanes.submit(path, sop_class_uid)

    def stop(self, timeout: float = 30.0) -> None:
        self.lanes.stop(timeout)

    def idle(self) -> bool:
        return self.lanes.idle()

    def process(
        self,
        name: str,
        classifier: ViewClassifier | None,
        decoder: IsolatedDecoder | None = None,
        patience: float | None = None,
        slow_lane: bool = False,
    ) -> InstanceLogEntry | None:
        """classify -> tag -> log -> route one spooled instance; None when another worker has
        it, or when its decode outlasted `patience` and it went to the slow lane."""
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
        preview: bytes | None = None
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
                try:
                    payload, model_input = self._classify_and_tag(
                        name, path, ds, entry, classifier, decoder, meta, patience)
                except OutlastedPatience:
                    self.lanes.to_slow_lane(name)
                    return None
                if model_input is not None and self.config.web.previews:
                    preview = preview_png(model_input)
                if slow_lane:
                    entry.decision_reason = "; ".join(filter(None, (
                        entry.decision_reason, "decoded in the slow lane")))
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
                instance_id = self.instance_log.record_instance(entry, preview=preview)
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
        # the log keeps 64 characters (SH and CS are 16: a longer value is a malformed file)
        entry.accession_number = (_text(ds, "AccessionNumber") or "")[:64] or None
        entry.body_part_examined = (_text(ds, "BodyPartExamined") or "")[:64] or None
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
        patience: float | None = None,
    ) -> tuple[Path, np.ndarray | None]:
        """Returns the file to forward (the received one, or a tagged copy in processing/) and
        the model input when the film was decoded (for its preview).
        Raises OutlastedPatience when the decode needs longer than `patience` (and its own
        deadline is longer still): the slow lane retries it with that deadline."""
        if classifier is None:
            entry.action, entry.error = "skipped", "no classifier loaded"
            return path, None
        deadline = self.limits.deadline_s(ds)
        impatient = patience is not None and decoder is not None and patience < deadline
        megapixels = self.limits.declared_mpixel(ds) or 0.0
        if impatient and megapixels > self.limits.slow_lane_mpixel:
            log.info("%s declares %.0f megapixels (over guard.slow_lane_mpixel): decoding it in "
                     "the slow lane", entry.sop_instance_uid, megapixels)  # fmt: skip
            raise OutlastedPatience
        try:
            # Guarded decode: size limits from the header, and (isolated) a killable process.
            grey = (decoder.preprocess_file(path, patience if impatient else deadline) if decoder
                    else preprocess_guarded(ds, self.limits))
        except DecodeTimeout as exc:
            if impatient:
                log.warning("decoding %s outlasted guard.patience_s (%g s): retrying it in the "
                            "slow lane with its %g s deadline", entry.sop_instance_uid, patience,
                            deadline)  # fmt: skip
                raise OutlastedPatience from exc
            entry.action, entry.error = "unreadable", str(exc)
            return path, None
        except PreprocessError as exc:
            entry.action, entry.error = "unreadable", str(exc)
            return path, None
        prediction: Prediction = classifier.predict(grey, self.config.tag.threshold_overrides())
        record_prediction(entry, prediction, classifier.sha256)
        decision = tag.decide(entry.view_position_before, prediction, self.config.tag,
                              tag.body_part_of(ds))
        entry.action = decision.action
        entry.decision_reason = decision.reason
        if not decision.writes:
            return path, grey
        try:
            # reads elements the decode never touched (SOP Class, the coercion sequences): one
            # that pydicom cannot convert (a mangled VR) must forward the file untouched, not
            # park it in failed/ as a node bug (found by the decode fuzz campaign)
            tag.apply(
                ds, decision, prediction, classifier.sha256, self.config.tag,
                source_of_previous_values=str(meta.get("calling_ae", "")),
            )  # fmt: skip
        except Exception as exc:
            entry.action = "unreadable"
            entry.error = f"cannot tag the dataset: {type(exc).__name__}: {exc}"
            return path, grey
        try:
            data = tag.encode_tagged(ds, decision.after)
            tagged = self.spool.dir(PROCESSING) / f"{name}.out"
            write_atomic(tagged, data, self.spool.dir("tmp"))
        except Exception as exc:
            entry.action = "unreadable"
            entry.error = f"cannot write the tagged dataset: {type(exc).__name__}: {exc}"
            return path, grey
        entry.view_position_after = decision.after
        return tagged, grey


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


def _view_position(ds: Dataset) -> str | None:
    try:
        return tag.current_view(ds)
    except Exception:
        return None
