"""Recipes (what is trained, how) and profiles (how much compute): plain frozen dataclasses.

A recipe is a list of stages. A profile scales compute only: input size, an epoch cap, how many
subsets (seeds), and a cap on the test set. It never changes what a recipe does.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from .errors import UserError

SCHEDULES = ("constant", "cosine")
OPTIMIZERS = ("adamw", "sgd")
BN_MODES = ("train", "eval")
AUGMENTATIONS = ("none", "crop_flip")


@dataclass(frozen=True)
class Stage:
    """One stage of training.

    `train` is "all", "head", or the number of top layer groups that train (the head counts as one).
    The head's learning rate is `lr`; the k-th group below the head gets `lr * lr_decay**k`.
    `frozen_bn` is the BatchNorm mode inside frozen groups: "eval" keeps their statistics fixed.
    """

    epochs: int
    lr: float
    train: str | int = "all"
    lr_decay: float = 1.0
    schedule: str = "constant"
    warmup_epochs: float = 0.0
    optimizer: str = "adamw"
    momentum: float = 0.9
    frozen_bn: str = "eval"
    trainable_bn: str = "train"

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}")
        if self.frozen_bn not in BN_MODES or self.trainable_bn not in BN_MODES:
            raise ValueError(f"BatchNorm modes must be one of {BN_MODES}")


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    stages: tuple[Stage, ...]
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    batch_size: int = 64
    augment: str = "none"
    image_size: int | None = None  # a fixed input size (the from-scratch CNN); None: the profile's

    def __post_init__(self):
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be one of {AUGMENTATIONS}")

    def as_dict(self) -> dict:
        return asdict(self)


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in [
        Recipe(
            "scratch",
            "every layer from random initialisation: AdamW 1e-3, cosine, 40 epochs, crop/flip, 32x32 input",
            (Stage(epochs=40, lr=1e-3, train="all", schedule="cosine"),),
            weight_decay=5e-4,
            augment="crop_flip",
            image_size=32,
        ),
        Recipe(
            "linear_probe",
            "frozen backbone, a new linear head: AdamW 1e-3, cosine, 100 epochs on cached features",
            (Stage(epochs=100, lr=1e-3, train="head", schedule="cosine"),),
            weight_decay=1e-4,
        ),
        Recipe(
            "finetune_naive",
            "everything unfrozen at one learning rate, as a first attempt would be: Adam (no weight decay) 1e-3, constant, 15 epochs",
            (Stage(epochs=15, lr=1e-3, train="all", schedule="constant"),),
        ),
    ]
}


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    image_size: int
    seeds: tuple[int, ...]
    test_limit: int | None
    max_epochs: int | None  # a cap on each stage's epochs; None keeps the recipe's
    meaningful: bool


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in [
        Profile(
            "smoke",
            "proves the code runs: 32x32 input, at most 2 epochs a stage, 2 subsets, 500 test images",
            image_size=32, seeds=(0, 1), test_limit=500, max_epochs=2, meaningful=False,
        ),
        Profile(
            "full",
            "the published book: 224x224 input, every epoch of the recipe, 3 subsets, all test images",
            image_size=224, seeds=(0, 1, 2), test_limit=None, max_epochs=None, meaningful=True,
        ),
    ]
}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise UserError(f"unknown recipe {name!r}; choose one of: {', '.join(RECIPES)}")
    return RECIPES[name]


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise UserError(f"unknown profile {name!r}; choose one of: {', '.join(PROFILES)}")
    return PROFILES[name]


def scaled_stages(recipe: Recipe, max_epochs: int | None, epochs: int | None) -> tuple[Stage, ...]:
    """The recipe's stages with `epochs` (if given) replacing every stage's epochs, then capped."""
    stages = []
    for stage in recipe.stages:
        n = epochs if epochs is not None else stage.epochs
        if max_epochs is not None:
            n = min(n, max_epochs)
        stages.append(replace(stage, epochs=n))
    return tuple(stages)

