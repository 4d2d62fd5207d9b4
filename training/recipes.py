"""Training recipes: the paper's and the one we ship; both MobileNetV2 1.0 + the paper's head."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Recipe:
    name: str
    # Pixel scaling inside the model: "unit" = x/255 (the paper), "symmetric" = x/127.5 - 1
    # (what these ImageNet weights were trained with).
    scaling: str
    # Layer of the base whose activations are cached; everything above it is trained.
    # "out_relu" = frozen base, head only (the paper).
    split_layer: str
    # Training views of every image whose features are cached: flips, and inverted grey scale
    # (MONOCHROME1 films inverted correctly still look like negatives to a model trained on
    # MONOCHROME2 only).
    train_views: tuple[str, ...]
    epochs: int
    batch_size: int
    learning_rate: float
    fine_tune_epochs: int = 0
    fine_tune_learning_rate: float = 0.0
    class_weighting: bool = True
    dense_units: int = 128
    dropout: float = 0.0
    label_smoothing: float = 0.0
    representative_samples: int = 200
    seed: int = 0

    def to_json(self) -> dict:
        return asdict(self)


PAPER = Recipe(
    name="paper",
    scaling="unit",
    split_layer="out_relu",
    train_views=("orig", "flip"),
    epochs=5,
    batch_size=32,
    learning_rate=1e-3,
)

SHIPPED = Recipe(
    name="shipped",
    scaling="symmetric",
    split_layer="out_relu",
    train_views=("orig", "flip", "invert", "invert_flip"),
    epochs=30,
    batch_size=32,
    learning_rate=1e-3,
    dropout=0.2,
    representative_samples=400,
)

RECIPES = {r.name: r for r in (PAPER, SHIPPED)}


def get_recipe(name: str, scaling: str | None = None) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known: {sorted(RECIPES)}")
    recipe = RECIPES[name]
    if scaling is not None:
        if scaling not in ("unit", "symmetric"):
            raise ValueError(f"unknown scaling {scaling!r}; use unit (x/255) or symmetric ([-1,1])")
        recipe = Recipe(**{**recipe.to_json(), "scaling": scaling,
                           "train_views": tuple(recipe.train_views)})
    return recipe
