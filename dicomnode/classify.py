"""Classify stage: run the shipped TFLite view model (AP, PA, lateral, other) through LiteRT.

The model file is verified against models/manifest.json (sha256) before it is loaded, the
manifest must carry the model's calibration and write thresholds (dicomnode.view_policy), and the
interpreter is warmed at start-up so the first image costs what the hundredth does.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dicomnode import view_policy
from dicomnode.preprocess import MODEL_SIZE
from dicomnode.view_policy import PolicyError, ViewCall

try:  # the maintained runtime; tflite_runtime only as a fallback for old images
    from ai_edge_litert.interpreter import Interpreter
except ImportError:  # pragma: no cover - exercised only where ai-edge-litert is absent
    from tflite_runtime.interpreter import Interpreter  # type: ignore[no-redef]

DEFAULT_MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
WARMUP_INVOKES = 3


class ModelError(RuntimeError):
    """The model or its manifest is missing, unreadable or does not match."""


@dataclass(frozen=True)
class Prediction:
    label: str  # most probable of view_policy.CLASSES: AP, PA, LAT, OTHER
    probabilities: dict[str, float]  # calibrated, over the four classes
    confidence: float
    inference_ms: float
    call: ViewCall | None = None  # the view call (what may be written, or why not)
    thresholds: dict[str, float] | None = None  # the thresholds that applied
    threshold_source: str = "manifest"  # manifest | config (tag.thresholds overrides)


@dataclass(frozen=True)
class ModelPolicy:
    """Calibration and write thresholds of one model, from its manifest."""

    calibration: dict[str, float]
    thresholds: dict[str, float]
    scores: str = "probabilities"  # what the output vector holds (view_policy.SCORES)

    @classmethod
    def from_manifest(cls, manifest: dict, where: str) -> ModelPolicy:
        if manifest.get("heads") != "views":
            raise ModelError(
                f"{where} describes a model with heads {manifest.get('heads', 'binary')!r}; this "
                "node needs the view model (heads 'views': AP, PA, lateral, other) with its "
                "calibration and thresholds, as `python -m training ship` writes it")
        scores = manifest.get("scores", "probabilities")  # manifests before logits had none
        if scores not in view_policy.SCORES:
            raise ModelError(f"{where}: scores must be one of {', '.join(view_policy.SCORES)}, "
                             f"got {scores!r}")
        try:
            view_policy.check_policy(manifest.get("calibration"), manifest.get("thresholds"),
                                     where)
        except PolicyError as exc:
            raise ModelError(str(exc)) from exc
        return cls(dict(manifest["calibration"]), dict(manifest["thresholds"]), scores)

    def effective(self, overrides: dict[str, float] | None) -> tuple[dict[str, float], str]:
        """(thresholds, source): the manifest's, with any configured overrides on top."""
        chosen = {k: v for k, v in (overrides or {}).items() if v is not None}
        if not chosen:
            return dict(self.thresholds), "manifest"
        return {**self.thresholds, **chosen}, "config"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_manifest(models_dir: Path) -> dict:
    manifest_path = models_dir / "manifest.json"
    try:
        return json.loads(manifest_path.read_text())
    except FileNotFoundError as exc:
        raise ModelError(f"no model manifest at {manifest_path}") from exc
    except json.JSONDecodeError as exc:
        raise ModelError(f"{manifest_path} is not valid JSON: {exc}") from exc


def resolve_model(models_dir: Path, variant: str | None
                  ) -> tuple[Path, str, list[str], ModelPolicy]:
    """Return (model path, expected sha256, labels, policy) for a variant in the manifest."""
    manifest = load_manifest(models_dir)
    variant = variant or manifest["default_variant"]
    variants = manifest.get("variants", {})
    if variant not in variants:
        raise ModelError(f"variant {variant!r} not in manifest; known: {sorted(variants)}")
    entry = variants[variant]
    policy = ModelPolicy.from_manifest(manifest, str(models_dir / "manifest.json"))
    return models_dir / entry["file"], entry["sha256"], list(manifest["labels"]), policy


class ViewClassifier:
    """A warmed LiteRT interpreter for one model file. Not thread-safe: one per worker."""

    def __init__(
        self,
        model_path: Path,
        labels: list[str],
        expected_sha256: str | None = None,
        num_threads: int = 1,
        policy: ModelPolicy | None = None,
    ) -> None:
        if policy is None:
            raise ModelError(f"{model_path}: no calibration and thresholds given; load the model "
                             "with ViewClassifier.from_manifest")
        self.policy = policy
        model_path = Path(model_path)
        if not model_path.is_file():
            raise ModelError(f"model file not found: {model_path}")
        self.sha256 = sha256_file(model_path)
        if expected_sha256 is not None and self.sha256 != expected_sha256:
            raise ModelError(
                f"{model_path} has sha256 {self.sha256}, manifest says {expected_sha256}: "
                "refusing a model that does not match its manifest"
            )
        self.model_path = model_path
        self.labels = labels
        self._interpreter = Interpreter(model_path=str(model_path), num_threads=num_threads)
        self._interpreter.allocate_tensors()
        input_detail = self._interpreter.get_input_details()[0]
        self._input_index = input_detail["index"]
        self._input_dtype = input_detail["dtype"]
        output_detail = self._interpreter.get_output_details()[0]
        self._output_index = output_detail["index"]
        expected_shape = (1, MODEL_SIZE, MODEL_SIZE, 3)
        if tuple(input_detail["shape"]) != expected_shape:
            raise ModelError(f"model input {input_detail['shape']} is not {expected_shape}")
        if tuple(output_detail["shape"]) != (1, view_policy.OUTPUT_WIDTH):
            raise ModelError(f"model output {output_detail['shape']} is not (1, "
                             f"{view_policy.OUTPUT_WIDTH}): not the view model this node reads")
        for _ in range(WARMUP_INVOKES):
            self.predict(np.zeros((MODEL_SIZE, MODEL_SIZE), dtype=np.uint8))

    @classmethod
    def from_manifest(
        cls, models_dir: Path = DEFAULT_MODELS_DIR, variant: str | None = None, num_threads: int = 1
    ) -> ViewClassifier:
        path, sha256, labels, policy = resolve_model(Path(models_dir), variant)
        return cls(path, labels, expected_sha256=sha256, num_threads=num_threads, policy=policy)

    def predict(self, grey224: np.ndarray,
                threshold_overrides: dict[str, float] | None = None) -> Prediction:
        """uint8 (224, 224) from dicomnode.preprocess -> Prediction (with the view call under
        the manifest's thresholds, or the configured overrides)."""
        grey = grey224[np.newaxis, :, :, np.newaxis]
        batch = np.repeat(grey, 3, axis=3).astype(self._input_dtype)
        started = time.perf_counter()
        self._interpreter.set_tensor(self._input_index, batch)
        self._interpreter.invoke()
        scores = view_policy.head_probabilities(
            self._interpreter.get_tensor(self._output_index)[0], self.policy.scores)
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        thresholds, source = self.policy.effective(threshold_overrides)
        call = view_policy.decide(scores, self.policy.calibration, thresholds)
        return Prediction(
            label=call.label,
            probabilities=call.probabilities,
            confidence=call.confidence,
            inference_ms=elapsed_ms,
            call=call,
            thresholds=thresholds,
            threshold_source=source,
        )
