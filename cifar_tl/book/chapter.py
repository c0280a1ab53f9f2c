"""What a chapter notebook calls: its set-up in one call, its records, and its number-bearing prose displayed
from code.

A chapter's records come from `record_for`/`run_seeds`: trained (or read back) by `records.runner.run`, or,
when the book is rendered (`render_only`), the committed records that stand for them. Its prose that carries
measured numbers is displayed as Markdown from a code cell (`prose`), so the numbers appear wherever the
notebook runs: the built book, JupyterLab, Colab. (MyST-NB's glue roles render only in the built book;
anywhere else a reader would see `{glue:text}` where a number should be.)
"""

from __future__ import annotations

import inspect
import os
import textwrap
from dataclasses import dataclass

from cifar_tl.core.errors import UserError
from cifar_tl.data.sources import _check_path, _is_torchvision, resolve_source
from cifar_tl.data.subsets import MAX_SEED
from cifar_tl.models.backbones import check_backbone
from cifar_tl.records.identity import RunConfig, make_config
from cifar_tl.records.runner import run
from cifar_tl.records.store import (cached_records, committed_records, records_by_precision, reference_record,
                                   results_dirs)
from cifar_tl.training.profiles import PROFILES, Profile, get_profile


# Backends that draw into a file or a buffer and never show anything in a notebook. MPLBACKEND=Agg, common on
# headless servers and CI machines, selects one of them even inside a Jupyter kernel.
_NON_DISPLAYING_BACKENDS = {"agg", "cairo", "pdf", "pgf", "ps", "svg", "template"}


@dataclass(frozen=True)
class ChapterContext:
    """A chapter's parameters with "auto" and None resolved: what every later cell of the chapter uses."""

    backbone: str
    profile: str  # "smoke" or "full" (never "auto")
    seeds: list[int]  # the subsets every comparison in the chapter is repeated over
    data: str | None  # the data source as given (None: $CIFAR_TL_DATA, else CIFAR-10 through torchvision)

    @property
    def settings(self) -> Profile:
        """The profile itself: image size, epochs, seeds, test cap, whether its numbers mean anything."""
        return get_profile(self.profile)


def keep_figures() -> str | None:
    """In a Jupyter kernel, show matplotlib figures inline whatever backend the environment chose.

    A no-op outside a kernel, and where the backend already displays (inline, ipympl's widget, a GUI).
    Returns the backend it switched to, or None.
    """
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    shell = get_ipython()
    if shell is None or not hasattr(shell, "kernel"):  # a script, or a terminal IPython: nothing to show figures in
        return None
    import matplotlib

    if matplotlib.get_backend().lower() not in _NON_DISPLAYING_BACKENDS:
        return None
    # What `%matplotlib inline` does: select the inline backend and flush every open figure after each cell.
    shell.enable_matplotlib("inline")
    return "inline"


def default_profile() -> str:
    """The profile `profile="auto"` means: full on a GPU, where it takes minutes; else smoke."""
    import torch

    return "full" if torch.cuda.is_available() else "smoke"


def setup(profile: str = "auto", seeds=None, backbone: str = "efficientnet_lite0", data: str | None = None
          ) -> ChapterContext:
    """The first call of every chapter, with its papermill parameters.

    Checks every parameter (`check_parameter`), resolves `profile="auto"` (the library's default for this
    machine) and `seeds=None` (the profile's subsets), and makes the notebook keep its figures even under
    MPLBACKEND=Agg.
    """
    keep_figures()
    # Every parameter is checked here, in the chapter's first code cell, so that a wrong type or value stops the
    # chapter at once with one line, never cells later inside a run.
    for name, value in (("profile", profile), ("seeds", seeds), ("backbone", backbone), ("data", data)):
        check_parameter(name, value)
    chosen = default_profile() if profile == "auto" else profile
    if seeds is None:
        seeds = list(get_profile(chosen).seeds)
    elif isinstance(seeds, int):
        seeds = [seeds]
    return ChapterContext(backbone=backbone, profile=chosen, seeds=list(seeds), data=data)


