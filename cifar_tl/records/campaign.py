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
import socket
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import torch

from cifar_tl.core.device import machine
from cifar_tl.core.errors import UserError
from cifar_tl.core.files import write_json
from cifar_tl.data.augment import tta_views
from cifar_tl.records.identity import DEFAULT_VAL_PER_CLASS, make_config, stale_reason
from cifar_tl.records.runner import run as run_one
from cifar_tl.records.store import committed_records, machine_slug_of, reference_record
from cifar_tl.training.profiles import get_profile
from cifar_tl.training.recipes import RECIPES, SEARCH

BOOK_PROFILE = "full"
PILOT_PROFILE = "pilot"
DEFAULT_BACKBONE = "efficientnet_lite0"
# The from-scratch recipe trains its own small CNN; every other recipe fine-tunes the default backbone.
RECIPE_BACKBONE = {"scratch": "simple_cnn"}
# Runs a chapter shows besides the recipes it introduces and the ones those build on.
_CHAPTER_EXTRAS: dict[str, tuple[str, ...]] = {
    "03-linear-probe": ("scratch",),
    "04-naive-finetune": ("linear_probe",),
    "07-staged-unfreezing": ("linear_probe",),  # where LP-FT's probe stage stands against the probe alone
    "12-full-recipe": (*(r.name for r in RECIPES.values()
                         if (r.builds_on or r.name == "finetune_naive") and r.self_training is None
                         and r.consistency is None),
                       "linear_probe"),
    "13-unlabelled": ("full",),  # the labels-only recipe the self-training and FixMatch recipes are paired against
    "a2-cost": ("scratch", "linear_probe", "finetune_naive"),
    "a1-backbones": ("scratch", "linear_probe", "full"),
}
# Chapters the published book renders from records: those that show runs, and chapter 1, which shows the
# data only.
# Runs a chapter shows besides its recipes on the default backbone (`_CHAPTER_OTHER_RUNS`): chapter 12's pilots
# for a better labels-only recipe (one subset each, validation only): `full` itself as the reference, each
# candidate of recipes.SEARCH, and `full` on the larger backbones at their native input sizes; and appendix A1's
# backbones (below).
SEARCH_BACKBONES = {"efficientnet_lite1": 240, "efficientnet_lite2": 260}
_CHAPTER_OTHER_RUNS: dict[str, tuple["PlannedRun", ...]] = {}
# Appendix A1: every backbone whose ImageNet weights install offline, at its native input size, with a linear
# probe on 100 and on every training image per class (CIFAR-10's 5,000 less the validation images) and the full
# recipe; and one linear probe on the default backbone that also classifies its test images at other input sizes.
A1_BACKBONES = {DEFAULT_BACKBONE: None, **SEARCH_BACKBONES}  # None: the profile's 224
A1_POOL_PER_CLASS = 5_000 - DEFAULT_VAL_PER_CLASS
A1_EVAL_SIZES = (32, 64, 128, 224)
CLAIM_MAX_AGE = 24 * 3600  # a claim from another host older than this is taken to be abandoned


@dataclass(frozen=True)
class PlannedRun:
    recipe: str
    backbone: str
    seed: int
    profile: str = BOOK_PROFILE  # or "pilot": a search candidate, judged on validation, the test split never read
    image_size: int | None = None  # None: the recipe's or the profile's
    per_class: int | None = None  # labelled images per class; None: the book's 100
    eval_sizes: tuple[int, ...] | None = None  # other input sizes the test images are also classified at

    @property
    def label(self) -> str:
        size = f"-{self.image_size}px" if self.image_size else ""
        labels = f"-{self.per_class}pc" if self.per_class else ""
        sizes = "-at-" + ",".join(map(str, self.eval_sizes)) if self.eval_sizes else ""
        return (f"{self.recipe}-{self.backbone}{size}{labels}{sizes}-s{self.seed}"
                + (f"-{self.profile}" if self.profile != BOOK_PROFILE else ""))


_CHAPTER_OTHER_RUNS["12-full-recipe"] = (
    PlannedRun("full", DEFAULT_BACKBONE, 0, PILOT_PROFILE),
    *(PlannedRun(name, DEFAULT_BACKBONE, 0, PILOT_PROFILE) for name in SEARCH),
    *(PlannedRun("full", backbone, 0, PILOT_PROFILE, size) for backbone, size in SEARCH_BACKBONES.items()),
)
_CHAPTER_OTHER_RUNS["a1-backbones"] = (
    *(PlannedRun(recipe, backbone, seed, image_size=size) for recipe in ("linear_probe", "full")
      for backbone, size in SEARCH_BACKBONES.items() for seed in get_profile(BOOK_PROFILE).seeds),
    *(PlannedRun("linear_probe", backbone, seed, image_size=size, per_class=A1_POOL_PER_CLASS)
      for backbone, size in A1_BACKBONES.items() for seed in get_profile(BOOK_PROFILE).seeds),
    PlannedRun("linear_probe", DEFAULT_BACKBONE, 0, eval_sizes=A1_EVAL_SIZES),
)


