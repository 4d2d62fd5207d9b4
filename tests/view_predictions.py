"""Predictions built from chosen head outputs, through the node's own view rule (no model)."""

from __future__ import annotations

import numpy as np

from dicomnode import view_policy
from dicomnode.classify import Prediction

CALIBRATION = {"family": 1.0, "ap_pa": 1.0, "region": 1.0}
THRESHOLDS = {"frontal": 0.9, "lateral": 0.9, "ap_pa": 0.9, "chest": 0.9}


def predicted(family: tuple[float, float, float], ap_pa: tuple[float, float] = (0.5, 0.5),
              chest: float = 0.99, thresholds: dict | None = None) -> Prediction:
    """family = (p frontal, p lateral, p other), ap_pa = (p AP, p PA) given frontal."""
    raw = np.array([*family, *ap_pa, chest, 1.0 - chest])
    chosen = thresholds or THRESHOLDS
    call = view_policy.decide(raw, CALIBRATION, chosen)
    return Prediction(call.label, call.probabilities, call.confidence, 3.0, call, chosen,
                      "manifest")


CONFIDENT_PA = predicted((0.98, 0.01, 0.01), (0.02, 0.98))
CONFIDENT_AP = predicted((0.98, 0.01, 0.01), (0.97, 0.03))
FRONTAL_UNSURE_AP_PA = predicted((0.98, 0.01, 0.01), (0.6, 0.4))
FRONTAL_NOT_CHEST = predicted((0.98, 0.01, 0.01), (0.99, 0.01), chest=0.05)
LATERAL = predicted((0.02, 0.97, 0.01))
OBLIQUE_LIKE = predicted((0.45, 0.15, 0.40))
UNSURE_LATERAL = predicted((0.25, 0.70, 0.05))
