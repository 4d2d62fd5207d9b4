"""Train on cached activations: the head first, then (fine-tuning recipes) the top blocks too."""

from __future__ import annotations

from collections import Counter

import numpy as np

from training.data import Sample
from training.recipes import Recipe

# views targets: family one-hot (3) | AP/PA one-hot (2) | region one-hot (2) | weights (3)
TARGET_WIDTH = 10


def class_weights(y: np.ndarray, enabled: bool) -> dict[int, float] | None:
    """Inverse-frequency weights, mean 1 (the pool has ~2.6 frontal per lateral)."""
    if not enabled:
        return None
    counts = np.bincount(y, minlength=2).astype(np.float64)
    if (counts == 0).any():
        return None
    return {i: float(len(y) / (2 * counts[i])) for i in range(2)}


def cell_weights(samples: list[Sample], idx: np.ndarray, power: float) -> np.ndarray:
    """(region, family) cell weights for the training rows idx: count^-power, mean 1."""
    cells = [(samples[i].region, samples[i].label) for i in idx]
    counts = Counter(cells)
    weights = np.array([counts[c] ** -power for c in cells], dtype=np.float64)
    return weights / weights.mean()


def view_targets(samples: list[Sample], idx: np.ndarray, power: float) -> np.ndarray:
    """Targets for the views heads. AP/PA is learnt only where the view is known (weight 0 on
    other films: a partial label, not a guess); family and region from every film."""
    from training.data import FAMILIES

    t = np.zeros((len(idx), TARGET_WIDTH), dtype=np.float32)
    t[:, 7] = cell_weights(samples, idx, power)
    for row, i in enumerate(idx):
        s = samples[i]
        t[row, FAMILIES.index(s.label)] = 1.0  # oblique -> "other"
        if s.label == "frontal" and s.view in ("AP", "PA"):
            t[row, 3 if s.view == "AP" else 4] = 1.0
            t[row, 8] = 1.0
        t[row, 5 if s.region == "chest" else 6] = 1.0
        t[row, 9] = 1.0
    return t


def views_loss(smoothing: float, ap_pa_weight: float, region_weight: float):
    """Weighted sum of the three heads' cross-entropies (label smoothing per head)."""
    from keras import ops

    def smooth(t, k):
        return t * (1.0 - smoothing) + smoothing / k

    def cross_entropy(t, p, k):
        return -ops.sum(smooth(t, k) * ops.log(ops.clip(p, 1e-7, 1.0)), axis=-1)

    def loss(y_true, y_pred):
        family = cross_entropy(y_true[:, 0:3], y_pred[:, 0:3], 3)
        ap_pa = cross_entropy(y_true[:, 3:5], y_pred[:, 3:5], 2)
        region = cross_entropy(y_true[:, 5:7], y_pred[:, 5:7], 2)
        return (y_true[:, 7] * family + ap_pa_weight * y_true[:, 8] * ap_pa
                + region_weight * y_true[:, 9] * region)

    return loss


def _fit(model, recipe: Recipe, x, t, learning_rate: float, epochs: int, weights) -> dict:
    import keras

    if t.ndim == 2:  # views targets (TARGET_WIDTH columns)
        model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                      loss=views_loss(recipe.label_smoothing, recipe.ap_pa_loss_weight,
                                      recipe.region_loss_weight))
        history = model.fit(x, t, batch_size=recipe.batch_size, epochs=epochs, shuffle=True,
                            verbose=0)
        return {"epochs": epochs, "loss": round(float(history.history["loss"][-1]), 5)}
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=recipe.label_smoothing),
        metrics=["accuracy"],
    )
    history = model.fit(x, np.eye(2, dtype=np.float32)[t], batch_size=recipe.batch_size,
                        epochs=epochs, shuffle=True, class_weight=weights, verbose=0)
    return {"epochs": epochs, "loss": round(float(history.history["loss"][-1]), 5),
            "train_accuracy": round(float(history.history["accuracy"][-1]), 5)}


def train(parts, recipe: Recipe, pooled: dict[str, np.ndarray], y: np.ndarray,
          train_idx: np.ndarray, activations: dict[str, np.ndarray] | None = None,
          balanced: bool = False, samples: list[Sample] | None = None) -> dict:
    """Stage 1: the head on pooled features of every training view. Stage 2 (fine-tuning
    recipes): the top blocks and head together on the split activations, at a low rate.

    Binary recipes learn y (0 AP, 1 LA); views recipes learn the targets built from `samples`.
    """
    import keras

    keras.utils.set_random_seed(recipe.seed)
    if recipe.heads == "views":
        if samples is None:
            raise ValueError("views recipes need the samples (family, view, region)")
        rows = view_targets(samples, train_idx, recipe.cell_weight_power)
        weights = None
    else:
        rows = y[train_idx]
        # inverse frequency: the same for the rows as for their copies in every view
        weights = class_weights(rows, recipe.class_weighting and not balanced)
    x, t = stack_rows(pooled, recipe.train_views, train_idx, rows)
    history = {"class_weight": weights,
               "head": _fit(parts.head, recipe, x, t, recipe.learning_rate, recipe.epochs,
                            weights)}
    if parts.fine_tuned and recipe.fine_tune_epochs:
        if activations is None:
            raise ValueError("fine-tuning needs the split-layer activations")
        parts.unfreeze_top()
        x, t = stack_rows(activations, recipe.fine_tune_views or recipe.train_views, train_idx,
                          rows)
        history["fine_tune"] = _fit(parts.upper, recipe, x, t, recipe.fine_tune_learning_rate,
                                    recipe.fine_tune_epochs, weights)
    return history


def stack_rows(features: dict[str, np.ndarray], views, idx: np.ndarray,
               targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Features of idx in every view, with their target rows (labels or views targets, one per
    index in idx) repeated alike."""
    return (np.concatenate([features[v][idx] for v in views]),
            np.concatenate([targets] * len(views)))


def predict(model, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """Probabilities (n, 2) from cached inputs (what the Keras model gives end to end)."""
    import tensorflow as tf

    run = tf.function(lambda t: model(t, training=False), reduce_retracing=True)
    return np.concatenate([run(tf.constant(x[s:s + batch])).numpy()
                           for s in range(0, len(x), batch)])
