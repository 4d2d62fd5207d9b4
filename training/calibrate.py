"""Calibration and write thresholds for the view model, chosen on out-of-fold predictions.

Each head gets one temperature (grid search on the negative log-likelihood of its out-of-fold
outputs). The thresholds are then the ones that write the most films correctly while the
wrong-write rate stays at or below the recipe's goal; the rule they feed is the node's own
(dicomnode.view_policy.decide_many), so what is measured here is what the node does.

Given the FP32 model's out-of-fold outputs too, the report shows how often Int8 and FP32 would
write the same at each choice; with the recipe's `min_int8_fp32_agreement` set, points where they
agree on at least that share of films come first (a threshold inside a cluster of confidences
lets quantisation noise decide which films get written).
"""

from __future__ import annotations

import itertools

import numpy as np

from dicomnode.view_policy import HEAD_SLICES, calibrated_heads, decide_many, temperature_scale
from training.data import FAMILIES, Sample

TEMPERATURES = np.exp(np.linspace(np.log(0.25), np.log(8.0), 121))
FAMILY_GRID = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.993, 0.995, 0.997,
               0.998, 0.999)
AP_PA_GRID = FAMILY_GRID
CHEST_GRID = (0.5, 0.7, 0.9, 0.95, 0.99)
# Writes whose truth the labels cannot check (AP/PA on a frontal film of unknown view) may be at
# most this share of the written films: they would otherwise be free coverage.
MAX_UNVERIFIABLE_SHARE = 0.02
TRADE_OFF_RATES = (0.002, 0.005, 0.01, 0.02)  # wrong-write goals the report compares


def truth_of(samples: list[Sample]) -> dict[str, np.ndarray]:
    family = np.array([FAMILIES.index(s.label) for s in samples])
    view = np.array([s.view if s.label == "frontal" else "" for s in samples], dtype=object)
    chest = np.array([s.region == "chest" for s in samples])
    return {"family": family, "view": view, "chest": chest}


def _nll(probabilities: np.ndarray, target: np.ndarray, temperature: float) -> float:
    scaled = temperature_scale(probabilities, temperature)
    return float(-np.log(np.clip(scaled[np.arange(len(target)), target], 1e-12, 1.0)).mean())


def fit_temperatures(raw: np.ndarray, samples: list[Sample]) -> dict[str, float]:
    """One temperature per head: family on every film, AP/PA on frontal films of known view,
    region on every film."""
    truth = truth_of(samples)
    known = np.isin(truth["view"], ["AP", "PA"])
    targets = {
        "family": (np.ones(len(raw), bool), truth["family"]),
        "ap_pa": (known, (truth["view"] == "PA").astype(int)),
        "region": (np.ones(len(raw), bool), (~truth["chest"]).astype(int)),
    }
    result = {}
    for head, (rows, target) in targets.items():
        if rows.sum() < 2:
            result[head] = 1.0
            continue
        probabilities = raw[rows][:, HEAD_SLICES[head]]
        losses = [_nll(probabilities, target[rows], t) for t in TEMPERATURES]
        result[head] = round(float(TEMPERATURES[int(np.argmin(losses))]), 4)
    return result


def outcomes(decided: np.ndarray, samples: list[Sample]) -> np.ndarray:
    """Per film: correct | wrong | unverifiable | abstain, for the view the node would write."""
    truth = truth_of(samples)
    family, view = truth["family"], truth["view"]
    out = np.full(len(decided), "abstain", dtype=object)
    lat = decided == "LAT"
    out[lat] = np.where(family[lat] == 1, "correct", "wrong")
    for term in ("AP", "PA"):
        rows = decided == term
        known = np.isin(view, ["AP", "PA"])
        out[rows & (family != 0)] = "wrong"
        out[rows & (family == 0) & known] = np.where(view[rows & (family == 0) & known] == term,
                                                     "correct", "wrong")
        out[rows & (family == 0) & ~known] = "unverifiable"
    return out


