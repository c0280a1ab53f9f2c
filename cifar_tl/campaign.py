"""The campaign: train exactly the full-profile records the published book is missing.

The book renders from committed records (`results/<machine>/*.json`). `book_runs()` lists every run
its chapters show; `campaign_status` says which have a current committed record, which are missing and
which committed records are stale; `run_campaign` trains the missing ones one at a time, each written
atomically into `results/<machine>/`, and can be stopped at any point and started again. A claim file
per run keeps two campaign processes on the same folder from training the same run at once.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .files import write_json
from .recipes import RECIPES, get_profile

BOOK_PROFILE = "full"
DEFAULT_BACKBONE = "efficientnet_lite0"
# The from-scratch recipe trains its own small CNN; every other recipe fine-tunes the default backbone.
RECIPE_BACKBONE = {"scratch": "simple_cnn"}
# Runs a chapter shows besides the recipes it introduces and the ones those build on.
_CHAPTER_EXTRAS: dict[str, tuple[str, ...]] = {
    "03-linear-probe": ("scratch",),
    "04-naive-finetune": ("linear_probe",),
    "12-full-recipe": (*(r.name for r in RECIPES.values()
                         if (r.builds_on or r.name == "finetune_naive") and r.self_training is None),
                       "linear_probe"),
    "13-unlabelled": ("full",),  # the labels-only recipe the self-training recipe is paired against
    "a2-cost": ("scratch", "linear_probe", "finetune_naive"),
}
# Chapters the published book renders from records: those that show runs, and chapter 1, which shows the
# data only. The others (the backbone appendix, which needs torchvision's downloaded weights and times
# this machine) build in the smoke profile until they have records of their own.
CLAIM_MAX_AGE = 24 * 3600  # a claim from another host older than this is taken to be abandoned


@dataclass(frozen=True)
class PlannedRun:
    recipe: str
    backbone: str
    seed: int

    @property
    def label(self) -> str:
        return f"{self.recipe}-{self.backbone}-s{self.seed}"


def chapter_recipes(chapter: str) -> list[str]:
    """The recipes whose full-profile records chapter `chapter` shows, in a stable order."""
    own = [r for r in RECIPES.values() if r.chapter == chapter]
    names = [r.builds_on for r in own if r.builds_on] + [r.name for r in own] + list(_CHAPTER_EXTRAS.get(chapter, ()))
    return list(dict.fromkeys(names))


def book_chapters() -> list[str]:
    """Chapter ids that show full-profile records, in reading order."""
    ids = {r.chapter for r in RECIPES.values() if r.chapter} | set(_CHAPTER_EXTRAS)
    return sorted(ids)


RECORD_CHAPTERS = frozenset({"01-data", *book_chapters()})


def chapter_runs(chapter: str) -> list[PlannedRun]:
    seeds = get_profile(BOOK_PROFILE).seeds
    return [PlannedRun(name, RECIPE_BACKBONE.get(name, DEFAULT_BACKBONE), seed)
            for name in chapter_recipes(chapter) for seed in seeds]


def book_runs() -> list[PlannedRun]:
    """Every run the full-profile book shows, once each."""
    return list(dict.fromkeys(run for chapter in book_chapters() for run in chapter_runs(chapter)))


def machine_slug() -> str:
    """A folder name for this machine's records: the GPU, else the CPU with its cores and vector ISA
    (two CPUs of the same name can differ in AVX-512, which decides bf16 and speed)."""
    from .runs import machine

    return machine_slug_of({"machine": machine()})


def _config(run: PlannedRun, data: str | None = None, precision: str = "auto", device: str | None = None):
    from .runs import make_config

    return make_config(run.recipe, run.backbone, seed=run.seed, profile=BOOK_PROFILE, data=data,
                       precision=precision, device=device)


def whole(record: dict) -> bool:
    """A record the book may show: the full profile, on every test image."""
    metrics = record["metrics"]
    return (record["config"]["profile"] == BOOK_PROFILE and not metrics.get("test_limited")
            and metrics["test_images"] == record["data"].get("test_total", metrics["test_images"]))


@dataclass
class Status:
    done: dict[PlannedRun, dict]
    missing: list[PlannedRun]
    stale: list[tuple[str, str]]  # (record file, why)


def campaign_status(data: str | None = None) -> Status:
    """Which planned runs have a current committed record, which are missing; which records are stale."""
    from .runs import committed_records, reference_record, stale_reason

    done, missing = {}, []
    committed = committed_records()
    for run in book_runs():
        record = reference_record(_config(run, data, precision="fp32", device="cpu"), committed)
        if record is not None and whole(record):
            done[run] = record
        else:
            missing.append(run)
    stale = [(str(path), why) for path, record in committed if (why := stale_reason(record))]
    return Status(done, missing, stale)


def _fine_tune_epochs(recipe) -> int:
    """Epochs in which more than the head trains (the expensive ones: a head-only stage on frozen
    features costs about nothing per epoch)."""
    return sum(s.epochs for s in recipe.stages if s.train != "head")


def estimate_seconds(run: PlannedRun, done: dict[PlannedRun, dict], slug: str) -> tuple[float | None, str]:
    """Seconds `run` should take, from measured records: the same recipe on this machine, else on any
    machine, else this machine's (or any machine's) seconds per fine-tuning epoch of the same backbone
    times the recipe's fine-tuning epochs, plus the evaluation they measured."""
    same = [r for p, r in done.items() if p.recipe == run.recipe]
    here = [r for r in same if machine_slug_of(r) == slug]
    for records, how in ((here, "same recipe, this machine"), (same, "same recipe, another machine")):
        if records:
            return sum(r["timing"]["total_seconds"] for r in records) / len(records), how
    recipe = RECIPES[run.recipe]
    fine_tuned = [(p, r) for p, r in done.items() if p.backbone == run.backbone
                  and _fine_tune_epochs(RECIPES[p.recipe]) and p.recipe in RECIPES]
    for pool, how in (([x for x in fine_tuned if machine_slug_of(x[1]) == slug], "this machine"),
                      (fine_tuned, "another machine")):
        if pool:
            per_epoch = sorted(r["timing"]["train_seconds"] / _fine_tune_epochs(RECIPES[p.recipe]) for p, r in pool)
            rest = sorted(r["timing"]["total_seconds"] - r["timing"]["train_seconds"] for _, r in pool)
            seconds = _fine_tune_epochs(recipe) * per_epoch[len(per_epoch) // 2] + rest[len(rest) // 2]
            return seconds, f"fine-tuning epochs × measured epoch, {how}"
    return None, "not measured yet"


def machine_slug_of(record: dict) -> str:
    """The folder name of the machine a record ran on (see `machine_slug`)."""
    info = record.get("machine") or {}
    if info.get("gpu"):
        name = info["gpu"]
    else:
        name = f"{info.get('cpu')} {info.get('cpu_count')}core {info.get('cpu_capability') or ''}"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "machine"


def _minutes(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds / 60:.0f} min"


def describe(status: Status, slug: str) -> str:
    """What is done, what is left with an estimate, and which committed records are stale."""
    lines = [f"{len(status.done)} of {len(status.done) + len(status.missing)} full-profile runs of the book "
             f"have a current committed record; {len(status.missing)} missing:"]
    total = 0.0
    for run in status.missing:
        seconds, how = estimate_seconds(run, status.done, slug)
        total += seconds or 0.0
        lines.append(f"  {run.label:<44} ≈ {_minutes(seconds):>8}  ({how})")
    if status.missing:
        lines.append(f"estimated total: ≈ {total / 3600:.1f} h on one machine like those that measured it")
    for path, why in status.stale:
        lines.append(f"stale: {path}: {why} (delete it; the campaign trains its replacement)")
    return "\n".join(lines)


def train_command(run: PlannedRun, results: Path) -> str:
    """One shell command that trains `run` and writes its record into `results` (for a scheduler)."""
    return (f"cifar-tl train --recipe {run.recipe} --backbone {run.backbone} --seed {run.seed} "
            f"--profile {BOOK_PROFILE} --results {results}")


# -- claims: one process per run ---------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim(folder: Path, run: PlannedRun) -> Path | None:
    """Create the claim file of `run` in `folder`/.claims, or None if a live process holds it.

    A claim left by a process that died on this host, or older than CLAIM_MAX_AGE from another host,
    is taken over."""
    claims = folder / ".claims"
    claims.mkdir(parents=True, exist_ok=True)
    path = claims / f"{run.label}.claim"
    mine = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                held = json.loads(path.read_text())
            except (OSError, ValueError):
                held = {}
            same_host = held.get("host") == mine["host"]
            if same_host and isinstance(held.get("pid"), int) and _alive(held["pid"]):
                return None
            if not same_host and time.time() - held.get("started", 0) < CLAIM_MAX_AGE and held:
                return None
            path.unlink(missing_ok=True)  # abandoned: take it over
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(mine, f)
        return path
    return None


def save_to_results(record: dict, results: Path, slug: str | None = None) -> Path:
    """Write a whole full-profile record atomically into `results/<machine>/<name>.json`."""
    if not whole(record):
        raise UserError(f"record {record['name']} is not a whole full-profile run (profile "
                        f"{record['config']['profile']}, {record['metrics']['test_images']} test images): "
                        "results/ holds only those")
    path = results / (slug or machine_slug()) / f"{record['name']}.json"
    write_json(path, record, compact=True)
    return path


def run_campaign(results: Path, data: str | None = None, device: str | None = None, precision: str = "auto",
                 max_runs: int | None = None, recipes: list[str] | None = None, progress: bool = True) -> int:
    """Train missing runs one at a time (cheapest first), each saved as soon as it is done. Returns how
    many were trained. Stop it at any time; run it again to go on."""
    from .runs import run as run_one

    slug = machine_slug()
    folder = results / slug
    trained = 0
    while max_runs is None or trained < max_runs:
        status = campaign_status(data)
        todo = [r for r in status.missing if not recipes or r.recipe in recipes]
        if not todo:
            print("cifar-tl: campaign: nothing left to train" + (" for the recipes asked" if recipes else ""),
                  file=sys.stderr)
            break
        todo.sort(key=lambda r: estimate_seconds(r, status.done, slug)[0] or 0.0)  # unmeasured first: cheap to learn
        print(describe(status, slug), file=sys.stderr)
        for candidate in todo:
            held = claim(folder, candidate)
            if held is not None:
                break
        else:
            print("cifar-tl: campaign: every missing run is claimed by another process", file=sys.stderr)
            break
        try:
            print(f"cifar-tl: campaign: training {candidate.label}", file=sys.stderr)
            record = run_one(_config(candidate, data, precision, device), progress=progress, device=device)
            path = save_to_results(record, results, slug)
            print(f"cifar-tl: campaign: wrote {path} (test accuracy {record['metrics']['test_accuracy']:.4f}, "
                  f"{record['timing']['total_seconds'] / 60:.1f} min)", file=sys.stderr)
        finally:
            held.unlink(missing_ok=True)
        trained += 1
    return trained
