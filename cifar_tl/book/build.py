"""The book's chapters: list them, execute one with papermill, execute all and build the website.

The published book renders from the committed full-profile records (`results/`): a chapter whose
records are all there executes in the full profile with CIFAR_TL_RENDER_ONLY set, so it reads them
and trains nothing. A chapter still missing records executes in the smoke profile, says so on its
page, and the build names the missing runs and the command that trains them.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from cifar_tl.book.chapter import check_parameter
from cifar_tl.core.errors import DiskFullError, UserError
from cifar_tl.core.files import CHECKOUT, atomic_path, free_bytes, full_disk_named

ROOT = CHECKOUT  # notebooks/, book/, _config.yml
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
        check_parameter(name, value)  # the message the chapter's first cell, `chapter.setup`, would give
        values[name] = value
    return values


# Paths the kernel reads from the environment; it runs in notebooks/, so relative ones are made absolute
# against the folder the command was started in.
_PATH_VARIABLES = ("CIFAR_TL_DATA", "CIFAR_TL_CACHE", "CIFAR_TL_RESULTS", "TORCH_HOME")


_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def kernel_environment(render_only: bool = False, threads: int | None = None) -> dict[str, str]:
    """The environment a chapter's kernel starts with: this process's, with relative paths made absolute,
    CIFAR_TL_RENDER_ONLY set or removed, and (`threads`, for kernels that run side by side) the intra-op
    threads each may use, where the user has not set them. os.environ itself is left alone, so kernels
    started from several threads at once each get their own."""
    env = dict(os.environ)
    for name in _PATH_VARIABLES:
        value = env.get(name)
        if value and name == "CIFAR_TL_DATA" and value.lower() in ("cifar10", "torchvision"):
            continue
        if value:
            env[name] = os.pathsep.join(str(Path(p).expanduser().absolute()) for p in value.split(os.pathsep))
    if render_only:
        env["CIFAR_TL_RENDER_ONLY"] = "1"
    else:
        env.pop("CIFAR_TL_RENDER_ONLY", None)
    if threads is not None:
        for name in _THREAD_VARIABLES:
            env.setdefault(name, str(threads))
    env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # the debugger's frozen-modules notice
    return env


# papermill's default is 60 s; a kernel importing torch on a machine busy training (two cores, a campaign
# beside the build) can take longer than that to start.
KERNEL_START_SECONDS = 600


def run_chapter(chapter: Chapter, out_dir: Path, parameters: dict, progress: bool = True,
                render_only: bool = False, threads: int | None = None, env: dict[str, str] | None = None) -> Path:
    """Execute `chapter` with papermill into `out_dir`; the output appears only if it succeeds.

    With `render_only`, runs come from committed records and nothing is trained (CIFAR_TL_RENDER_ONLY).
    `threads`: the intra-op threads the kernel may use. `env`: the kernel's environment, made by
    `kernel_environment` (default: made here from these settings). The kernel starts in the chapter's folder;
    this process's working directory is never changed (papermill's `cwd` would change it for every thread)."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    parameters = dict(parameters)
    for name, value in parameters.items():
        check_parameter(name, value)  # the message the chapter's first cell, `chapter.setup`, would give
    if isinstance(parameters.get("data"), str) and parameters["data"].lower() not in ("cifar10", "torchvision"):
        parameters["data"] = str(Path(parameters["data"]).expanduser().absolute())  # the kernel runs elsewhere
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / chapter.path.name
    env = env if env is not None else kernel_environment(render_only, threads)
    with atomic_path(out) as tmp, tempfile.TemporaryDirectory() as sockets:
        try:
            papermill.execute_notebook(
                str(chapter.path.absolute()), str(Path(tmp).absolute()), parameters=parameters, kernel_name="python3",
                progress_bar=progress, log_output=False,
                kernel_manager_class=_local_kernel_manager(Path(sockets), env, chapter.path.parent.absolute()),
                start_timeout=KERNEL_START_SECONDS,
            )
        except PapermillExecutionError as exc:
            raise UserError(
                f"chapter {chapter.id} failed in cell {exc.exec_count}: {exc.ename}: {exc.evalue}"
            ) from exc
        _hide_injected_parameters(tmp)
    return out


