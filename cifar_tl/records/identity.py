"""A run's config and identity: a config names a record; a record holds everything needed to trust and compare
a result.

A record is named by a hash of its identity: the config (without the data's path), the data's checksum, the
checksum of the weights the backbone loads, the recipe's definition (every setting that decides the result)
and `RESULT_REVISION`. Other data, other weights or a changed recipe give another name, so no result is
overwritten; a committed record whose recipe no longer matches `training/recipes.py` is stale
(`stale_reason`), and nothing presents it as current.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

from cifar_tl import __version__
from cifar_tl.core.device import pick_device, resolve_precision
from cifar_tl.core.errors import UserError
from cifar_tl.core.files import sha256_json
from cifar_tl.data.sources import resolve_source
from cifar_tl.data.subsets import MAX_SEED
from cifar_tl.models.backbones import check_backbone
from cifar_tl.training.profiles import as_run, get_profile
from cifar_tl.training.recipes import DESCRIPTIVE_FIELDS, RECIPES, Recipe, get_recipe


# The code that decides a result is this module and every cifar_tl module it imports, directly or not
# (`result_modules`); its hash is stored in every record (`code_version`) to say which code made it, but is
# not part of its identity: editing it does not retire the records.
# Part of every record's identity. Bump it when an edit changes what a run computes for the same config,
# recipe, data and weights (a bug fix in the trainer, a new augmentation kernel): every record then
# becomes stale and the campaign trains them again. Edits that keep results (speed, logging) leave it.
RESULT_REVISION = 1


DEFAULT_VAL_PER_CLASS = 50




# Recipe fields added later, left out of the definition while unset: the records of recipes without them keep
# their identity.
_OPTIONAL_FIELDS = ("self_training", "consistency", "sklearn_probe", "report_tta", "train_scale")


def _module_file(dotted: str, package: Path) -> Path | None:
    """The source file of the cifar_tl module `dotted` (a package's `__init__.py`), or None if it is not one."""
    parts = dotted.split(".")[1:]
    for candidate in (package.joinpath(*parts).with_suffix(".py") if parts else None,
                      package.joinpath(*parts, "__init__.py")):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


@functools.lru_cache(maxsize=1)
def result_modules(start: str = "cifar_tl.records.runner") -> tuple[str, ...]:
    """The files, relative to the package, of the module that makes records (`start`) and of every cifar_tl
    module it imports, at any depth (imports inside functions and the packages' `__init__` included), read
    from their source: the code that decides a result."""
    import ast

    package = Path(__file__).resolve().parents[1]
    found, todo = {}, [start]
    while todo:
        dotted = todo.pop()
        path = _module_file(dotted, package)
        if path is None or dotted in found:
            continue
        found[dotted] = path
        todo.append(dotted.rpartition(".")[0])  # a module's package runs its __init__ first
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("cifar_tl"):
                todo += [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Import):
                todo += [alias.name for alias in node.names if alias.name.startswith("cifar_tl")]
    return tuple(sorted(path.relative_to(package).as_posix() for path in found.values()))


def code_version() -> str:
    digest = hashlib.sha256(__version__.encode())
    package = Path(__file__).resolve().parents[1]
    for name in result_modules():
        digest.update((package / name).read_bytes())
    return f"{__version__}+{digest.hexdigest()[:12]}"


@dataclass(frozen=True)
class RunConfig:
    recipe: str
    backbone: str
    per_class: int
    seed: int
    profile: str
    image_size: int
    epochs: int | None  # every stage's epochs, if set; else the recipe's (capped by the profile)
    test_limit: int | None  # None: the whole test split
    val_per_class: int
    data: str
    precision: str = "fp32"  # "bf16" or "fp32", resolved from "auto" for the device that will train
    # Input sizes, besides the run's own, at which the test images are also classified once trained (the record
    # keeps those predictions: appendix A1's domain gap). None: only the run's own; left out of the identity then,
    # so records made before it existed keep theirs.
    eval_sizes: tuple[int, ...] | None = None

    def __post_init__(self):
        if self.eval_sizes is not None:  # a record read back holds a list
            object.__setattr__(self, "eval_sizes", tuple(self.eval_sizes))

    def as_dict(self) -> dict:
        fields = asdict(self)
        if self.eval_sizes is None:
            del fields["eval_sizes"]
        else:
            fields["eval_sizes"] = list(self.eval_sizes)  # as JSON writes it, so that a read-back key is equal
        return fields

    def key(self) -> dict:
        """The config as it enters a record's identity: without the data's path, which differs per machine."""
        return {k: v for k, v in self.as_dict().items() if k != "data"}


_PROFILE_DEFAULT = "profile"


def make_config(
    recipe: str,
    backbone: str = "efficientnet_lite0",
    per_class: int = 100,
    seed: int = 0,
    profile: str = "smoke",
    image_size: int | None = None,
    epochs: int | None = None,
    test_limit: int | None | str = _PROFILE_DEFAULT,
    val_per_class: int = DEFAULT_VAL_PER_CLASS,
    data: str | None = None,
    precision: str = "auto",
    device: str | None = None,
    eval_sizes=None,
) -> RunConfig:
    """Check the arguments and fill what is unset from the recipe and the profile; "auto" precision
    becomes bf16 where `device` (default: the GPU if any, else the CPU) runs it natively, else fp32."""
    chosen_recipe, chosen_profile = get_recipe(recipe), get_profile(profile)
    check_backbone(backbone)
    for name, value in (("--per-class", per_class), ("--image-size", image_size), ("--epochs", epochs)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise UserError(f"{name} must be a positive whole number (got {value!r})")
    if image_size is not None and image_size < 16:
        raise UserError(f"--image-size must be at least 16 pixels (got {image_size})")
    if not isinstance(val_per_class, int) or val_per_class < 1:
        raise UserError(f"--val-per-class must be a positive whole number (got {val_per_class!r}): "
                        "validation images decide every choice")
    if not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise UserError(f"--seed must be a whole number from 0 to {MAX_SEED} (got {seed!r})")
    if eval_sizes is not None:
        if (not isinstance(eval_sizes, (list, tuple)) or not eval_sizes
                or not all(isinstance(n, int) and n >= 16 for n in eval_sizes)):
            raise UserError(f"--eval-sizes must be input sizes of at least 16 pixels (got {eval_sizes!r})")
        eval_sizes = tuple(sorted(set(eval_sizes)))
    if test_limit == _PROFILE_DEFAULT:
        test_limit = chosen_profile.test_limit
    if test_limit is not None and (not isinstance(test_limit, int) or test_limit < 1):
        raise UserError(f"--test-limit must be a positive whole number or 'all' (got {test_limit!r})")
    return RunConfig(
        recipe=recipe,
        backbone=backbone,
        per_class=per_class,
        seed=seed,
        profile=profile,
        image_size=image_size or chosen_recipe.image_size or chosen_profile.image_size,
        epochs=epochs,
        test_limit=test_limit,
        val_per_class=val_per_class,
        data=resolve_source(data),
        precision=resolve_precision(precision, pick_device(device)),
        eval_sizes=eval_sizes,
    )


def recipe_definition(recipe: dict) -> dict:
    """The settings of a recipe (as a dict, stages as run) that decide a result: not its name or prose."""
    return {k: v for k, v in recipe.items()
            if k not in DESCRIPTIVE_FIELDS and not (k in _OPTIONAL_FIELDS and v is None)}


def run_recipe(config: RunConfig) -> Recipe:
    """The recipe of `config` as its profile runs it (`profiles.as_run`)."""
    return as_run(get_recipe(config.recipe), get_profile(config.profile), config.epochs)


def current_recipe(config: RunConfig) -> dict:
    """The recipe of `config` as recipes.py defines it today, with the stages the profile runs."""
    recipe = run_recipe(config)
    return {**recipe.as_dict(), "stages": [asdict(s) for s in recipe.stages]}


def identity(config: RunConfig, data_checksum: str, weights_sha256: str | None) -> dict:
    """Everything that decides a run's result; its hash names the record."""
    return {
        "config": config.key(),
        "data": data_checksum,
        "weights": weights_sha256,
        "recipe": recipe_definition(current_recipe(config)),
        "revision": RESULT_REVISION,
    }


def record_name(ident: dict) -> str:
    config = ident["config"]
    return f"{config['recipe']}-{config['backbone']}-s{config['seed']}-{sha256_json(ident)[:12]}"


def stale_reason(record: dict) -> str | None:
    """Why a record no longer stands for its recipe today (None: it does): the recipe was changed or
    removed, or the code that computes results has been revised since."""
    ident = record.get("identity") or {}
    recipe = (record.get("config") or {}).get("recipe")
    if ident.get("revision") != RESULT_REVISION:
        return f"made at result revision {ident.get('revision')}, the code is at {RESULT_REVISION}"
    if recipe not in RECIPES:
        return f"recipe {recipe!r} no longer exists"
    config = RunConfig(**{**record["config"], "data": ""})
    if recipe_definition(current_recipe(config)) != ident.get("recipe"):
        return f"recipe {recipe!r} has changed since the record was made"
    return None