def search_runs(profile: str = PILOT_PROFILE) -> list[PlannedRun]:
    """Chapter 12's search as `profile` runs it: the pilots themselves, or, in a profile that only proves the
    code runs (smoke), the candidates on the default backbone on the profile's first subset. The larger
    backbones' candidates are left out there: they differ by their native input size, which a profile with
    its own small input size does not have."""
    scaled = get_profile(profile)
    if profile == PILOT_PROFILE:
        return list(_CHAPTER_OTHER_RUNS["12-full-recipe"])
    return [PlannedRun(r.recipe, r.backbone, scaled.seeds[0], profile) for r in _CHAPTER_OTHER_RUNS["12-full-recipe"]
            if r.backbone == DEFAULT_BACKBONE or scaled.meaningful]


def search_records(profile: str = PILOT_PROFILE, data: str | None = None, progress: bool = False) -> dict[PlannedRun, dict]:
    """The record of each search run (`search_runs`), trained or read back (rendered from committed pilots when
    the book is built from records)."""
    return {planned: run_one(_config(planned, data), progress=progress) for planned in search_runs(profile)}


def chapter_recipes(chapter: str) -> list[str]:
    """The recipes whose full-profile records chapter `chapter` shows, in a stable order."""
    own = [r for r in RECIPES.values() if r.chapter == chapter and r.name not in SEARCH]  # pilots: _CHAPTER_OTHER_RUNS
    names = [r.builds_on for r in own if r.builds_on] + [r.name for r in own] + list(_CHAPTER_EXTRAS.get(chapter, ()))
    return list(dict.fromkeys(names))


def book_chapters() -> list[str]:
    """Chapter ids that show full-profile records, in reading order."""
    ids = {r.chapter for r in RECIPES.values() if r.chapter} | set(_CHAPTER_EXTRAS)
    return sorted(ids)


RECORD_CHAPTERS = frozenset({"01-data", *book_chapters()})


def chapter_runs(chapter: str) -> list[PlannedRun]:
    seeds = get_profile(BOOK_PROFILE).seeds
    runs = [PlannedRun(name, RECIPE_BACKBONE.get(name, DEFAULT_BACKBONE), seed)
            for name in chapter_recipes(chapter) for seed in seeds]
    return runs + list(_CHAPTER_OTHER_RUNS.get(chapter, ()))


def book_runs() -> list[PlannedRun]:
    """Every run the full-profile book shows, once each."""
    return list(dict.fromkeys(run for chapter in book_chapters() for run in chapter_runs(chapter)))


def machine_slug() -> str:
    """A folder name for this machine's records: the GPU, else the CPU with its cores and vector ISA
    (two CPUs of the same name can differ in AVX-512, which decides bf16 and speed)."""
    return machine_slug_of({"machine": machine()})


def _config(run: PlannedRun, data: str | None = None, precision: str = "auto", device: str | None = None):
    extra = {"per_class": run.per_class} if run.per_class else {}
    return make_config(run.recipe, run.backbone, seed=run.seed, profile=run.profile, image_size=run.image_size,
                       data=data, precision=precision, device=device, eval_sizes=run.eval_sizes, **extra)


def whole(record: dict) -> bool:
    """A record the book may show: the full profile on every test image, or a pilot (which reads none)."""
    metrics = record["metrics"]
    if record["config"]["profile"] == PILOT_PROFILE:
        return metrics.get("test_read") is False and record["config"]["seed"] in get_profile(PILOT_PROFILE).seeds
    return (record["config"]["profile"] == BOOK_PROFILE and not metrics.get("test_limited")
            and metrics["test_images"] == record["data"].get("test_total", metrics["test_images"]))


@dataclass
class Status:
    done: dict[PlannedRun, dict]
    missing: list[PlannedRun]
    stale: list[tuple[str, str]]  # (record file, why)


def campaign_status(data: str | None = None) -> Status:
    """Which planned runs have a current committed record, which are missing; which records are stale."""
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


