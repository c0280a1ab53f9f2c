"""What a chapter notebook calls: its set-up in one call, and its number-bearing prose displayed from code.

A chapter's prose that carries measured numbers is displayed as Markdown from a code cell (`prose`), so the
numbers appear wherever the notebook runs: the built book, JupyterLab, Colab. (MyST-NB's glue roles render
only in the built book; anywhere else a reader would see `{glue:text}` where a number should be.)
"""

from __future__ import annotations

import inspect
import textwrap
from dataclasses import dataclass

from .recipes import Profile, get_profile

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


def setup(profile: str = "auto", seeds=None, backbone: str = "efficientnet_lite0", data: str | None = None
          ) -> ChapterContext:
    """The first call of every chapter, with its papermill parameters.

    Resolves `profile="auto"` (the library's default for this machine) and `seeds=None` (the profile's
    subsets), checks the backbone name, and makes the notebook keep its figures even under MPLBACKEND=Agg.
    """
    from .backbones import check_backbone
    from .chapters import default_profile
    from .errors import UserError

    keep_figures()
    chosen = default_profile() if profile == "auto" else profile
    settings = get_profile(chosen)  # an unknown name: one clear line listing the profiles
    if seeds is None:
        seeds = list(settings.seeds)
    elif isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    if not (isinstance(seeds, (list, tuple)) and seeds
            and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)):
        raise UserError(f"parameter seeds takes a list of whole numbers such as [0, 1, 2] or None; got {seeds!r}")
    check_backbone(backbone)
    return ChapterContext(backbone=backbone, profile=chosen, seeds=list(seeds), data=data)


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