def check_parameter(name: str, value) -> None:
    """Check one of the parameters every chapter has (profile, seeds, backbone, data; others pass): a wrong type
    or value is a `UserError` in one line. `setup` checks them in a chapter's first code cell, `cifar-tl run`
    before it starts a kernel."""
    if name == "profile":
        if not isinstance(value, str):
            raise UserError(f"parameter profile takes \"auto\" or a profile name ({', '.join(PROFILES)}); "
                            f"got {value!r}")
        if value != "auto" and not get_profile(value).reads_test:  # an unknown name: one line listing the profiles
            raise UserError(f"parameter profile: {value!r} never reads the test split, which every chapter shows; "
                            "use smoke or full (pilots are run with `cifar-tl train --profile pilot`)")
    elif name == "seeds" and value is not None:
        seeds = [value] if isinstance(value, int) and not isinstance(value, bool) else value
        if not (isinstance(seeds, (list, tuple)) and seeds
                and all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= MAX_SEED for s in seeds)):
            raise UserError(f"parameter seeds takes a list of whole numbers from 0 to {MAX_SEED} such as [0, 1, 2], "
                            f"or None; got {value!r}")
        if len(set(seeds)) < len(seeds):
            raise UserError(f"parameter seeds repeats a subset ({value!r}): each seed draws one subset, and a mean "
                            "over subsets counts each once")
    elif name == "backbone":
        if not isinstance(value, str):
            raise UserError(f"parameter backbone takes a backbone's name such as \"efficientnet_lite0\"; "
                            f"got {value!r}")
        check_backbone(value)
    elif name == "data":
        _check_data(value)


def _check_data(data) -> None:
    """`data` is None, the name of torchvision's CIFAR-10, or a class-folder directory or archive that exists
    (unless the chapter renders from records only, and reads no data)."""
    if data is not None and not isinstance(data, (str, os.PathLike)):
        raise UserError(f"parameter data takes a path to a class-folder directory or .tar.gz, \"cifar10\", or None; "
                        f"got {data!r}")
    source = resolve_source(data)
    if render_only() or _is_torchvision(source):
        return
    given = f"parameter data ({data!r})" if data not in (None, "") else "CIFAR_TL_DATA"
    try:
        _check_path(source)
    except UserError as exc:
        raise UserError(f"{given}: {exc}") from None


def prose(text: str, **values) -> None:
    """Display `text` (dedented) as a Markdown paragraph: an f-string, or a template whose `{name}` fields are
    filled in from `values` (str.format, only when values are given; then write `{{` for a literal brace).

    For the sentences of a chapter that carry numbers a run measured: the notebook computes them, this shows
    them, in the built book as in JupyterLab or Colab.
    """
    from IPython.display import Markdown, display

    text = textwrap.dedent(text).strip()
    display(Markdown(text.format(**values) if values else text))


def bullets(points) -> None:
    """Display a Markdown bulleted list, one point per item (a chapter's summary)."""
    from IPython.display import Markdown, display

    display(Markdown("\n".join(f"- {' '.join(str(point).split())}" for point in points if point)))


def source_lines(obj, start: str | None = None, end: str | None = None) -> str:
    """The source of a function or class as it is in the installed library, dedented.

    With `start` and `end`, only the lines from the first line containing `start` to the first line after it
    containing `end`, both included. A marker that is no longer in the source is an error, so a chapter that
    shows an excerpt fails loudly when the code it explains has changed instead of showing the wrong lines.
    """
    lines = textwrap.dedent(inspect.getsource(obj)).splitlines()
    first, last = 0, len(lines) - 1
    if start is not None:
        first = next((i for i, line in enumerate(lines) if start in line), None)
        if first is None:
            raise ValueError(f"{obj.__qualname__} no longer contains {start!r}: update the chapter that shows it")
    if end is not None:
        last = next((i for i in range(first, len(lines)) if end in lines[i]), None)
        if last is None:
            raise ValueError(f"{obj.__qualname__} no longer contains {end!r} after {start!r}: update the chapter")
    return textwrap.dedent("\n".join(lines[first:last + 1]))


