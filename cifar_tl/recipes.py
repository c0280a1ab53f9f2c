"""Recipes (what is trained, how) and profiles (how much compute): plain frozen dataclasses.

A recipe is a list of stages. A profile scales compute only: input size, an epoch cap, how many
subsets (seeds), and a cap on the test set. It never changes what a recipe does.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from .augment import TTA_MODES
from .errors import UserError

SCHEDULES = ("constant", "cosine")
OPTIMIZERS = ("adamw", "sgd")
BN_MODES = ("train", "eval")
AUGMENTATIONS = ("none", "crop_flip", "strong")  # "strong": crop/flip, colour jitter and cutout (augment.py)
STUDENT_INITS = ("pretrained", "teacher")


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
    augment: bool = True  # apply the recipe's augmentation and mixing in this stage

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}")
        if self.frozen_bn not in BN_MODES or self.trainable_bn not in BN_MODES:
            raise ValueError(f"BatchNorm modes must be one of {BN_MODES}")


@dataclass(frozen=True)
class SelfTraining:
    """Self-training on the unlabelled pool (the training split outside the labelled subset and the
    validation split), after the recipe's own stages have trained the first teacher.

    Each round the teacher predicts `pool_images` pool images (drawn once with the run's seed; None: all)
    with the test-time views `teacher_tta`; of the images it gives each class, the `per_class` most
    confident whose confidence reaches `threshold` keep that class as their pseudo-label (None: every one
    above the threshold). A student (`init`: fresh from the backbone's ImageNet weights, or a copy of the
    teacher) then trains through `stages` on the labelled images repeated `labelled_repeats` times plus
    the pseudo-labelled ones, with augmentation `augment` and MixUp/CutMix at these α (the recipe's other
    settings: weight decay, label smoothing, batch size, EMA, test-time views, stay). The student is the
    next round's teacher, and the last student is the run's model. Pool labels never reach the training.
    """

    stages: tuple[Stage, ...]  # the student's
    rounds: int = 1
    pool_images: int | None = 10_000
    per_class: int | None = 500
    threshold: float = 0.0
    teacher_tta: str = "flip"
    labelled_repeats: int = 2
    augment: str = "strong"
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    init: str = "pretrained"

    def __post_init__(self):
        if not self.stages:
            raise ValueError("self-training needs at least one student stage")
        if self.rounds < 1 or self.labelled_repeats < 0:
            raise ValueError("self-training needs rounds >= 1 and labelled_repeats >= 0")
        for name in ("pool_images", "per_class"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"self-training's {name} must be at least 1, or None")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError("self-training's threshold is a probability, in [0, 1]")
        if self.teacher_tta not in TTA_MODES:
            raise ValueError(f"teacher_tta must be one of {TTA_MODES}")
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be one of {AUGMENTATIONS}")
        if self.init not in STUDENT_INITS:
            raise ValueError(f"init must be one of {STUDENT_INITS}")


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    stages: tuple[Stage, ...]
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    batch_size: int = 64
    augment: str = "none"
    mixup_alpha: float = 0.0  # MixUp with λ ~ Beta(α, α) when above 0
    cutmix_alpha: float = 0.0  # CutMix likewise; with both on, each batch uses one of them
    tta: str = "none"  # test-time augmentation: none, flip, flip_shift
    ema_decay: float = 0.0  # evaluate an exponential moving average of the weights when above 0
    image_size: int | None = None  # a fixed input size (the from-scratch CNN); None: the profile's
    builds_on: str | None = None  # the recipe this one changes (the technique chapters' ladder)
    chapter: str | None = None  # the chapter (notebook id) that introduces this recipe
    self_training: SelfTraining | None = None  # then train students on the unlabelled pool too
    # Also fit scikit-learn's logistic regression on the frozen features the head trained on, with its
    # inverse regularisation C chosen on the validation split from these values (a head-only recipe only).
    sklearn_probe: tuple[float, ...] | None = None

    def __post_init__(self):
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be one of {AUGMENTATIONS}")
        if self.tta not in TTA_MODES:
            raise ValueError(f"tta must be one of {TTA_MODES}")
        if self.sklearn_probe is not None:
            if not self.sklearn_probe or any(c <= 0 for c in self.sklearn_probe):
                raise ValueError("sklearn_probe takes one or more positive values of C")
            if any(stage.train != "head" for stage in self.stages) or self.augment != "none" or self.tta != "none":
                raise ValueError("sklearn_probe needs a recipe that trains only the head, on unaugmented "
                                 "images, without test-time augmentation (the features must be fixed)")

    def as_dict(self) -> dict:
        """The recipe as a dict. `self_training` and `sklearn_probe` appear only when the recipe has them
        (as lists, as JSON reads them back): a recipe without them has the same dict, and so the same
        definition and record identity, as before the fields existed."""
        d = asdict(self)
        if d["self_training"] is None:
            del d["self_training"]
        else:
            d["self_training"]["stages"] = list(d["self_training"]["stages"])
        if d["sklearn_probe"] is None:
            del d["sklearn_probe"]
        else:
            d["sklearn_probe"] = list(d["sklearn_probe"])
        return d


def _step(base: Recipe, name: str, chapter: str, description: str, **changes) -> Recipe:
    """A recipe that changes `base` (and says so in `builds_on`), introduced in `chapter`."""
    return replace(base, name=name, description=description, builds_on=base.name, chapter=chapter, **changes)


def _ladder() -> list[Recipe]:
    """The technique chapters' ladder: each recipe makes one change to the one it builds on."""
    naive = Recipe(
        "finetune_naive",
        "everything unfrozen at one learning rate, as a first attempt would be: Adam (no weight decay) 1e-3, "
        "constant, 15 epochs",
        (Stage(epochs=15, lr=1e-3, train="all", schedule="constant"),),
        chapter="04-naive-finetune",
    )
    cosine = _step(naive, "ft_cosine", "05-schedule", "finetune_naive with 1 epoch of linear warm-up, then cosine",
                   stages=(replace(naive.stages[0], schedule="cosine", warmup_epochs=1.0),))
    discriminative = _step(
        cosine, "ft_discriminative", "06-discriminative-lr",
        "ft_cosine with a rate per layer group: x0.7 per group from the head (1e-3) down to the stem",
        stages=(replace(cosine.stages[0], lr_decay=0.7),),
    )
    gradual = _step(
        discriminative, "ft_gradual", "07-staged-unfreezing",
        "ft_discriminative unfrozen in stages: the head for 3 epochs, then the top 4 groups for 4, "
        "then everything for 8",
        stages=(Stage(epochs=3, lr=1e-3, train="head", schedule="cosine"),
                Stage(epochs=4, lr=5e-4, train=4, lr_decay=0.7, schedule="cosine", warmup_epochs=0.5),
                Stage(epochs=8, lr=3e-4, train="all", lr_decay=0.7, schedule="cosine", warmup_epochs=0.5)),
    )
    lpft = _step(
        discriminative, "ft_lpft", "07-staged-unfreezing",
        "LP-FT: fit the linear head on frozen features (20 epochs), then fine-tune everything from it "
        "(15 epochs, head 3e-4, x0.7 per group, warm-up and cosine)",
        stages=(Stage(epochs=20, lr=1e-3, train="head", schedule="cosine", augment=False),
                Stage(epochs=15, lr=3e-4, train="all", lr_decay=0.7, schedule="cosine", warmup_epochs=1.0)),
    )
    bn_frozen = _step(
        lpft, "ft_bn_frozen", "08-batchnorm",
        "ft_lpft with every BatchNorm's statistics frozen at their ImageNet values during fine-tuning",
        stages=(lpft.stages[0], replace(lpft.stages[1], trainable_bn="eval")),
    )
    crop_flip = _step(bn_frozen, "ft_crop_flip", "09-augmentation", "ft_bn_frozen with random crops and flips on the device",
                      augment="crop_flip")
    mix = _step(crop_flip, "ft_mix", "09-augmentation", "ft_crop_flip with MixUp (α 0.2) or CutMix (α 1.0) per batch",
                mixup_alpha=0.2, cutmix_alpha=1.0)
    regularised = _step(mix, "ft_regularised", "10-regularisation", "ft_mix with label smoothing 0.1 and weight decay 0.05",
                        label_smoothing=0.1, weight_decay=0.05)
    full = _step(regularised, "full", "11-tta-averaging", "the full recipe: ft_regularised evaluated with an EMA of the weights "
                 "(decay 0.99) and test-time flips", tta="flip", ema_decay=0.99)
    return [naive, cosine, discriminative, gradual, lpft, bn_frozen, crop_flip, mix, regularised, full]


def _self_training(teacher: Recipe) -> Recipe:
    """Chapter 13: the best labels-only recipe as the teacher, then one round of self-training on the pool."""
    student = SelfTraining(
        stages=(Stage(epochs=20, lr=1e-3, train="head", schedule="cosine", augment=False),
                Stage(epochs=6, lr=3e-4, train="all", lr_decay=0.7, schedule="cosine", warmup_epochs=0.5,
                      trainable_bn="eval")),
        rounds=1, pool_images=10_000, per_class=500, threshold=0.0, teacher_tta="flip", labelled_repeats=2,
        augment="strong",
    )
    return _step(
        teacher, "self_training", "13-unlabelled",
        f"{teacher.name} as the teacher labels 10,000 unlabelled images (with flips) and keeps the 500 most confident "
        "per class; a new student from the ImageNet weights learns from the labelled images twice plus those "
        "pseudo-labels with strong augmentation (crop/flip, colour jitter, cutout): the head for 20 epochs, then "
        "everything for 6; one round",
        self_training=student,
    )


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
            chapter="02-scratch",
        ),
        Recipe(
            "linear_probe",
            "frozen backbone, a new linear head: AdamW 1e-3, cosine, 100 epochs on cached features",
            (Stage(epochs=100, lr=1e-3, train="head", schedule="cosine"),),
            weight_decay=1e-4,
            chapter="03-linear-probe",
            sklearn_probe=(1.0, 0.1, 0.01, 0.001),
        ),
        *_ladder(),
        _self_training(next(r for r in _ladder() if r.name == "full")),
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
    pool_limit: int | None = None  # a cap on the unlabelled images of self-training; None keeps the recipe's


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in [
        Profile(
            "smoke",
            "proves the code runs: 32x32 input, at most 2 epochs a stage, 2 subsets, 500 test images, "
            "at most 500 unlabelled images",
            image_size=32, seeds=(0, 1), test_limit=500, max_epochs=2, meaningful=False, pool_limit=500,
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


def scaled_stages(recipe: Recipe | SelfTraining, max_epochs: int | None, epochs: int | None) -> tuple[Stage, ...]:
    """The recipe's (or the student's) stages with `epochs` (if given) replacing every stage's epochs, then capped."""
    stages = []
    for stage in recipe.stages:
        n = epochs if epochs is not None else stage.epochs
        if max_epochs is not None:
            n = min(n, max_epochs)
        stages.append(replace(stage, epochs=n))
    return tuple(stages)



def as_run(recipe: Recipe, profile: Profile, epochs: int | None = None) -> Recipe:
    """`recipe` as `profile` runs it: every stage (the students' too) through `scaled_stages`, and the
    unlabelled images a self-training recipe uses capped by the profile's `pool_limit`."""
    stages = scaled_stages(recipe, profile.max_epochs, epochs)
    student = recipe.self_training
    if student is not None:
        pool = student.pool_images
        if profile.pool_limit is not None:
            pool = profile.pool_limit if pool is None else min(pool, profile.pool_limit)
        student = replace(student, stages=scaled_stages(student, profile.max_epochs, epochs), pool_images=pool)
    return replace(recipe, stages=stages, self_training=student)
