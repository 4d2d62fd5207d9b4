"""Train on cached activations: the head first, then (fine-tuning recipes) the top blocks too."""

from __future__ import annotations

import numpy as np

from training.recipes import Recipe


def class_weights(y: np.ndarray, enabled: bool) -> dict[int, float] | None:
    """Inverse-frequency weights, mean 1 (the pool has ~2.6 frontal per lateral)."""
    if not enabled:
        return None
    counts = np.bincount(y, minlength=2).astype(np.float64)
    if (counts == 0).any():
        return None
    return {i: float(len(y) / (2 * counts[i])) for i in range(2)}


def stack_views(features: dict[str, np.ndarray], views, idx: np.ndarray,
                y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.concatenate([features[v][idx] for v in views])
    return x, np.tile(y[idx], len(views))


def _fit(model, recipe: Recipe, x, t, learning_rate: float, epochs: int, weights) -> dict:
    import keras

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
          balanced: bool = False) -> dict:
    """Stage 1: the head on pooled features of every training view. Stage 2 (fine-tuning
    recipes): the top blocks and head together on the split activations, at a low rate."""
    import keras

    keras.utils.set_random_seed(recipe.seed)
    x, t = stack_views(pooled, recipe.train_views, train_idx, y)
    weights = class_weights(t, recipe.class_weighting and not balanced)
    history = {"class_weight": weights,
               "head": _fit(parts.head, recipe, x, t, recipe.learning_rate, recipe.epochs,
                            weights)}
    if parts.fine_tuned and recipe.fine_tune_epochs:
        if activations is None:
            raise ValueError("fine-tuning needs the split-layer activations")
        parts.unfreeze_top()
        x, t = stack_views(activations, recipe.fine_tune_views or recipe.train_views,
                           train_idx, y)
        history["fine_tune"] = _fit(parts.upper, recipe, x, t, recipe.fine_tune_learning_rate,
                                    recipe.fine_tune_epochs, weights)
    return history


def predict(model, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """Probabilities (n, 2) from cached inputs (what the Keras model gives end to end)."""
    import tensorflow as tf

    run = tf.function(lambda t: model(t, training=False), reduce_retracing=True)
    return np.concatenate([run(tf.constant(x[s:s + batch])).numpy()
                           for s in range(0, len(x), batch)])
