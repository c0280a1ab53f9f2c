"""Recipes: what is trained and how, as plain frozen dataclasses, and the book's ladder of them.

A recipe is a list of stages (which groups train, for how many epochs, at which learning rate), with the
settings that apply to all of them; self-training and consistency training add their own stages. How much
compute a recipe gets is its profile's business (`training.profiles`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from cifar_tl.core.errors import UserError
from cifar_tl.data.augment import TTA_MODES

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
class Consistency:
    """FixMatch-style consistency training on the unlabelled pool (Sohn et al., 2020), after the recipe's own
    stages have trained the model it starts from.

    Each step takes a labelled batch (the recipe's augmentation and mixing, its label smoothing) and
    `unlabelled_ratio` times as many pool images. The model's prediction on a weak view of each pool image
    (no gradient) is its pseudo-label, kept where its confidence reaches `threshold`; a strong view of the
    same image then learns that pseudo-label, the loss averaged over every pool image of the batch and
    weighted by `weight`. An epoch is one pass over the labelled images. The recipe's other settings
    (weight decay, batch size, EMA, test-time views) stay. Pool labels never reach the training.
    """

    stages: tuple[Stage, ...]  # the stages of the consistency training, which start from the model the recipe's own stages trained
    pool_images: int | None = None  # unlabelled pool images drawn once with the run's seed; None: all
    unlabelled_ratio: int = 7  # μ: unlabelled images per labelled image in a batch
    threshold: float = 0.95  # the confidence a pseudo-label needs (1.0 keeps none)
    weight: float = 1.0  # λ_u: the unlabelled loss's weight against the labelled one
    weak: str = "crop_flip"  # the augmentation of the view that makes the pseudo-label
    strong: str = "strong"  # the augmentation of the view that learns it

    def __post_init__(self):
        if not self.stages:
            raise ValueError("consistency training needs at least one stage")
        if self.pool_images is not None and self.pool_images < 1:
            raise ValueError("consistency training's pool_images must be at least 1, or None")
        if self.unlabelled_ratio < 1:
            raise ValueError("consistency training's unlabelled_ratio must be at least 1")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError("consistency training's threshold is a probability, in [0, 1]")
        if self.weight < 0:
            raise ValueError("consistency training's weight must be at least 0")
        for name in ("weak", "strong"):
            if getattr(self, name) not in AUGMENTATIONS:
                raise ValueError(f"consistency training's {name} must be one of {AUGMENTATIONS}")


# Recipe fields that describe rather than decide: left out of a record's identity and of a recipe's settings.
DESCRIPTIVE_FIELDS = ("name", "description", "builds_on", "chapter")


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
    # Also report accuracy with these test-time views (evaluation only: the same model, the same pass over the
    # test images, its first view being the plain prediction); None: nothing more.
    report_tta: str | None = None
    ema_decay: float = 0.0  # evaluate an exponential moving average of the weights when above 0
    image_size: int | None = None  # a fixed input size (the from-scratch CNN); None: the profile's
    builds_on: str | None = None  # the recipe this one changes (the technique chapters' ladder)
    chapter: str | None = None  # the chapter (notebook id) that introduces this recipe
    self_training: SelfTraining | None = None  # then train students on the unlabelled pool too
    consistency: Consistency | None = None  # then consistency training (FixMatch) on the unlabelled pool too
    # Also fit scikit-learn's logistic regression on the frozen features the head trained on, with its
    # inverse regularisation C chosen on the validation split from these values (a head-only recipe only).
    sklearn_probe: tuple[float, ...] | None = None
    # Train at this fraction of the input size and evaluate at the full size (train small, test large: the
    # objects a random crop enlarges in training look as large as the test images' at the larger size; Touvron et
    # al. 2019, "Fixing the train-test resolution discrepancy"). None: train and evaluate at one size.
    train_scale: float | None = None

    def __post_init__(self):
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be one of {AUGMENTATIONS}")
        if self.self_training is not None and self.consistency is not None:
            raise ValueError("a recipe has self_training or consistency, not both: each is its own way of "
                             "using the unlabelled pool")
        if self.tta not in TTA_MODES:
            raise ValueError(f"tta must be one of {TTA_MODES}")
        if self.train_scale is not None and not 0 < self.train_scale <= 1:
            raise ValueError("train_scale is a fraction of the input size, above 0 and at most 1")
        if self.report_tta is not None and (self.report_tta not in TTA_MODES or self.report_tta == "none"
                                            or self.tta != "none"):
            raise ValueError(f"report_tta is one of {TTA_MODES[1:]}, for a recipe without test-time augmentation")
        if self.sklearn_probe is not None:
            if not self.sklearn_probe or any(c <= 0 for c in self.sklearn_probe):
                raise ValueError("sklearn_probe takes one or more positive values of C")
            if (any(stage.train != "head" for stage in self.stages) or self.augment != "none" or self.tta != "none"
                    or self.report_tta is not None):
                raise ValueError("sklearn_probe needs a recipe that trains only the head, on unaugmented "
                                 "images, without test-time augmentation (the features must be fixed)")

    def as_dict(self) -> dict:
        """The recipe as a dict. `self_training`, `consistency`, `sklearn_probe`, `report_tta` and `train_scale` appear only
        when the recipe has them (as lists, as JSON reads them back): a recipe without them has the same dict, and so the same
        definition and record identity, as before the fields existed."""
        d = asdict(self)
        for optional in ("report_tta", "train_scale"):
            if d[optional] is None:
                del d[optional]
        if d["self_training"] is None:
            del d["self_training"]
        else:
            d["self_training"]["stages"] = list(d["self_training"]["stages"])
        if d["consistency"] is None:
            del d["consistency"]
        else:
            d["consistency"]["stages"] = list(d["consistency"]["stages"])
        if d["sklearn_probe"] is None:
            del d["sklearn_probe"]
        else:
            d["sklearn_probe"] = list(d["sklearn_probe"])
        return d

    def train_size(self, image_size: int) -> int:
        """The input side this recipe trains at when it is evaluated at `image_size`."""
        return image_size if self.train_scale is None else max(16, round(image_size * self.train_scale))


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
    # The peak rate is the setting that matters most with little data, so it gets a rung of its own; the
    # staged recipes of chapter 7 then keep it, and change only how the training is staged.
    lower_lr = _step(
        discriminative, "ft_lower_lr", "06-discriminative-lr",
        "ft_discriminative with the head's peak rate cut from 1e-3 to 3e-4 (every group's rate with it)",
        stages=(replace(discriminative.stages[0], lr=3e-4),),
    )
    gradual = _step(
        lower_lr, "ft_gradual", "07-staged-unfreezing",
        "ft_lower_lr unfrozen in stages over the same 15 epochs: the head alone for 3 (at the linear probe's 1e-3), "
        "then the top 4 groups for 4, then everything for 8 (both at ft_lower_lr's 3e-4, x0.7 per group)",
        stages=(Stage(epochs=3, lr=1e-3, train="head", schedule="cosine"),
                Stage(epochs=4, lr=3e-4, train=4, lr_decay=0.7, schedule="cosine", warmup_epochs=0.5),
                Stage(epochs=8, lr=3e-4, train="all", lr_decay=0.7, schedule="cosine", warmup_epochs=0.5)),
    )
    lpft = _step(
        lower_lr, "ft_lpft", "07-staged-unfreezing",
        "LP-FT: ft_lower_lr preceded by a linear probe, the head fitted on frozen features (20 epochs at 1e-3), "
        "from which everything is fine-tuned exactly as ft_lower_lr does",
        stages=(Stage(epochs=20, lr=1e-3, train="head", schedule="cosine", augment=False),
                lower_lr.stages[0]),
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
    # Chapter 10's rung makes two changes; each alone is a side step, so the chapter can show both.
    smoothing = _step(mix, "ft_label_smoothing", "10-regularisation", "ft_mix with label smoothing 0.1",
                      label_smoothing=0.1)
    decay = _step(mix, "ft_weight_decay", "10-regularisation", "ft_mix with weight decay 0.05 (AdamW, on weights only)",
                  weight_decay=0.05)
    regularised = _step(mix, "ft_regularised", "10-regularisation",
                        "ft_mix with two changes at once: label smoothing 0.1 and weight decay 0.05 (its records also "
                        "report test-time flips, for chapter 11)",
                        label_smoothing=0.1, weight_decay=0.05, report_tta="flip")
    full = _step(regularised, "full", "11-tta-averaging",
                 "the full recipe: ft_regularised with two changes at once, evaluated with an exponential moving "
                 "average of the weights and with test-time flips. The average's decay at update t is "
                 "min(0.99, (1+t)/(10+t)), so over a run this short it stays below 0.99 (chapter 11 shows what it "
                 "really averages)", tta="flip", ema_decay=0.99, report_tta=None)
    return [naive, cosine, discriminative, lower_lr, gradual, lpft, bn_frozen, crop_flip, mix, smoothing, decay,
            regularised, full]


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


def _search(full: Recipe) -> list[Recipe]:
    """Chapter 12's search for a better labels-only recipe: each candidate changes one setting of `full`, and
    runs as a pilot (one subset, judged on validation; the test split is never read). The backbones'
    candidates are `full` itself on Lite1 and Lite2 (see campaign.SEARCH_BACKBONES)."""
    probe, tune = full.stages

    def candidate(name: str, description: str, **changes) -> Recipe:
        return replace(full, name=f"search_{name}", description=f"full with {description} (a search candidate)",
                       builds_on=None, chapter="12-full-recipe", **changes)

    return [
        candidate("longer", "twice the fine-tuning epochs (30)", stages=(probe, replace(tune, epochs=30))),
        candidate("high_lr", "the fine-tuning stage's peak rate at 1e-3", stages=(probe, replace(tune, lr=1e-3))),
        candidate("low_lr", "the fine-tuning stage's peak rate at 1e-4", stages=(probe, replace(tune, lr=1e-4))),
        candidate("no_mixing", "neither MixUp nor CutMix", mixup_alpha=0.0, cutmix_alpha=0.0),
        candidate("sgd", "SGD (Nesterov momentum 0.9, peak rate 0.01) in the fine-tuning stage",
                  stages=(probe, replace(tune, optimizer="sgd", lr=0.01))),
        candidate("train_small", "training at 160 px and testing at 224 (train_scale 5/7 of the input size)",
                  train_scale=5 / 7),
    ]


SEARCH: tuple[str, ...] = tuple(r.name for r in _search(next(r for r in _ladder() if r.name == "full")))

def _fixmatch(base: Recipe) -> Recipe:
    """Chapter 13: the best labels-only recipe, then FixMatch-style consistency training on the whole pool."""
    consistency = Consistency(stages=(replace(base.stages[-1], epochs=10),), pool_images=None, unlabelled_ratio=7,
                              threshold=0.95, weight=1.0, weak="crop_flip", strong="strong")
    return _step(
        base, "fixmatch", "13-unlabelled",
        f"{base.name}, then 10 more epochs of its fine-tuning stage in which each batch of labelled images comes "
        "with 7 times as many unlabelled ones, and the model learns, on a strongly augmented view of each, the "
        "class it gives a cropped and flipped view of it with at least 95% confidence (FixMatch)",
        consistency=consistency,
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
        _fixmatch(next(r for r in _ladder() if r.name == "full")),
        *_search(next(r for r in _ladder() if r.name == "full")),
    ]
}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise UserError(f"unknown recipe {name!r}; choose one of: {', '.join(RECIPES)}")
    return RECIPES[name]
