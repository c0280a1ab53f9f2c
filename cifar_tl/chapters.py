"""The book's chapters: list them, execute one with papermill, execute all and build the website."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .files import atomic_path

ROOT = Path(__file__).resolve().parent.parent  # the checkout: notebooks/, book/, _config.yml
BOOK_FILES = ("_config.yml", "_toc.yml", "book")


@dataclass(frozen=True)
class Chapter:
    id: str
    title: str
    path: Path


def chapters(root: Path = ROOT) -> list[Chapter]:
    notebooks = root / "notebooks"
    if not notebooks.is_dir():
        raise UserError(f"no notebooks/ folder beside the package ({notebooks}): run from a checkout of cifar-tl")
    found = []
    # Chapters are numbered 01-..., appendices a1-...; both sort in reading order.
    for path in sorted(notebooks.glob("[0-9a][0-9]-*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        title = next(
            (line.lstrip("# ").strip() for cell in cells if cell["cell_type"] == "markdown"
             for line in "".join(cell["source"]).splitlines() if line.startswith("# ")),
            path.stem,
        )
        found.append(Chapter(path.stem, title, path))
    return found


def find_chapter(name: str) -> Chapter:
    """A chapter by id (`03-linear-probe`), number (`3`, `03`), prefix (`a1`) or file name."""
    all_chapters = chapters()
    key = Path(name).stem
    for chapter in all_chapters:
        prefix = chapter.id.split("-")[0]
        if key in (chapter.id, prefix) or (key.isdigit() and prefix.isdigit() and int(key) == int(prefix)):
            return chapter
    raise UserError(f"unknown chapter {name!r}; choose one of: {', '.join(c.id for c in all_chapters)}")


def chapter_parameters(chapter: Chapter) -> dict:
    """The chapter's papermill parameters and their default values."""
    import nbformat

    notebook = nbformat.read(chapter.path, as_version=4)
    for cell in notebook.cells:
        if "parameters" in cell.metadata.get("tags", []):
            tree = ast.parse(cell.source)
            return {
                node.targets[0].id: ast.literal_eval(node.value)
                for node in tree.body
                if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
            }
    return {}


def _check_known(name: str, value) -> None:
    """Check the parameters every chapter shares, so that a bad value fails before a kernel starts."""
    from .backbones import check_backbone
    from .recipes import get_profile

    if name == "backbone":
        check_backbone(str(value))
    elif name == "profile" and value != "auto":
        get_profile(str(value))
    elif name == "seeds" and value is not None:
        if not (isinstance(value, (list, tuple)) and value
                and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value)):
            raise UserError(f"parameter seeds takes a list of whole numbers such as [0, 1, 2] or None; got {value!r}")


def parse_parameters(chapter: Chapter, pairs: list[tuple[str, str]]) -> dict:
    """Turn `-p NAME VALUE` strings into values of the type of each parameter's default."""
    defaults = chapter_parameters(chapter)
    values = {}
    for name, text in pairs:
        if name not in defaults:
            raise UserError(f"chapter {chapter.id} has no parameter {name!r}; its parameters: {', '.join(defaults)}")
        default = defaults[name]
        if isinstance(default, str) or (default is None and name == "data"):
            value = text
        else:
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                value = text
            if default is not None and not (
                isinstance(value, type(default)) and isinstance(value, bool) == isinstance(default, bool)
                or isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool)
            ):
                raise UserError(
                    f"parameter {name} of chapter {chapter.id} takes a {type(default).__name__} "
                    f"(default {default!r}); got {text!r}"
                )
        _check_known(name, value)
        values[name] = value
    return values


def run_chapter(chapter: Chapter, out_dir: Path, parameters: dict, progress: bool = True) -> Path:
    """Execute `chapter` with papermill into `out_dir`; the output appears only if it succeeds."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    for name, value in parameters.items():
        _check_known(name, value)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / chapter.path.name
    with atomic_path(out) as tmp:
        try:
            papermill.execute_notebook(
                str(chapter.path), str(tmp), parameters=parameters, kernel_name="python3",
                cwd=str(chapter.path.parent), progress_bar=progress, log_output=False,
            )
        except PapermillExecutionError as exc:
            raise UserError(
                f"chapter {chapter.id} failed in cell {exc.exec_count}: {exc.ename}: {exc.evalue}"
            ) from exc
    return out


def default_profile() -> str:
    import torch

    return "full" if torch.cuda.is_available() else "smoke"


def build_book(profile: str, progress: bool = True, root: Path = ROOT) -> Path:
    """Execute every chapter into a staging copy of the book, then build HTML into `_build/html`.

    Jupyter Book renders the executed notebooks as they are (`execute_notebooks: off`), with
    Sphinx warnings as errors, so a failed chapter or a broken reference fails the build.
    """
    build = root / "_build"
    staging = build / "source"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    for name in BOOK_FILES:
        source = root / name
        if not source.exists():
            raise UserError(f"{source} is missing: run `cifar-tl book` from a full checkout of cifar-tl")
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, staging / name)
    timings = {}
    for chapter in chapters(root):
        started = time.perf_counter()
        print(f"cifar-tl: executing {chapter.id} ({profile})", file=sys.stderr)
        run_chapter(chapter, staging / "notebooks", {"profile": profile}, progress)
        timings[chapter.id] = round(time.perf_counter() - started, 1)
    print(f"cifar-tl: chapter times (s): {timings}", file=sys.stderr)
    html = build / "html"
    command = [
        sys.executable, "-c", "from jupyter_book.cli.main import main; main()", "build", str(staging), "--path-output", str(build / "book"),
        "--warningiserror", "--nitpick", "--keep-going", "--quiet",
    ]
    done = subprocess.run(command, env={**os.environ, "PYTHONWARNINGS": "ignore"}, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        raise UserError("the book did not build: Sphinx reported the warnings or errors above")
    if html.exists():
        shutil.rmtree(html)
    shutil.move(str(build / "book" / "_build" / "html"), html)
    return html
