"""MobileNetV2 1.0 (ImageNet weights from a local file) + a head; scaling in the model.

Two heads: the paper's (`binary`: Dense(128, ReLU) -> Dense(2, softmax), AP vs LA) and the view
model's (`views`: Dense(128, ReLU) -> three softmax heads, family 3 + AP/PA 2 + region 2,
concatenated into one output vector; dicomnode.view_policy says what each value means).
"""

from __future__ import annotations

from pathlib import Path

from dicomnode.preprocess import MODEL_SIZE

INPUT_SHAPE = (MODEL_SIZE, MODEL_SIZE, 3)
POOLED_LAYER = "out_relu"  # the base's last activation; split here = frozen base, head only


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
    """The network in pieces that share weights:

    lower: 0-255 image -> activations at the split layer (frozen; cached once per image/view);
           pooled 1280-vector when the split is the base's output
    top_base: split activations -> base output (the fine-tuned top blocks; None for head only)
    head: pooled 1280-vector -> probabilities (GAP -> Dense(128, ReLU) -> Dense(2, softmax))
    upper: split activations -> probabilities (top_base + pooling + head)
    full: 0-255 image -> probabilities
    exported: what is exported; for the view model 0-255 image -> each head's logits (the same
              layers as `full` without the softmax, which the node applies in float: see
              dicomnode.view_policy), for the binary head `full` itself
    """

    def __init__(self, weights: Path, scaling: str, split_layer: str = POOLED_LAYER,
                 dense_units: int = 128, dropout: float = 0.0, heads: str = "binary",
                 ap_pa_units: int = 0) -> None:
        import keras

        base = keras.applications.MobileNetV2(
            input_shape=INPUT_SHAPE, include_top=False, weights=str(check_weights(weights))
        )
        base.trainable = False
        self.fine_tuned = split_layer != POOLED_LAYER
        pool = keras.layers.GlobalAveragePooling2D(name="gap")
        drop = keras.layers.Dropout(dropout, name="dropout") if dropout > 0 else None
        dense = keras.layers.Dense(dense_units, activation="relu", name="dense")
        if heads == "binary":
            out = keras.layers.Dense(2, activation="softmax", name="probabilities")
        elif heads == "views":
            out = view_heads()
        else:
            raise ValueError(f"unknown heads {heads!r}; use binary or views")
        self.heads = heads
        # views: AP vs PA from a Dense layer of its own (the shared one serves family/region)
        own = (keras.layers.Dense(ap_pa_units, activation="relu", name="dense_ap_pa")
               if heads == "views" and ap_pa_units > 0 else None)

        def head_on(pooled, logits=False):
            dropped = drop(pooled) if drop is not None else pooled
            if heads == "views":
                return out(dense(dropped), own(dropped) if own is not None else None,
                           logits=logits)
            return out(dense(dropped))

        pooled_in = keras.Input((base.output.shape[-1],), name="pooled")
        self.head = keras.Model(pooled_in, head_on(pooled_in), name="head")

        image = keras.Input(INPUT_SHAPE, name="image")
        scaled = rescaling_layer(scaling)(image)
        split = base.get_layer(split_layer).output
        lower_base = keras.Model(base.input, split, name="frozen_base")
        if self.fine_tuned:
            self.top_base = keras.Model(split, base.output, name="top_base")
            self.top_base.trainable = False  # unfrozen for the fine-tuning stage only
            self.lower = keras.Model(image, lower_base(scaled), name="lower")
            activations = keras.Input(tuple(split.shape[1:]), name="activations")
            self.upper = keras.Model(
                activations, head_on(pool(self.top_base(activations, training=False))),
                name="upper")
            self.full = keras.Model(
                image, head_on(pool(self.top_base(lower_base(scaled), training=False))),
                name="view_classifier")
            exported_out = head_on(pool(self.top_base(lower_base(scaled), training=False)),
                                   logits=True)
        else:
            self.top_base = None
            self.lower = keras.Model(image, pool(lower_base(scaled)), name="lower")
            self.upper = self.head
            self.full = keras.Model(image, head_on(pool(lower_base(scaled))),
                                    name="view_classifier")
            exported_out = head_on(pool(lower_base(scaled)), logits=True)
        self.exported = (keras.Model(image, exported_out, name="view_classifier_logits")
                         if heads == "views" else self.full)

    def unfreeze_top(self) -> None:
        """Train the top blocks' convolutions; batch-norm keeps ImageNet statistics (small folds
        would skew them) by staying non-trainable, i.e. in inference mode."""
        import keras

        if self.top_base is None:
            return
        self.top_base.trainable = True
        for layer in self.top_base.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False


def view_heads():
    """family (3) + AP/PA (2) + region (2) heads on one input, concatenated into one output
    vector (a single TFLite output; dicomnode.view_policy.HEAD_SLICES): softmax probabilities
    for training, or the logits (logits=True) for export."""
    import keras

    from dicomnode.view_policy import HEADS

    parts = {head: keras.layers.Dense(len(classes), name=head) for head, classes in HEADS.items()}
    softmax = {head: keras.layers.Softmax(name=f"{head}_softmax") for head in HEADS}
    joined = keras.layers.Concatenate(name="view_outputs")
    joined_logits = keras.layers.Concatenate(name="view_logits")

    def on(shared, ap_pa_input=None, logits=False):
        outs = {head: part(ap_pa_input if head == "ap_pa" and ap_pa_input is not None else shared)
                for head, part in parts.items()}
        if logits:
            return joined_logits(list(outs.values()))
        return joined([softmax[head](value) for head, value in outs.items()])

    return on