def _family_outcomes(family_decided: np.ndarray, family: np.ndarray) -> tuple[int, int]:
    """(correct, wrong) frontal/lateral calls: a call on an oblique film is wrong."""
    frontal, lateral = family_decided == "frontal", family_decided == "lateral"
    correct = int((frontal & (family == 0)).sum() + (lateral & (family == 1)).sum())
    return correct, int(frontal.sum() + lateral.sum()) - correct


def would_write_agreement(raw: np.ndarray, reference: np.ndarray, calibration: dict,
                          thresholds: dict) -> float:
    """Share of films for which both outputs give the same would_write (abstentions alike)."""
    ours = decide_many(raw, calibration, thresholds)["decided"]
    theirs = decide_many(reference, calibration, thresholds)["decided"]
    return float(np.mean(ours == theirs))


def choose_thresholds(raw: np.ndarray, samples: list[Sample], calibration: dict,
                      max_wrong_rate: float, reference: np.ndarray | None = None,
                      min_agreement: float | None = None) -> dict:
    """Two stages, each the grid point with the most correct calls whose wrong share stays at
    most max_wrong_rate (ties: the higher thresholds). With `reference` (the FP32 outputs) and
    `min_agreement`, points where raw and reference would write the same on at least that share
    of films come before all others (stage 1 judged with no AP/PA writes):
    1. frontal and lateral, on frontal/lateral calls (what agree/disagree and the body-part
       defaults rest on); the lateral calls are writes, so their own wrong share must stay
       within the goal too (else stage 2 could find no AP/PA point and keep writes over it);
    2. ap_pa and chest, on the writes, lateral writes included, AP/PA writes on films of
       unknown AP/PA at most MAX_UNVERIFIABLE_SHARE of the writes. If no AP/PA write fits the
       goal, ap_pa is 1.0: the node then never writes AP or PA by itself."""
    family = truth_of(samples)["family"]

    def agrees(thresholds: dict) -> bool:
        if reference is None or min_agreement is None:
            return True
        return would_write_agreement(raw, reference, calibration, thresholds) >= min_agreement

    never = {"ap_pa": 1.0, "chest": 1.0}
    best_key, stage1 = None, {"frontal": 1.0, "lateral": 1.0}
    for frontal, lateral in itertools.product(FAMILY_GRID, FAMILY_GRID):
        thresholds = {"frontal": frontal, "lateral": lateral, **never}
        calls = decide_many(raw, calibration, thresholds)
        correct, wrong = _family_outcomes(calls["family_decided"], family)
        if wrong > max_wrong_rate * max(correct + wrong, 1):
            continue
        lateral_writes = calls["family_decided"] == "lateral"
        if (lateral_writes & (family != 1)).sum() > max_wrong_rate * lateral_writes.sum():
            continue
        key = (agrees(thresholds), correct, frontal + lateral)
        if best_key is None or key > best_key:
            best_key, stage1 = key, {"frontal": frontal, "lateral": lateral}
    best_key, stage2 = None, never
    for ap_pa, chest in itertools.product((*AP_PA_GRID, 1.0), CHEST_GRID):
        thresholds = {**stage1, "ap_pa": ap_pa, "chest": chest}
        result = outcomes(decide_many(raw, calibration, thresholds)["decided"], samples)
        correct = int((result == "correct").sum())
        wrong = int((result == "wrong").sum())
        unverifiable = int((result == "unverifiable").sum())
        if wrong > max_wrong_rate * max(correct + wrong, 1):
            continue
        if unverifiable > MAX_UNVERIFIABLE_SHARE * max(correct + wrong + unverifiable, 1):
            continue
        key = (agrees(thresholds), correct, -unverifiable, ap_pa + chest)
        if best_key is None or key > best_key:
            best_key, stage2 = key, {"ap_pa": ap_pa, "chest": chest}
    return {**stage1, **stage2}


