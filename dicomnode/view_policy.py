"""What the model's outputs mean: calibrated class probabilities and the view call.

The view model (manifest `heads: views`) has one output vector holding three softmax heads:
  family  frontal | lateral | other   (other = oblique or odd projection: never written)
  ap_pa   AP | PA                     (trained only on frontal films whose view is known)
  region  chest | other               (AP vs PA is validated on chest films only)
The model emits either each head's logits (manifest `scores: logits`, models shipped since
2026-12-07) or its softmax probabilities (older manifests); `head_probabilities` turns logits into
probabilities in float64 before anything else looks at them. Logits matter for Int8: a softmax
inside the integer graph is quantised to steps of 1/256, which made calibrated confidences near
the write thresholds (0.98-0.997) jump between Int8 and FP32.
Each head is temperature-scaled with the manifest's `calibration`, then the manifest's
`thresholds` decide. This module is pure (numpy only) so that the node, `dicomnode classify` and
the training module's cross-validation all apply the very same rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HEADS = {"family": ("frontal", "lateral", "other"), "ap_pa": ("AP", "PA"),
         "region": ("chest", "other")}
HEAD_SLICES = {"family": slice(0, 3), "ap_pa": slice(3, 5), "region": slice(5, 7)}
OUTPUT_WIDTH = 7
# The model's classes as the log and routing rules name them.
CLASSES = ("AP", "PA", "LAT", "OTHER")
THRESHOLD_KEYS = ("frontal", "lateral", "ap_pa", "chest")
SCORES = ("probabilities", "logits")  # what the model's output vector holds (manifest `scores`)
CALIBRATION_KEYS = tuple(HEADS)
_FLOOR = 1e-6  # Int8 outputs can be exactly 0; log(0) would make every temperature meaningless


class PolicyError(ValueError):
    """A manifest's calibration or thresholds are missing or out of range."""


@dataclass(frozen=True)
class ViewCall:
    """What the model says about one image, after calibration and thresholds.

    `decided` is the view the node may write into an empty ViewPosition: "AP", "PA", "LAT", or
    None. `family_decided` is "frontal"/"lateral" when that much is certain (a frontal film whose
    AP vs PA is not certain has family "frontal" and decided None). `reason` says why nothing was
    decided (None when something was).
    """

    label: str  # the most probable of CLASSES
    probabilities: dict[str, float]  # calibrated, over CLASSES, sum 1
    confidence: float  # calibrated probability of `decided` (or of `label` when undecided)
    family: str  # most probable family
    family_confidence: float
    ap_pa: str  # more probable of AP/PA (meaningful only for frontal films)
    ap_pa_confidence: float
    chest_probability: float
    family_decided: str | None
    decided: str | None
    reason: str | None

    def heads(self) -> dict[str, float]:
        return {"family": round(self.family_confidence, 6),
                "ap_pa": round(self.ap_pa_confidence, 6),
                "chest": round(self.chest_probability, 6)}


def temperature_scale(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T): temperature scaling applied to probabilities (log p differs from the
    logits by a per-row constant, which softmax ignores)."""
    logits = np.log(np.clip(np.asarray(probabilities, dtype=np.float64), _FLOOR, 1.0))
    return _softmax(logits / float(temperature))


def _softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, shifted by the maximum so exp never overflows."""
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)


def head_probabilities(raw: np.ndarray, scores: str) -> np.ndarray:
    """(n, 7) or (7,) model outputs -> the same shape of per-head softmax probabilities (float64):
    a softmax per head for logits, the values as they are for probabilities."""
    if scores not in SCORES:
        raise PolicyError(f"scores must be one of {', '.join(SCORES)}, got {scores!r}")
    values = np.asarray(raw, dtype=np.float64)
    if scores == "probabilities":
        return values
    out = np.empty_like(values)
    for part in HEAD_SLICES.values():
        out[..., part] = _softmax(values[..., part])
    return out


def check_policy(calibration: object, thresholds: object, where: str = "manifest") -> None:
    """Raise PolicyError unless calibration and thresholds are complete and in range."""
    if not isinstance(calibration, dict) or not isinstance(thresholds, dict):
        raise PolicyError(
            f"{where} has no calibration/thresholds for the view model: it must carry "
            f"'calibration' ({', '.join(CALIBRATION_KEYS)}: temperatures) and 'thresholds' "
            f"({', '.join(THRESHOLD_KEYS)}: probabilities), as `python -m training ship` "
            "writes them; refusing a model whose write thresholds are unknown")
    for key in CALIBRATION_KEYS:
        value = calibration.get(key)
        if not isinstance(value, (int, float)) or not 0.05 <= float(value) <= 20.0:
            raise PolicyError(f"{where}: calibration.{key} must be a temperature between 0.05 "
                              f"and 20, got {value!r}")
    for key in THRESHOLD_KEYS:
        value = thresholds.get(key)
        if not isinstance(value, (int, float)) or not 0.5 <= float(value) <= 1.0:
            raise PolicyError(f"{where}: thresholds.{key} must be a probability between 0.5 "
                              f"and 1, got {value!r}")


