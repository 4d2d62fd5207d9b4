"""Train the upper part (head, and top blocks when fine-tuning) on cached activations."""

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


def train_upper(parts, recipe: Recipe, features: dict[str, np.ndarray], y: np.ndarray,
                train_idx: np.ndarray, balanced: bool = False) -> dict:
    """Fit parts.upper on the training indices in every training view. Returns a short history."""
    import keras

    keras.utils.set_random_seed(recipe.seed)
    x, t = stack_views(features, recipe.train_views, train_idx, y)
    weights = class_weights(t, recipe.class_weighting and not balanced)
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=recipe.label_smoothing)
    onehot = np.eye(2, dtype=np.float32)[t]
    parts.upper.compile(optimizer=keras.optimizers.Adam(recipe.learning_rate), loss=loss,
                        metrics=["accuracy"])
    history = parts.upper.fit(x, onehot, batch_size=recipe.batch_size, epochs=recipe.epochs,
                              shuffle=True, class_weight=weights, verbose=0)
    result = {"epochs": recipe.epochs, "loss": float(history.history["loss"][-1]),
              "train_accuracy": float(history.history["accuracy"][-1]),
              "class_weight": weights}
    if recipe.fine_tune_epochs and parts.top_base is not None:
        parts.top_base.trainable = True
        for layer in parts.top_base.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False
        parts.upper.compile(optimizer=keras.optimizers.Adam(recipe.fine_tune_learning_rate),
                            loss=loss, metrics=["accuracy"])
        history = parts.upper.fit(x, onehot, batch_size=recipe.batch_size,
                                  epochs=recipe.fine_tune_epochs, shuffle=True,
                                  class_weight=weights, verbose=0)
        result["fine_tune_loss"] = float(history.history["loss"][-1])
    return result


def predict_upper(parts, features: np.ndarray) -> np.ndarray:
    """Probabilities (n, 2) from cached activations (what the Keras model gives end to end)."""
    from training.features import predict_batched_arrays

    return predict_batched_arrays(parts.upper, features)