def trade_off(raw: np.ndarray, samples: list[Sample], calibration: dict,
              rates=TRADE_OFF_RATES, reference: np.ndarray | None = None,
              min_agreement: float | None = None) -> list[dict]:
    """Coverage and wrong writes at the thresholds each wrong-write goal would choose: what a
    hospital buys with a looser goal (tag.thresholds in the config)."""
    rows = []
    for rate in rates:
        thresholds = choose_thresholds(raw, samples, calibration, rate, reference, min_agreement)
        calls = decide_many(raw, calibration, thresholds)
        result = outcomes(calls["decided"], samples)
        written = int((result != "abstain").sum())
        rows.append({"max_wrong_write_rate": rate, "thresholds": thresholds,
                     "coverage": round(written / max(len(samples), 1), 4),
                     "family_coverage": round(float((calls["family_decided"] != None).mean()),  # noqa: E711
                                              4),
                     "wrong_writes": int((result == "wrong").sum()),
                     "correct_writes": int((result == "correct").sum()),
                     "unverifiable_writes": int((result == "unverifiable").sum())})
        if reference is not None:
            rows[-1]["int8_fp32_agreement"] = round(
                would_write_agreement(raw, reference, calibration, thresholds), 4)
    return rows


def calibrate(raw: np.ndarray, samples: list[Sample], max_wrong_rate: float,
              reference: np.ndarray | None = None, min_agreement: float | None = None) -> dict:
    """{"calibration": temperatures, "thresholds": ..., "chosen_on": ...} for the manifest;
    `reference`: the FP32 outputs of the same films, for the agreement preference."""
    calibration = {"method": "temperature", **fit_temperatures(raw, samples)}
    # The goal's own row comes first: its thresholds are the ones shipped (one grid search each).
    rows = trade_off(raw, samples, calibration,
                     (max_wrong_rate, *(r for r in TRADE_OFF_RATES if r != max_wrong_rate)),
                     reference, min_agreement)
    policy = {"calibration": calibration, "thresholds": rows[0]["thresholds"],
              "trade_off": rows,
              "max_wrong_write_rate": max_wrong_rate,
              "chosen_on": f"out-of-fold Int8 outputs of {len(samples)} films"}
    if reference is not None and min_agreement is not None:
        policy["min_int8_fp32_agreement"] = min_agreement
        policy["int8_fp32_agreement"] = rows[0]["int8_fp32_agreement"]
    return policy


def reliability(raw: np.ndarray, samples: list[Sample], calibration: dict | None,
                bins: int = 10) -> dict[str, list[dict]]:
    """Confidence vs accuracy per bin, for the family and AP/PA heads."""
    truth = truth_of(samples)
    heads = (calibrated_heads(raw, calibration) if calibration else
             {h: np.atleast_2d(raw)[:, s] for h, s in HEAD_SLICES.items()})
    known = np.isin(truth["view"], ["AP", "PA"])
    cases = {"family": (heads["family"], truth["family"], np.ones(len(raw), bool)),
             "ap_pa": (heads["ap_pa"], (truth["view"] == "PA").astype(int), known)}
    result = {}
    for head, (probs, target, rows) in cases.items():
        probs, target = probs[rows], target[rows]
        confidence = probs.max(axis=1)
        correct = probs.argmax(axis=1) == target
        edges = np.linspace(1.0 / probs.shape[1], 1.0, bins + 1)
        rows_out = []
        for low, high in itertools.pairwise(edges):
            inside = (confidence >= low) & ((confidence < high) | (high == 1.0))
            if inside.any():
                rows_out.append({"low": round(float(low), 3), "high": round(float(high), 3),
                                 "n": int(inside.sum()),
                                 "confidence": round(float(confidence[inside].mean()), 4),
                                 "accuracy": round(float(correct[inside].mean()), 4)})
        result[head] = rows_out
    return result