def calibrated_heads(raw: np.ndarray, calibration: dict) -> dict[str, np.ndarray]:
    """(n, 7) or (7,) raw model outputs -> calibrated probabilities per head."""
    raw = np.atleast_2d(np.asarray(raw, dtype=np.float64))
    if raw.shape[-1] != OUTPUT_WIDTH:
        raise PolicyError(f"view model output has {raw.shape[-1]} values, expected "
                          f"{OUTPUT_WIDTH} (family 3, ap_pa 2, region 2)")
    return {head: temperature_scale(raw[:, part], float(calibration[head]))
            for head, part in HEAD_SLICES.items()}


def class_probabilities(heads: dict[str, np.ndarray]) -> np.ndarray:
    """(n, 4) over CLASSES: P(AP) = P(frontal)·P(AP | frontal), and so on."""
    family, ap_pa = heads["family"], heads["ap_pa"]
    return np.stack([family[:, 0] * ap_pa[:, 0], family[:, 0] * ap_pa[:, 1], family[:, 1],
                     family[:, 2]], axis=1)


def decide_many(raw: np.ndarray, calibration: dict, thresholds: dict) -> dict[str, np.ndarray]:
    """Vectorised view calls for (n, 7) outputs: arrays `decided` (object: AP/PA/LAT/None),
    `family_decided` (object: frontal/lateral/None) and the calibrated heads. Cross-validation
    uses this to choose thresholds; `decide` below is the same rule for one image."""
    heads = calibrated_heads(raw, calibration)
    family, ap_pa, region = heads["family"], heads["ap_pa"], heads["region"]
    best_family = family.argmax(axis=1)
    # A threshold of 1.0 means "never": the call is not made however sure the model is.
    frontal = ((best_family == 0) & (family[:, 0] >= thresholds["frontal"])
               & (thresholds["frontal"] < 1.0))
    lateral = ((best_family == 1) & (family[:, 1] >= thresholds["lateral"])
               & (thresholds["lateral"] < 1.0))
    ap_pa_sure = ((region[:, 0] >= thresholds["chest"]) & (ap_pa.max(axis=1) >= thresholds["ap_pa"])
                  & (thresholds["ap_pa"] < 1.0) & (thresholds["chest"] < 1.0))
    decided = np.full(len(family), None, dtype=object)
    decided[lateral] = "LAT"
    decided[frontal & ap_pa_sure] = np.where(ap_pa[frontal & ap_pa_sure, 0] >= 0.5, "AP", "PA")
    family_decided = np.full(len(family), None, dtype=object)
    family_decided[frontal] = "frontal"
    family_decided[lateral] = "lateral"
    return {"decided": decided, "family_decided": family_decided, **heads}


def decide(raw: np.ndarray, calibration: dict, thresholds: dict) -> ViewCall:
    """The view call for one image's raw outputs (7 values)."""
    many = decide_many(raw, calibration, thresholds)
    family, ap_pa, region = many["family"][0], many["ap_pa"][0], many["region"][0]
    classes = class_probabilities({"family": many["family"], "ap_pa": many["ap_pa"]})[0]
    probabilities = {name: float(p) for name, p in zip(CLASSES, classes, strict=True)}
    label = CLASSES[int(np.argmax(classes))]
    decided = many["decided"][0]
    family_decided = many["family_decided"][0]
    best_family = HEADS["family"][int(np.argmax(family))]
    ap_pa_label = "AP" if ap_pa[0] >= 0.5 else "PA"
    reason = None
    if decided is None:
        if family_decided == "frontal":
            if thresholds["ap_pa"] >= 1.0:
                reason = (f"frontal (p {family[0]:.3f}); this model does not write AP or PA "
                          f"(thresholds.ap_pa 1.0; p({ap_pa_label}) {ap_pa.max():.3f})")
            else:
                reason = (f"frontal (p {family[0]:.3f}) but AP vs PA not certain: "
                          f"p({ap_pa_label}) {ap_pa.max():.3f} (needs {thresholds['ap_pa']}), "
                          f"chest {region[0]:.3f} (needs {thresholds['chest']})")
        elif best_family == "other":
            reason = f"looks oblique or other (p {family[2]:.3f}): neither frontal nor lateral"
        else:
            need = thresholds[best_family]
            reason = (f"not certain of {best_family} (p {family.max():.3f}, needs {need}; "
                      f"p oblique/other {family[2]:.3f})")
    confidence = probabilities[decided] if decided else probabilities[label]
    return ViewCall(
        label=label, probabilities=probabilities, confidence=float(confidence),
        family=best_family, family_confidence=float(family.max()), ap_pa=ap_pa_label,
        ap_pa_confidence=float(ap_pa.max()), chest_probability=float(region[0]),
        family_decided=family_decided, decided=decided, reason=reason)
