"""Runs: a config names a record; a record holds everything needed to trust and compare a result.

A record is JSON, written atomically, named by a hash of its identity: the config (without the data's
path), the data's checksum, the checksum of the weights the backbone loads, the recipe's definition
(every setting that decides the result) and `RESULT_REVISION`. Records live in the cache
(`CIFAR_TL_CACHE/runs/`) and, committed, in the checkout's `results/<machine>/`; an existing record is
read back instead of training again, unless `force` is given. Other data, other weights or a changed
recipe give another name, so no result is overwritten; a committed record whose recipe no longer
matches recipes.py is stale (`stale_reason`), and nothing presents it as current.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .backbones import check_backbone, create_model
from .data import (MAX_SEED, balanced_subset, capped_test, indices_hash, load_dataset, portable_source,
                   resolve_source, source_checksum)
from .errors import UserError
from .files import cache_dir, save_torch, sha256_json, write_json
from .recipes import RECIPES, Recipe, as_run, get_profile, get_recipe
from .resume import StateFile
from .train import (classification_metrics, compute_outputs, eval_batch_size, pick_device, resolve_precision,
                    train, weights_of)

# The code that decides a result is this module and every cifar_tl module it imports, directly or not
# (`result_modules`); its hash is stored in every record (`code_version`) to say which code made it, but is
# not part of its identity: editing it does not retire the records.
# Part of every record's identity. Bump it when an edit changes what a run computes for the same config,
# recipe, data and weights (a bug fix in the trainer, a new augmentation kernel): every record then
# becomes stale and the campaign trains them again. Edits that keep results (speed, logging) leave it.
RESULT_REVISION = 1
DEFAULT_VAL_PER_CLASS = 50
# Recipe fields that describe rather than decide: left out of a record's identity.
_DESCRIPTIVE_FIELDS = ("name", "description", "builds_on", "chapter")
# Recipe fields added later, left out of the definition while unset: the records of recipes without them keep
# their identity.
_OPTIONAL_FIELDS = ("self_training", "consistency", "sklearn_probe", "report_tta")


@functools.lru_cache(maxsize=1)
def result_modules() -> tuple[str, ...]:
    """The file names of this module and of every cifar_tl module it imports, at any depth (imports inside
    functions included), read from their source."""
    import ast

    package = Path(__file__).parent
    found, todo = set(), [Path(__file__).name]
    while todo:
        name = todo.pop()
        if name in found or not (package / name).is_file():
            continue
        found.add(name)
        for node in ast.walk(ast.parse((package / name).read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    todo.append(f"{node.module.split('.')[0]}.py")
                else:
                    todo += [f"{alias.name}.py" for alias in node.names]
    return tuple(sorted(found))


def code_version() -> str:
    digest = hashlib.sha256(__version__.encode())
    for name in result_modules():
        digest.update((Path(__file__).parent / name).read_bytes())
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

    def as_dict(self) -> dict:
        return asdict(self)

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
    )


def recipe_definition(recipe: dict) -> dict:
    """The settings of a recipe (as a dict, stages as run) that decide a result: not its name or prose."""
    return {k: v for k, v in recipe.items()
            if k not in _DESCRIPTIVE_FIELDS and not (k in _OPTIONAL_FIELDS and v is None)}


def run_recipe(config: RunConfig) -> Recipe:
    """The recipe of `config` as its profile runs it (`recipes.as_run`)."""
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


def record_path(config: RunConfig, checksum: str | None = None, weights_sha256: str | None = None) -> Path:
    """Where the cache keeps the record of `config` (the weights' checksum from the backbone if not given)."""
    checksum = checksum or source_checksum(config.data)
    if weights_sha256 is None:
        weights_sha256 = create_model(config.backbone, 10, pretrained=True).weights["sha256"]
    return cache_dir("runs") / f"{record_name(identity(config, checksum, weights_sha256))}.json"


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


# CPU feature flags that decide which kernels (and so which speed and precision) a machine runs.
_CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_facts(cpuinfo: str = "/proc/cpuinfo") -> dict:
    """The CPU precisely (two CPUs sold under one name, e.g. "AMD EPYC", may differ in family, model and
    vector units): model name, vendor, family, model and stepping numbers, and the flags in _CPU_FLAGS.
    Read from /proc/cpuinfo (Linux); elsewhere only the name platform gives."""
    facts = {"cpu": platform.processor() or platform.machine()}
    try:
        with open(cpuinfo) as f:
            fields = {}
            for line in f:
                if not line.strip():
                    break  # the first processor's block describes them all
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        return facts
    flags = set(fields.get("flags", "").split())
    facts.update({
        "cpu": fields.get("model name", facts["cpu"]),
        "cpu_vendor": fields.get("vendor_id"),
        "cpu_family": int(fields["cpu family"]) if fields.get("cpu family", "").isdigit() else None,
        "cpu_model_number": int(fields["model"]) if fields.get("model", "").isdigit() else None,
        "cpu_stepping": int(fields["stepping"]) if fields.get("stepping", "").isdigit() else None,
        "cpu_flags": [flag for flag in _CPU_FLAGS if flag in flags],
    })
    return facts


def machine() -> dict:
    from .train import cpu_has_native_bf16

    import torchvision

    return {
        **cpu_facts(),
        "cpu_count": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # the widest vector ISA PyTorch uses here
        "cpu_native_bf16": cpu_has_native_bf16(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "cifar_tl": __version__,
    }


class _NoTestSet:
    """The test split of a pilot run: any use of it is an error, so no setting can be chosen by it."""

    def _refuse(self, *args, **kwargs):
        raise RuntimeError("a pilot run never reads the test split")

    __getitem__ = __len__ = __iter__ = __array__ = _refuse


_NO_TEST_SET = _NoTestSet()
_DATASETS: dict[str, object] = {}


def _dataset(source: str, progress: bool):
    checksum = source_checksum(source)
    if checksum not in _DATASETS:
        _DATASETS.clear()  # keep one dataset in memory at a time
        _DATASETS[checksum] = load_dataset(source, progress=progress)
    return _DATASETS[checksum]


def read_record(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# The checkout's committed records, and the copy of them that an installed package ships (pyproject maps
# results/ to the subpackage cifar_tl.reference_results), so Colab or a venv reads the same numbers.
_CHECKOUT = Path(__file__).resolve().parent.parent
_SHIPPED_RESULTS = Path(__file__).resolve().parent / "reference_results"


def results_dirs(writable: bool = False) -> list[Path]:
    """Folders of committed records: `$CIFAR_TL_RESULTS` (paths separated by os.pathsep), else the
    checkout's `results/` when there is one, else (to read only, not with `writable`) the records shipped
    inside the installed package."""
    chosen = os.environ.get("CIFAR_TL_RESULTS")
    if chosen:
        return [Path(p).expanduser().absolute() for p in chosen.split(os.pathsep) if p]
    if (_CHECKOUT / "pyproject.toml").is_file() and (_CHECKOUT / "results").is_dir():
        return [_CHECKOUT / "results"]
    return [_SHIPPED_RESULTS] if _SHIPPED_RESULTS.is_dir() and not writable else []


def records_location() -> str:
    """Where the committed records are read from, in words for a page."""
    folders = results_dirs()
    if not folders:
        return "no results folder"
    if folders == [_SHIPPED_RESULTS]:
        return f"the copy shipped with the installed cifar-tl {__version__}"
    if folders == [_CHECKOUT / "results"]:
        return "`results/` of this checkout"
    return ", ".join(f"`{folder}`" for folder in folders)


@functools.lru_cache(maxsize=256)
def _committed_record(path: Path, size: int, mtime_ns: int) -> dict | None:
    """A committed record's content, parsed once while the file is unchanged (a book build asks for the
    same records from every chapter)."""
    return read_record(path)


def committed_records() -> list[tuple[Path, dict]]:
    """Every readable run record under the results folders, with its path."""
    from .results import record_files

    found = []
    for folder in results_dirs():
        for path in record_files(folder):
            stat = path.stat()
            record = _committed_record(path, stat.st_size, stat.st_mtime_ns)
            if isinstance(record, dict) and {"config", "metrics", "identity"} <= record.keys():
                found.append((path, record))
    return found


def _find_record(name: str, ident: dict) -> dict | None:
    """The record named `name` with exactly this identity: in the cache, else among the committed ones."""
    candidates = [cache_dir("runs") / f"{name}.json"]
    candidates += [path for folder in results_dirs() for path in folder.glob(f"*/{name}.json")]
    for path in candidates:
        record = read_record(path) if path.exists() else None
        if record is not None and record.get("identity") == ident:
            return record
    return None


def reference_record(config: RunConfig, records: list[tuple[Path, dict]] | None = None) -> dict | None:
    """The committed record that stands for `config` when the book is rendered without training.

    Matches the config in every field but the data's path and the precision (bf16 and fp32 records
    both count; the page says which), needs a recipe that is not stale, and the same data checksum when
    `config.data` is at hand. Among several, the most recent.
    """
    wanted = {k: v for k, v in config.key().items() if k != "precision"}
    checksum = _checksum_if_at_hand(config.data)
    matches = []
    for _, record in committed_records() if records is None else records:
        key = {k: v for k, v in record["identity"]["config"].items() if k != "precision"}
        if key != wanted or stale_reason(record) is not None:
            continue
        if checksum is not None and record["identity"]["data"] != checksum:
            continue
        matches.append(record)
    return max(matches, key=lambda r: r.get("created", ""), default=None)


@functools.lru_cache(maxsize=8)
def _checksum_at(source: str, size: int, mtime_ns: int) -> str:
    return source_checksum(source)


def _checksum_if_at_hand(source: str) -> str | None:
    """The checksum of a data path that exists here (cached while the file is unchanged), else None."""
    path = Path(source)
    if not path.exists():
        return None
    stat = path.stat()
    return _checksum_at(source, stat.st_size, stat.st_mtime_ns) if path.is_file() else source_checksum(source)


def render_only() -> bool:
    """Whether runs must come from records (CIFAR_TL_RENDER_ONLY=1, set by `cifar-tl book`): no training."""
    return os.environ.get("CIFAR_TL_RENDER_ONLY", "") not in ("", "0")


def _cached_model(config: RunConfig, weights: Path, n_classes: int):
    """The trained model saved beside its record by an earlier `run(..., return_model=True)`, or None."""
    if not weights.exists():
        return None
    try:
        model = create_model(config.backbone, n_classes, pretrained=False)
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    except Exception:  # unreadable or from another architecture: train again
        return None
    return model.eval()


def _sklearn_probe(recipe: Recipe, result, labels, test_features: torch.Tensor) -> dict:
    """scikit-learn's logistic regression on the frozen features the recipe's head trained on, C chosen on
    the validation split (`logistic_probe.probe_chosen_on_validation`)."""
    from .logistic_probe import probe_chosen_on_validation

    if result.features is None:
        raise ValueError(f"recipe {recipe.name}: sklearn_probe needs a head trained on cached features")
    (train_features, val_features), (y_train, y_val, y_test) = result.features, labels
    return probe_chosen_on_validation((train_features.numpy(), y_train.numpy()), (val_features.numpy(), y_val.numpy()),
                                      (test_features.numpy(), y_test.numpy()), recipe.sklearn_probe)


def _accuracy(logits: torch.Tensor, labels: torch.Tensor, n_classes: int) -> float:
    return classification_metrics(logits, labels.numpy(), n_classes)["accuracy"]


def _validate(model, recipe: Recipe, result, views: str | None, x_val, y_val, config: RunConfig, device, batch):
    """The final model's validation accuracy as deployed (its EMA and test-time views), and with `views`, the
    accuracy with and without them ({view: accuracy}) from the same pass."""
    n_classes = model.head.out_features
    if views is not None:
        with_views, plain = compute_outputs(model, x_val, config.image_size, batch, device, tta=views,
                                            precision=config.precision, plain_too=True)
        by_views = {"none": _accuracy(plain, y_val, n_classes), views: _accuracy(with_views, y_val, n_classes)}
        return by_views, by_views[recipe.tta]
    if recipe.ema_decay > 0:  # the final model differs from the last epoch's
        logits = compute_outputs(model, x_val, config.image_size, batch, device, precision=config.precision)
        return None, _accuracy(logits, y_val, n_classes)
    return None, result.history[-1]["val_accuracy"]


def _test(model, recipe: Recipe, result, views: str | None, labels, x_test, y_test, config: RunConfig, device, batch,
          progress: bool) -> dict:
    """The test images, read once: the metrics of the model as deployed, the accuracy with and without
    `views`, and scikit-learn's probe on the frozen features (and its seconds) for a recipe that has it."""
    n_classes = model.head.out_features
    out = {"by_views": None, "sklearn_probe": None, "sklearn_seconds": None}
    if recipe.sklearn_probe is not None:  # the test images' frozen features feed the trained head and the probe
        features = compute_outputs(model, x_test, config.image_size, batch, device, features=True,
                                   progress=progress, desc="test set", precision=config.precision)
        with torch.inference_mode():
            logits = model.head(features.to(device)).float().cpu()
        started = time.perf_counter()
        out["sklearn_probe"] = _sklearn_probe(recipe, result, (*labels, y_test), features)
        out["sklearn_seconds"] = time.perf_counter() - started
    elif views is not None:
        with_views, plain = compute_outputs(model, x_test, config.image_size, batch, device, progress=progress,
                                            desc="test set", tta=views, precision=config.precision, plain_too=True)
        logits = with_views if recipe.tta != "none" else plain
        out["by_views"] = {"none": _accuracy(plain, y_test, n_classes), views: _accuracy(with_views, y_test, n_classes)}
    else:
        logits = compute_outputs(model, x_test, config.image_size, batch, device, progress=progress, desc="test set",
                                 precision=config.precision)
    out["metrics"] = classification_metrics(logits, y_test.numpy(), n_classes)
    # the probability the model gives its prediction, per test image (its most confident mistakes)
    out["confidence"] = [round(p, 4) for p in logits.softmax(1).max(1).values.tolist()]
    return out


def _metrics(val_accuracy: float, tested: dict | None, dataset, config: RunConfig, y_test, test_idx) -> dict:
    """The record's metrics: validation accuracy, and what the test images gave (None in a profile that
    never reads them: a pilot)."""
    if tested is None:
        return {"val_accuracy": val_accuracy, "test_read": False, "test_images": 0, "test_accuracy": None}
    test = tested["metrics"]
    return {
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "test_images": len(test_idx),
        "test_limited": config.test_limit is not None and len(test_idx) < len(dataset.test_labels),
        "val_accuracy": val_accuracy,
        "per_class_accuracy": dict(zip(dataset.classes, test["per_class_accuracy"])),
        "confusion_matrix": test["confusion_matrix"],
        "test_predictions": test["predictions"],
        "test_confidence": tested["confidence"],
        "test_labels": y_test.tolist(),
        "test_indices": test_idx.tolist(),
    }


def run(config: RunConfig, force: bool = False, progress: bool = True, device: str | None = None,
        return_model: bool = False):
    """Train and evaluate `config`, or read its existing record back. Returns the record, or with
    `return_model` (record, trained model): the model's weights are then kept beside the record
    (`<record>.pt`), so that asking again reads them back too instead of training again.

    With CIFAR_TL_RENDER_ONLY set, the record must already be committed (`reference_record`): nothing
    is trained, and neither data nor weights are needed."""
    if render_only():
        if return_model:
            raise UserError(f"{config.recipe} ({config.backbone}): the book is being rendered from records "
                            "(CIFAR_TL_RENDER_ONLY), but this chapter needs a trained model; build it with --profile")
        record = reference_record(config)
        if record is None:
            raise UserError(f"no committed full-profile record of {config.recipe} ({config.backbone}, subset "
                            f"{config.seed}) under {', '.join(map(str, results_dirs())) or 'results/'}: "
                            "`cifar-tl campaign` trains the missing ones")
        return record
    started = time.perf_counter()
    checksum = source_checksum(config.data)
    dataset = _dataset(config.data, progress)
    torch.manual_seed(config.seed)  # the new head's initial weights
    model = create_model(config.backbone, len(dataset.classes))  # loads the weights, or says why it cannot
    ident = identity(config, checksum, model.weights["sha256"])
    name = record_name(ident)
    path = cache_dir("runs") / f"{name}.json"
    weights = path.with_suffix(".pt")
    existing = _find_record(name, ident)
    state = StateFile(path.with_suffix(".state"))  # training state of an interrupted run: it resumes from there
    if force:
        state.clear()
    if existing is not None and not force:
        if not return_model:
            return existing
        cached = _cached_model(config, weights, len(existing["data"]["classes"]))
        if cached is not None:
            return existing, cached
    elif existing is None and path.exists():
        print(f"cifar-tl: record {path.name} is unreadable or not of this run; running again", file=sys.stderr)

    recipe = run_recipe(config)
    stages = recipe.stages
    train_idx, val_idx = balanced_subset(
        dataset.train_labels, config.per_class, config.val_per_class, config.seed, dataset.classes
    )
    if (recipe.self_training or recipe.consistency) and len(train_idx) + len(val_idx) == len(dataset.train_images):
        raise UserError(f"recipe {config.recipe} trains on unlabelled images too, but there are none left: every "
                        "training image is in the labelled subset or the validation split; use a smaller "
                        "--per-class or --val-per-class")  # said before training, not after it
    reads_test = get_profile(config.profile).reads_test
    if not reads_test:  # a pilot chooses settings: the test split is not even at hand
        dataset = replace(dataset, test_images=_NO_TEST_SET, test_labels=_NO_TEST_SET)
    test_idx = capped_test(dataset.test_labels, config.test_limit) if reads_test else np.zeros(0, dtype=np.int64)
    chosen_device = pick_device(device)
    if chosen_device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    def tensors(images, labels, index):
        return torch.from_numpy(images[index]), torch.from_numpy(labels[index])

    x_train, y_train = tensors(dataset.train_images, dataset.train_labels, train_idx)
    x_val, y_val = tensors(dataset.train_images, dataset.train_labels, val_idx)
    x_test, y_test = tensors(dataset.test_images, dataset.test_labels, test_idx) if reads_test else (None, None)
    result = train(model, recipe, stages, x_train, y_train, x_val, y_val, config.image_size, chosen_device,
                   config.seed, progress, config.precision, state.child("train"))
    unlabelled = None
    if recipe.self_training is not None:  # the model just trained is the first teacher
        model, result, unlabelled = _self_train(config, recipe, model, result, dataset, train_idx, val_idx,
                                                (x_train, y_train, x_val, y_val), chosen_device, progress, state)
    if recipe.consistency is not None:  # the model just trained is where consistency training starts
        model, result, unlabelled = _consistency_train(config, recipe, model, result, dataset, train_idx, val_idx,
                                                       (x_train, y_train, x_val, y_val), chosen_device, progress,
                                                       state)

    batch = eval_batch_size(chosen_device)
    views = recipe.tta if recipe.tta != "none" else recipe.report_tta  # test-time views evaluated, if any
    val_views, val_accuracy = _validate(model, recipe, result, views, x_val, y_val, config, chosen_device, batch)
    eval_started = time.perf_counter()
    tested = _test(model, recipe, result, views, (y_train, y_val), x_test, y_test, config, chosen_device, batch,
                   progress) if reads_test else None
    eval_seconds = time.perf_counter() - eval_started - ((tested or {}).get("sklearn_seconds") or 0.0)
    by_views = None
    if views is not None:  # accuracy with and without the test-time views, from the same passes
        by_views = {view: {"val_accuracy": val_views[view], **({"test_accuracy": tested["by_views"][view]}
                                                                 if tested else {})} for view in ("none", views)}

    record = {
        "name": name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "code_version": code_version(),
        "identity": ident,
        "config": {**config.as_dict(), "data": portable_source(config.data)},
        "recipe": current_recipe(config),
        "data": {
            **dataset.identity,
            "source": portable_source(config.data),
            "checksum": checksum,
            "seed": config.seed,
            "counts": {"train": len(train_idx), "val": len(val_idx), "test": len(test_idx)},
            "train_indices": train_idx.tolist(),
            "val_indices": val_idx.tolist(),
            "test_indices_sha256": indices_hash(test_idx),
            "subset_sha256": indices_hash(np.concatenate([train_idx, val_idx])),
        },
        "weights": model.weights,
        "model": {"groups": model.group_names(), "parameters": model.parameter_counts(),
                  "distance_from_pretrained": result.distance_from_pretrained},
        "metrics": _metrics(val_accuracy, tested, dataset, config, y_test, test_idx),
        "history": result.history,
        "timing": {
            # with the time an interrupted run had spent in earlier processes, up to its last saved epoch
            "total_seconds": time.perf_counter() - started + result.earlier_seconds,
            "resumed_at_epochs": result.resumed_at_epochs,
            "train_seconds": result.train_seconds,
            "feature_seconds": result.feature_seconds,
            "eval_seconds": eval_seconds,
            "train_images_per_second": result.images_trained / result.train_seconds
            if result.images_trained and result.train_seconds
            else None,
            "eval_images_per_second": len(test_idx) / eval_seconds if eval_seconds else None,
            "device": str(chosen_device),
            "precision": config.precision,
        },
        "machine": machine(),
    }
    if by_views is not None:
        record["metrics"]["by_test_time_views"] = by_views
    if unlabelled is not None:
        record["self_training" if recipe.consistency is None else "consistency"] = unlabelled
    if tested is not None and tested["sklearn_probe"] is not None:
        record["metrics"]["sklearn_probe"] = tested["sklearn_probe"]
        record["timing"]["sklearn_probe_seconds"] = tested["sklearn_seconds"]
    if return_model:
        save_torch(weights, {k: v.detach().cpu() for k, v in model.state_dict().items()})
    if force or existing is None:  # a valid record is only replaced with --force
        write_json(path, record)
    state.clear()
    return (record, model) if return_model else record


def _self_train(config: RunConfig, recipe: Recipe, teacher, teacher_result, dataset, train_idx, val_idx, labelled,
                device, progress, state: StateFile):
    """Self-training (`recipe.self_training`) from the trained `teacher`: returns the last student, the
    teacher's and students' training as one result, and the record's `self_training` section.

    The loop gets the pool's images only. The pool's labels are read after it has finished, for the
    section's `diagnostics` (for the reader: how right the pseudo-labels were), and nowhere else."""
    from . import self_training

    settings = recipe.self_training
    pool = self_training.pool_indices(len(dataset.train_images), train_idx, val_idx, settings.pool_images, config.seed)

    def new_student(round_number: int):
        torch.manual_seed(config.seed + round_number)  # the new head's initial weights
        return create_model(config.backbone, len(dataset.classes))

    pool_images = torch.from_numpy(dataset.train_images[pool])  # images only: the labels stay behind
    outcome = self_training.self_train(teacher, new_student, recipe, *labelled, pool_images, config.image_size, device,
                                       config.seed, progress, config.precision, state)
    available = len(dataset.train_images) - len(train_idx) - len(val_idx)
    section = self_training.accounting(outcome, settings, pool, available, dataset.classes)
    section["diagnostics"] = self_training.diagnostics(outcome, dataset.train_labels[pool], dataset.classes)
    return outcome.model, self_training.merged_result(teacher_result, outcome), section


def _consistency_train(config: RunConfig, recipe: Recipe, model, labelled_result, dataset, train_idx, val_idx,
                       labelled, device, progress, state: StateFile):
    """Consistency training (`recipe.consistency`) from the trained `model`: returns the model, the labels-only
    and consistency training as one result, and the record's `consistency` section.

    The loop gets the pool's images only. The pool's labels are read after it has finished, for the
    section's `diagnostics` (for the reader: how right the last epoch's pseudo-labels were), and nowhere else."""
    from . import consistency, self_training

    settings = recipe.consistency
    pool = self_training.pool_indices(len(dataset.train_images), train_idx, val_idx, settings.pool_images, config.seed)
    with torch.random.fork_rng(devices=[]):  # the weights the run started from, to measure how far they moved
        torch.manual_seed(config.seed)
        start = create_model(config.backbone, len(dataset.classes))
    start_weights = weights_of(start)
    pool_images = torch.from_numpy(dataset.train_images[pool])  # images only: the labels stay behind
    result = consistency.consistency_train(model, recipe, *labelled, pool_images, config.image_size, device,
                                           config.seed + 1, progress, config.precision, state.child("consistency"),
                                           start_weights)
    merged = consistency.merged_result(labelled_result, result)
    available = len(dataset.train_images) - len(train_idx) - len(val_idx)
    section = consistency.accounting(merged.history, settings, pool, available)
    section["diagnostics"] = consistency.diagnostics(result.last_epoch, merged.history[-1]["epoch"], settings.threshold,
                                                     dataset.train_labels[pool], dataset.classes)
    return model, merged, section


# Every record run_seeds has handed out in this process, by name: what a chapter's page shows, so that
# its header can say which machines, precisions, code versions and dates made its numbers.
_SHOWN: dict[str, dict] = {}


def records_shown() -> list[dict]:
    return list(_SHOWN.values())


def run_seeds(recipe: str, backbone: str, profile: str, seeds=None, force: bool = False, progress: bool = True,
              **config) -> list[dict]:
    """One record per seed (the profile's seeds unless given): the same change over several subsets."""
    seeds = get_profile(profile).seeds if seeds is None else seeds
    records = [
        run(make_config(recipe, backbone, seed=s, profile=profile, **config), force=force, progress=progress)
        for s in seeds
    ]
    _SHOWN.update((r["name"], r) for r in records)
    return records