def _local_kernel_manager(folder: Path, env: dict[str, str], cwd: Path):
    """A kernel manager that talks to its kernel over Unix sockets in `folder` (IPC), not over TCP: nothing
    leaves the machine, and the kernel has no reason to warn about unencrypted TCP on every chapter. The
    kernel starts with `env`, in `cwd`."""
    from jupyter_client.manager import KernelManager

    class LocalKernelManager(KernelManager):
        def __init__(self, **kwargs):
            super().__init__(transport="ipc", ip=str(folder / "kernel"), **kwargs)

        def start_kernel(self, **kwargs):
            kwargs.setdefault("env", env)
            kwargs["cwd"] = str(cwd)
            started = super().start_kernel(**kwargs)
            if getattr(self.provisioner, "pid", None):
                share_niceness(self.provisioner.pid)
            return started

    return LocalKernelManager


def share_niceness(pid: int, niceness: int | None = None) -> bool:
    """Give process `pid`'s scheduling group this process's niceness (or `niceness`); whether it was set.

    A kernel starts in a session of its own, and where Linux groups the scheduling by session (autogroup,
    the default on many distributions) `nice` does not reach into it: `nice -n 19 cifar-tl book` beside a
    training run would still take half the cores from it. Elsewhere (no /proc autogroup) nothing changes."""
    niceness = os.nice(0) if niceness is None else niceness
    if niceness <= 0:
        return False
    try:
        Path(f"/proc/{pid}/autogroup").write_text(f"{niceness}\n")
        return True
    except OSError:  # not Linux, no autogroup scheduling, or not permitted
        return False


