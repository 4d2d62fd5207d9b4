"""MobileNetV2 1.0 (ImageNet weights from a local file) + the paper's head; scaling in the model."""

from __future__ import annotations

from pathlib import Path

from dicomnode.preprocess import MODEL_SIZE

INPUT_SHAPE = (MODEL_SIZE, MODEL_SIZE, 3)


class WeightsMissingError(FileNotFoundError):
    pass


def check_weights(path: Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise WeightsMissingError(
            f"ImageNet weights file not found: {path}. Training never downloads; put "
            "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5 there, set "
            "DICOMNODE_SHARED to the folder that holds weights/, or pass --weights PATH."
        )
    return path


def rescaling_layer(scaling: str):
    import keras

    if scaling == "unit":
        return keras.layers.Rescaling(1.0 / 255.0, name="rescale_unit")
    if scaling == "symmetric":
        return keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="rescale_symmetric")
    raise ValueError(f"unknown scaling {scaling!r}")


class Parts:
    """The network in three pieces that share weights:

    lower: 0-255 image -> activations at the split layer (frozen; cached once per image/view)
    upper: those activations -> class probabilities (trained)
    full:  0-255 image -> probabilities (exported)
    """

    def __init__(self, weights: Path, scaling: str, split_layer: str, dense_units: int,
                 dropout: float) -> None:
        import keras

        base = keras.applications.MobileNetV2(
            input_shape=INPUT_SHAPE, include_top=False, weights=str(check_weights(weights))
        )
        base.trainable = False
        image = keras.Input(INPUT_SHAPE, name="image")
        scaled = rescaling_layer(scaling)(image)
        split = base.get_layer(split_layer).output
        self.lower_base = keras.Model(base.input, split, name="frozen_base")
        pool = keras.layers.GlobalAveragePooling2D(name="gap")
        drop = keras.layers.Dropout(dropout, name="dropout") if dropout > 0 else None
        dense = keras.layers.Dense(dense_units, activation="relu", name="dense")
        out = keras.layers.Dense(2, activation="softmax", name="probabilities")

        self.fine_tuned = split_layer != "out_relu"
        if self.fine_tuned:
            self.top_base = keras.Model(split, base.output, name="top_base")
            for layer in self.top_base.layers:
                # Batch-norm statistics stay ImageNet's: small folds would skew them.
                layer.trainable = not isinstance(layer, keras.layers.BatchNormalization)
            feat_in = keras.Input(tuple(split.shape[1:]), name="activations")
            x = self.top_base(feat_in, training=False)
            lower_out = self.lower_base(scaled)
            pooled_lower = lower_out
        else:
            self.top_base = None
            feat_in = keras.Input((split.shape[-1],), name="pooled")
            x = None
            lower_out = pool(self.lower_base(scaled))
            pooled_lower = lower_out
        self.lower = keras.Model(image, pooled_lower, name="lower")

        def head(t, pooled: bool):
            if not pooled:
                t = pool(t)
            if drop is not None:
                t = drop(t)
            return out(dense(t))

        self.upper = keras.Model(
            feat_in, head(x, pooled=False) if self.fine_tuned else head(feat_in, pooled=True),
            name="upper",
        )
        if self.fine_tuned:
            full_out = head(self.top_base(self.lower_base(scaled), training=False), pooled=False)
        else:
            full_out = head(lower_out, pooled=True)
        self.full = keras.Model(image, full_out, name="view_classifier")