# For `fine_tune_epochs`: the labelled images of a full-profile subset, the unlabelled pool beside them, and what
# one image costs at evaluation against one training step (measured: 61.8 against 13.1 images/s, `cifar-tl bench`
# on the 2-core AVX2 CPU; 182.8 against 36.2 on the AVX-512 one).
_LABELLED_IMAGES = 1_000
_POOL_IMAGES = 48_500
_EVALUATED_IMAGES = 10 * DEFAULT_VAL_PER_CLASS + 10_000  # the validation split and every test image
_EVAL_COST = 0.2


def fine_tune_epochs(recipe) -> float:
    """The recipe's expensive work, in epochs over the 1,000 labelled images with more than the head training
    (a head-only stage on frozen features costs about nothing per epoch). Training at `train_scale` costs its
    square. An epoch of consistency training counts as many: each of its steps also trains on two views of
    `unlabelled_ratio` times as many pool images. Each self-training round labels its pool images (one
    evaluation pass per test-time view) and trains a student on the labelled images `labelled_repeats` times
    plus the pseudo-labels it keeps (at most `per_class` a class): an estimate, since the threshold decides."""
    def tuned(stages):
        return sum(s.epochs for s in stages if s.train != "head")

    epochs = float(tuned(recipe.stages))
    if recipe.consistency is not None:
        epochs += tuned(recipe.consistency.stages) * (1 + 2 * recipe.consistency.unlabelled_ratio)
    student = recipe.self_training
    if student is not None:
        pool = student.pool_images or _POOL_IMAGES
        kept = min(pool, 10 * student.per_class) if student.per_class else pool
        views = len(tta_views(torch.zeros(1, 3, 16, 16), student.teacher_tta))
        per_round = (tuned(student.stages) * (student.labelled_repeats + kept / _LABELLED_IMAGES)
                     + pool * views * _EVAL_COST / _LABELLED_IMAGES)
        epochs += student.rounds * per_round
    return epochs * (recipe.train_scale or 1.0) ** 2