def _hide_injected_parameters(path: Path) -> None:
    """Tag papermill's injected-parameters cell `remove-cell`: the book shows the chapter's own
    parameters cell once, not a second copy with the values a build passed."""
    import nbformat

    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        tags = cell.metadata.setdefault("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            tags.append("remove-cell")
    nbformat.write(notebook, path)


def chapter_profiles(chapter_ids: list[str]) -> tuple[dict[str, str], dict[str, list[str]]]:
    """How the published book builds each chapter: "full" (rendered from its committed records) when
    every record it shows is committed and current, else "smoke"; and, per smoke chapter, what is missing."""
    from cifar_tl.records.campaign import RECORD_CHAPTERS, campaign_status, chapter_runs

    missing = {run for run in campaign_status().missing}
    profiles, lacking = {}, {}
    for chapter in chapter_ids:
        needed = [run.label for run in chapter_runs(chapter) if run in missing]
        if chapter in RECORD_CHAPTERS and not needed:
            profiles[chapter] = "full"
        else:
            profiles[chapter] = "smoke"
            lacking[chapter] = needed or ["records of runs the campaign does not train here (see the chapter)"]
    return profiles, lacking


def default_jobs() -> int:
    """Chapters executed side by side by default: two where there are two cores or more (a chapter's kernel
    spends much of its time in one thread), else one."""
    return 2 if (os.cpu_count() or 1) >= 2 else 1


def build_book(profile: str | None = None, progress: bool = True, root: Path = ROOT,
               reuse: Path | None = None, build: Path | None = None, jobs: int | None = None) -> Path:
    """Execute every chapter into a staging copy of the book, then build HTML into `_build/html`.

    `profile` None builds the published book: each chapter from its committed records where they are
    all there, else in the smoke profile (see `chapter_profiles`). "smoke" or "full" builds every
    chapter in that profile; "full" renders from records only and fails on a missing one. `reuse`: a
    folder of chapters already executed in the smoke profile (by an earlier build), copied instead
    of executed again. `build`: the output folder (default `_build` in the checkout). `jobs`: chapters
    executed side by side (default `default_jobs()`), each kernel with its share of the cores; chapters that
    need a record another is still training train it too, and both write the same record. Jupyter Book
    renders the executed notebooks as they are (`execute_notebooks: off`), with Sphinx warnings as errors,
    so a failed chapter or a broken reference fails the build.
    """
    build = Path(build) if build is not None else root / "_build"
    staging = build / "source"
    if staging.exists():
        shutil.rmtree(staging)
    try:  # a full disk while copying: one line, and no half-copied staging folder left behind
        with full_disk_named(staging):
            staging.mkdir(parents=True)
            for name in BOOK_FILES:
                source = root / name
                if not source.exists():
                    raise UserError(f"{source} is missing: run `cifar-tl book` from a full checkout of cifar-tl")
                (shutil.copytree if source.is_dir() else shutil.copy2)(source, staging / name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    timings = {}
    all_chapters = chapters(root)
    if profile is None:
        profiles, lacking = chapter_profiles([c.id for c in all_chapters])
    else:
        profiles, lacking = {c.id: profile for c in all_chapters}, {}
    jobs = max(1, jobs or default_jobs())
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None
    # Made here, once, before any thread runs: relative paths are taken from the folder the build started in.
    envs = {mode: kernel_environment(mode, threads) for mode in (False, True)}

    def execute(chapter: Chapter) -> None:
        started = time.perf_counter()
        chosen = profiles[chapter.id]
        reused = reuse / chapter.path.name if reuse is not None and chosen == "smoke" else None
        if reused is not None and reused.exists():
            print(f"cifar-tl: {chapter.id}: reusing {reused} (smoke)", file=sys.stderr)
            (staging / "notebooks").mkdir(exist_ok=True)
            shutil.copy2(reused, staging / "notebooks" / chapter.path.name)
        else:
            how = "from its committed records" if chosen == "full" else "smoke profile"
            print(f"cifar-tl: executing {chapter.id} ({how})", file=sys.stderr)
            run_chapter(chapter, staging / "notebooks", {"profile": chosen}, progress and jobs == 1,
                        render_only=chosen == "full", env=envs[chosen == "full"])
        timings[chapter.id] = round(time.perf_counter() - started, 1)

    with ThreadPoolExecutor(max_workers=jobs) as pool:  # each chapter is its own kernel process
        futures = [pool.submit(execute, chapter) for chapter in all_chapters]
        try:
            for future in futures:  # the first failure in reading order is the one reported
                future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    print(f"cifar-tl: chapter times (s): {({c.id: timings[c.id] for c in all_chapters})}", file=sys.stderr)
    if lacking:
        print(f"cifar-tl: {len(lacking)} chapter(s) built in the smoke profile, their full-profile records not all "
              "committed yet (`cifar-tl campaign --status` lists them, `cifar-tl campaign` trains them):",
              file=sys.stderr)
        for chapter_id, runs in lacking.items():
            print(f"  {chapter_id}: {len(runs)} missing: {', '.join(runs[:4])}{' …' if len(runs) > 4 else ''}",
                  file=sys.stderr)
    html = build / "html"
    command = [
        sys.executable, "-c", "from jupyter_book.cli.main import main; main()", "build", str(staging), "--path-output", str(build / "book"),
        "--warningiserror", "--nitpick", "--keep-going", "--quiet",
    ]
    done = subprocess.run(command, env={**os.environ, "PYTHONWARNINGS": "ignore"}, capture_output=True, text=True)
    if done.returncode != 0:
        if "No space left on device" in done.stdout + done.stderr:  # the pages half-written: not kept
            shutil.rmtree(build / "book", ignore_errors=True)
            raise DiskFullError(build / "book", free=free_bytes(build))
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        raise UserError("the book did not build: Sphinx reported the warnings or errors above")
    if html.exists():
        shutil.rmtree(html)
    shutil.move(str(build / "book" / "_build" / "html"), html)
    return html