def show_source(obj, start: str | None = None, end: str | None = None) -> None:
    """Display `source_lines(obj, start, end)` as a Python code block, titled with where it lives."""
    from IPython.display import Markdown, display

    module = inspect.getmodule(obj).__name__
    code = source_lines(obj, start, end)
    fence = "````" if "```" in code else "```"
    display(Markdown(f"From `{module}.{obj.__qualname__}`:\n\n{fence}python\n{code}\n{fence}"))


def render_only() -> bool:
    """Whether runs must come from records (CIFAR_TL_RENDER_ONLY=1, set by `cifar-tl book`): no training."""
    return os.environ.get("CIFAR_TL_RENDER_ONLY", "") not in ("", "0")


def record_for(config: RunConfig, force: bool = False, progress: bool = True, return_model: bool = False):
    """The record of `config` as a chapter shows it: rendering the book (`render_only`), the committed record
    that stands for it, and nothing is trained; else `records.runner.run` (which reads it back when it exists)."""
    if not render_only():
        return run(config, force=force, progress=progress, return_model=return_model)
    if return_model:
        raise UserError(f"{config.recipe} ({config.backbone}): the book is being rendered from records "
                        "(CIFAR_TL_RENDER_ONLY), but this chapter needs a trained model; build it with --profile")
    record = reference_record(config)
    if record is None:
        raise UserError(f"no committed full-profile record of {config.recipe} ({config.backbone}, subset "
                        f"{config.seed}) under {', '.join(map(str, results_dirs())) or 'results/'}: "
                        "`cifar-tl campaign` trains the missing ones")
    return record


# Every record run_seeds has handed out in this process, by name: what a chapter's page shows, so that
# its header can say which machines, precisions, code versions and dates made its numbers.
_SHOWN: dict[str, dict] = {}


def records_shown() -> list[dict]:
    return list(_SHOWN.values())


def run_seeds(recipe: str, backbone: str, profile: str, seeds=None, force: bool = False, progress: bool = True,
              **config) -> list[dict]:
    """One record per seed (the profile's seeds unless given): the same change over several subsets."""
    seeds = get_profile(profile).seeds if seeds is None else seeds
    records = [record_for(make_config(recipe, backbone, seed=s, profile=profile, **config), force=force,
                          progress=progress) for s in seeds]
    _SHOWN.update((r["name"], r) for r in records)
    return records


def recorded_seeds(recipe: str, backbone: str, profile: str, seeds=None, **config) -> list[dict]:
    """The records of `recipe` that exist already for the profile's seeds (or `seeds`), with nothing trained:
    the committed ones and, unless the book is being rendered from records, this machine's cache. For a page
    that sets every recipe with records side by side; it says how many subsets each one has."""
    seeds = get_profile(profile).seeds if seeds is None else seeds
    known = committed_records() + ([] if render_only() else cached_records())
    configs = [make_config(recipe, backbone, seed=s, profile=profile, **config) for s in seeds]
    records = [r for c in configs if (r := reference_record(c, known)) is not None]
    _SHOWN.update((r["name"], r) for r in records)
    return records


def recorded_in_both_precisions(recipe: str, backbone: str, profile: str, seeds=None,
                                **config) -> dict[str, list[dict]]:
    """{"fp32": records, "bf16": records} of `recipe`, for the subsets (of the profile's seeds, or `seeds`) that
    have a record in each precision, in the same order; read as `recorded_seeds` reads, with nothing trained."""
    seeds = get_profile(profile).seeds if seeds is None else seeds
    known = committed_records() + ([] if render_only() else cached_records())
    pairs = [records_by_precision(make_config(recipe, backbone, seed=s, profile=profile, **config), known)
             for s in seeds]
    both = [found for found in pairs if {"fp32", "bf16"} <= found.keys()]
    _SHOWN.update((r["name"], r) for found in both for r in found.values())
    return {precision: [found[precision] for found in both] for precision in ("fp32", "bf16")}