def estimate_seconds(run: PlannedRun, done: dict[PlannedRun, dict], slug: str) -> tuple[float | None, str]:
    """Seconds `run` should take, from measured records: the same recipe on this machine, else on any
    machine, else this machine's (or any machine's) seconds per fine-tuning epoch of the same backbone
    times the recipe's fine-tuning epochs, plus the evaluation they measured."""
    same = [r for p, r in done.items()
            if (p.recipe, p.backbone, p.image_size, p.profile, p.per_class)
            == (run.recipe, run.backbone, run.image_size, run.profile, run.per_class)]
    here = [r for r in same if machine_slug_of(r) == slug]
    for records, how in ((here, "same recipe, this machine"), (same, "same recipe, another machine")):
        if records:
            return sum(r["timing"]["total_seconds"] for r in records) / len(records), how
    recipe = RECIPES[run.recipe]
    fine_tuned = [(p, r) for p, r in done.items() if p.backbone == run.backbone
                  and p.recipe in RECIPES and fine_tune_epochs(RECIPES[p.recipe])]
    for pool, how in (([x for x in fine_tuned if machine_slug_of(x[1]) == slug], "this machine"),
                      (fine_tuned, "another machine")):
        if pool:
            per_epoch = sorted(r["timing"]["train_seconds"] / fine_tune_epochs(RECIPES[p.recipe]) for p, r in pool)
            rest = sorted(r["timing"]["total_seconds"] - r["timing"]["train_seconds"] for _, r in pool)
            # more labelled images per class: longer epochs, and more images through the frozen backbone
            labels = (run.per_class or 100) / 100
            seen = (_LABELLED_IMAGES * labels + _EVALUATED_IMAGES) / (_LABELLED_IMAGES + _EVALUATED_IMAGES)
            seconds = fine_tune_epochs(recipe) * labels * per_epoch[len(per_epoch) // 2] + rest[len(rest) // 2] * seen
            return seconds, f"fine-tuning epochs × measured epoch, {how}"
    return None, "not measured yet"


def _minutes(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds / 60:.0f} min"


def describe(status: Status, slug: str) -> str:
    """What is done, what is left with an estimate, and which committed records are stale."""
    lines = [f"{len(status.done)} of {len(status.done) + len(status.missing)} runs of the book (full profile, and "
             "chapter 12's pilots) "
             f"have a current committed record; {len(status.missing)} missing:"]
    total, width = 0.0, max((len(run.label) for run in status.missing), default=0)
    for run in status.missing:
        seconds, how = estimate_seconds(run, status.done, slug)
        total += seconds or 0.0
        lines.append(f"  {run.label:<{width}} ≈ {_minutes(seconds):>8}  ({how})")
    if status.missing:
        lines.append(f"estimated total: ≈ {total / 3600:.1f} h on one machine like those that measured it")
    for path, why in status.stale:
        lines.append(f"stale: {path}: {why} (delete it; the campaign trains its replacement)")
    return "\n".join(lines)


def campaign_order(runs: list[PlannedRun], status: Status, slug: str) -> list[PlannedRun]:
    """The order the campaign trains `runs` in: the chapters in reading order, so each chapter renders from
    records as soon as its runs land; within a chapter, the cheapest first (unmeasured first: cheap to learn)."""
    first_chapter = {}
    for chapter in book_chapters():
        for planned in chapter_runs(chapter):
            first_chapter.setdefault(planned, chapter)
    return sorted(runs, key=lambda r: (first_chapter.get(r, "~"), estimate_seconds(r, status.done, slug)[0] or 0.0))


def train_command(run: PlannedRun, results: Path) -> str:
    """One shell command that trains `run` and writes its record into `results` (for a scheduler)."""
    size = f" --image-size {run.image_size}" if run.image_size else ""
    labels = f" --per-class {run.per_class}" if run.per_class else ""
    sizes = " --eval-sizes " + ",".join(map(str, run.eval_sizes)) if run.eval_sizes else ""
    return (f"cifar-tl train --recipe {run.recipe} --backbone {run.backbone} --seed {run.seed} "
            f"--profile {run.profile}{size}{labels}{sizes} --results {results}")


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
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(mine, f)
        except BaseException:  # a full disk: no empty claim left behind
            path.unlink(missing_ok=True)
            raise
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


def deadline_from(minutes: int | None, until: tuple[int, int] | None, now: float | None = None) -> float | None:
    """Seconds since the epoch: `minutes` from now, or the next time the clock reads `until` (today or tomorrow)."""
    now = time.time() if now is None else now
    if minutes is not None:
        return now + 60 * minutes
    if until is None:
        return None
    today = datetime.fromtimestamp(now).replace(hour=until[0], minute=until[1], second=0, microsecond=0)
    if today.timestamp() <= now:
        today += timedelta(days=1)
    return today.timestamp()


def _fits(run: PlannedRun, status: Status, slug: str, deadline: float | None) -> bool:
    """Whether `run` can finish before `deadline` (seconds since the epoch) by its measured estimate; a run
    nobody has measured yet, or any run without a deadline, may start."""
    seconds = estimate_seconds(run, status.done, slug)[0]
    return deadline is None or seconds is None or time.time() + seconds <= deadline


def run_campaign(results: Path, data: str | None = None, device: str | None = None, precision: str = "auto",
                 max_runs: int | None = None, recipes: list[str] | None = None, progress: bool = True,
                 deadline: float | None = None) -> int:
    """Train missing runs one at a time (in the book's reading order, cheapest first within a chapter),
    each saved as soon as it is done. Returns how many were trained. Stop it at any time; run it again to
    go on: an interrupted run resumes from its last finished epoch. With `deadline` (seconds since the
    epoch), a run whose measured estimate says it cannot finish in time is not started, and is named."""
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
        print(describe(status, slug), file=sys.stderr)
        todo = campaign_order(todo, status, slug)
        fitting = [r for r in todo if _fits(r, status, slug, deadline)]
        if len(fitting) < len(todo):
            skipped = [r for r in todo if r not in fitting]
            print(f"cifar-tl: campaign: not starting {len(skipped)} run(s) that cannot finish by "
                  f"{time.strftime('%H:%M', time.localtime(deadline))}: "
                  + ", ".join(f"{r.label} (≈ {_minutes(estimate_seconds(r, status.done, slug)[0])})" for r in skipped),
                  file=sys.stderr)
        for candidate in fitting:
            held = claim(folder, candidate)
            if held is not None:
                break
        else:
            print("cifar-tl: campaign: " + ("every missing run that fits is claimed by another process" if fitting
                                            else "no missing run fits in the time left"), file=sys.stderr)
            break
        try:
            print(f"cifar-tl: campaign: training {candidate.label}", file=sys.stderr)
            record = run_one(_config(candidate, data, precision, device), progress=progress, device=device)
            path = save_to_results(record, results, slug)
            print(f"cifar-tl: campaign: wrote {path} (validation accuracy {record['metrics']['val_accuracy']:.4f}, "
                  f"{record['timing']['total_seconds'] / 60:.1f} min)", file=sys.stderr)
        finally:
            held.unlink(missing_ok=True)
        trained += 1
    return trained
