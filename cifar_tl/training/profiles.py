"""Profiles: how much compute a recipe gets, as plain frozen dataclasses.

A profile scales compute only: input size, an epoch cap, how many subsets (seeds), a cap on the test set and
on the unlabelled images. It never changes what a recipe does; `as_run` gives a recipe as a profile runs it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from cifar_tl.core.errors import UserError
from cifar_tl.training.recipes import Consistency, Recipe, SelfTraining, Stage


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    image_size: int
    seeds: tuple[int, ...]
    test_limit: int | None
    max_epochs: int | None  # a cap on each stage's epochs; None keeps the recipe's
    meaningful: bool
    pool_limit: int | None = None  # a cap on the unlabelled images of self-training and consistency; None keeps the recipe's
    unlabelled_ratio_limit: int | None = None  # a cap on consistency training's unlabelled images per labelled one
    reads_test: bool = True  # False: the run never touches the test split (a pilot, for choosing settings)


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in [
        Profile(
            "smoke",
            "proves the code runs: 32x32 input, at most 2 epochs a stage, 2 subsets, 500 test images, "
            "at most 500 unlabelled images (and FixMatch batches with one per labelled image)",
            image_size=32, seeds=(0, 1), test_limit=500, max_epochs=2, meaningful=False, pool_limit=500,
            unlabelled_ratio_limit=1,
        ),
        Profile(
            "pilot",
            "chooses settings: the full profile's input size and epochs on one subset, judged on the validation "
            "split only; the test split is never read",
            image_size=224, seeds=(0,), test_limit=None, max_epochs=None, meaningful=True, reads_test=False,
        ),
        Profile(
            "full",
            "the published book: 224x224 input, every epoch of the recipe, 3 subsets, all test images",
            image_size=224, seeds=(0, 1, 2), test_limit=None, max_epochs=None, meaningful=True,
        ),
    ]
}


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise UserError(f"unknown profile {name!r}; choose one of: {', '.join(PROFILES)}")
    return PROFILES[name]


def scaled_stages(recipe: Recipe | SelfTraining | Consistency, max_epochs: int | None, epochs: int | None) -> tuple[Stage, ...]:
    """The recipe's (or the student's) stages with `epochs` (if given) replacing every stage's epochs, then capped."""
    stages = []
    for stage in recipe.stages:
        n = epochs if epochs is not None else stage.epochs
        if max_epochs is not None:
            n = min(n, max_epochs)
        stages.append(replace(stage, epochs=n))
    return tuple(stages)


def as_run(recipe: Recipe, profile: Profile, epochs: int | None = None) -> Recipe:
    """`recipe` as `profile` runs it: every stage (the students' and the consistency training's too) through
    `scaled_stages`, the unlabelled images a self-training or consistency recipe uses capped by the profile's
    `pool_limit`, and consistency training's unlabelled images per labelled one by `unlabelled_ratio_limit`."""
    stages = scaled_stages(recipe, profile.max_epochs, epochs)

    def scaled(unlabelled):
        if unlabelled is None:
            return None
        pool = unlabelled.pool_images
        if profile.pool_limit is not None:
            pool = profile.pool_limit if pool is None else min(pool, profile.pool_limit)
        scaled = replace(unlabelled, stages=scaled_stages(unlabelled, profile.max_epochs, epochs), pool_images=pool)
        if isinstance(unlabelled, Consistency) and profile.unlabelled_ratio_limit is not None:
            scaled = replace(scaled, unlabelled_ratio=min(unlabelled.unlabelled_ratio, profile.unlabelled_ratio_limit))
        return scaled

    return replace(recipe, stages=stages, self_training=scaled(recipe.self_training),
                   consistency=scaled(recipe.consistency))
