"""Every chapter executes in the smoke profile, and the book builds from the executed notebooks."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from cifar_tl.book.build import ROOT, build_book, chapters
from cifar_tl.core.errors import UserError

pytestmark = pytest.mark.slow


def _outputs(notebook: Path) -> list[dict]:
    cells = json.loads(notebook.read_text())["cells"]
    return [output for cell in cells if cell["cell_type"] == "code" for output in cell.get("outputs", [])]


def _text(output: dict) -> str:
    data = output.get("data", {})
    return "".join(data.get("text/markdown", "")) + "".join(data.get("text/plain", "")) + "".join(output.get("text", ""))


@pytest.mark.parametrize("chapter", [c.id for c in chapters()])
def test_chapter_executed_in_smoke_profile(built_book, chapter):
    executed = built_book / "source" / "notebooks" / f"{chapter}.ipynb"
    outputs = _outputs(executed)
    assert not [o for o in outputs if o["output_type"] == "error"]
    text = "\n".join(_text(o) for o in outputs)
    assert "CIFAR-10 (JPEG q75 copy)" in text  # the data is named, with its note
    assert "smoke" in text and "not meaningful" in text  # a smoke page says its numbers mean nothing
    assert any("image/png" in o.get("data", {}) for o in outputs)  # it drew its figures
    page = (built_book / "html" / "notebooks" / f"{chapter}.html").read_text()
    assert "not meaningful" in page and "JPEG q75" in page


def test_book_has_every_page_and_glued_numbers(built_book):
    html = built_book / "html"
    assert (html / "index.html").exists()
    for page in ("book/intro.html", "book/setup.html", "book/references.html"):
        assert (html / page).exists(), page
    probe_page = (html / "notebooks" / "03-linear-probe.html").read_text()
    # The prose number comes from glue: a mean ± std string rendered into the sentence.
    assert "The linear probe reaches" in probe_page and "± " in probe_page.split("The linear probe reaches")[1][:200]
    assert "colab.research.google.com" in probe_page  # the launch button


def test_a_failing_chapter_fails_the_build_and_names_itself(tmp_path):
    for name in ("_config.yml", "_toc.yml", "book", "notebooks"):
        source = ROOT / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, tmp_path / name)
    broken = tmp_path / "notebooks" / "02-scratch.ipynb"
    notebook = json.loads(broken.read_text())
    setup = next(c for c in notebook["cells"] if "run_seeds" in "".join(c["source"]) and c["cell_type"] == "code")
    setup["source"] = "raise RuntimeError('this chapter is broken')\n"
    broken.write_text(json.dumps(notebook))
    for later in tmp_path.glob("notebooks/*.ipynb"):  # keep the test short: nothing after the broken one
        if later.name not in ("01-data.ipynb", "02-scratch.ipynb"):
            later.unlink()
    with pytest.raises(UserError, match="chapter 02-scratch failed .*this chapter is broken"):
        build_book("smoke", progress=False, root=tmp_path)
    assert not (tmp_path / "_build" / "html").exists()
    assert not (tmp_path / "_build" / "source" / "notebooks" / "02-scratch.ipynb").exists()


def _shown_runs(chapter: str) -> tuple[set[tuple[str, str]], bool]:
    """The (recipe, backbone) pairs the chapter's code passes to run_seeds literally (a `backbone` variable
    is the default backbone), and whether every run_seeds call in its code is such a literal one."""
    cells = json.loads((ROOT / "notebooks" / f"{chapter}.ipynb").read_text())["cells"]
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    calls = re.findall(r"run_seeds\(([^,\n]+),\s*([^,\n)]+)", code)
    shown, literal = set(), True
    for recipe, backbone in calls:
        recipe_name = re.fullmatch(r'"([a-z0-9_]+)"', recipe.strip())
        backbone_name = re.fullmatch(r'"([a-z0-9_]+)"', backbone.strip())
        if recipe_name and (backbone_name or backbone.strip() in ("backbone", "ctx.backbone")):
            shown.add((recipe_name.group(1), backbone_name.group(1) if backbone_name else "efficientnet_lite0"))
        else:
            literal = False
    return shown, literal


def _committed(recipe: str, backbone: str, seed: int) -> bool:
    """Whether results/ holds a whole, current full-profile record of this run, read from the files."""
    from cifar_tl.records.identity import stale_reason

    for path in (ROOT / "results").glob(f"*/{recipe}-{backbone}-s{seed}-*.json"):
        record = json.loads(path.read_text())
        config, metrics = record["config"], record["metrics"]
        if ((config["recipe"], config["backbone"], config["seed"], config["profile"]) == (recipe, backbone, seed, "full")
                and not metrics["test_limited"] and metrics["test_images"] == record["data"]["test_total"]
                and stale_reason(record) is None):
            return True
    return False


def test_the_published_book_renders_complete_chapters_from_records(published_book):
    """The README's main command trains nothing. A chapter rendered from records shows only committed ones
    (n=3, no smoke warning); a chapter whose every run is committed is rendered so; a chapter built in the
    smoke profile says so, and the runs the build names as missing are really absent from results/. The
    expectation is read from the notebooks and results/ themselves, not from the function the build uses."""
    from cifar_tl.training.profiles import get_profile

    build, log, changed = published_book
    assert not changed, f"the published build trained: it added or changed {sorted(changed)} in the cache"
    seeds = get_profile("full").seeds
    assert len(seeds) == 3
    for chapter in (c.id for c in chapters()):
        page = (build / "html" / "notebooks" / f"{chapter}.html").read_text()
        text = "\n".join(_text(o) for o in _outputs(build / "source" / "notebooks" / f"{chapter}.ipynb"))
        from_records = f"executing {chapter} (from its committed records)" in log
        reused = f"cifar-tl: {chapter}: reusing " in log
        assert from_records != reused, (chapter, "neither rendered from records nor reused from the smoke build")
        shown, all_literal = _shown_runs(chapter)
        complete = all(_committed(recipe, backbone, seed) for recipe, backbone in shown for seed in seeds)
        if from_records:
            assert complete, (chapter, "rendered from records, but not every run it shows is committed")
            assert "not meaningful" not in page, chapter
            assert "Profile:** `full`" in text and "JPEG q75" in page, chapter
            if shown:
                assert "(n=3)" in page, chapter
        else:
            assert "not meaningful" in page and "Profile:** `smoke`" in text, chapter
            missing = re.search(rf"(?m)^  {re.escape(chapter)}: (\d+) missing: (.*)$", log)
            assert missing and int(missing.group(1)) >= 1, (chapter, "built in the smoke profile, nothing named missing")
            for recipe, backbone, seed in re.findall(r"([a-z0-9_]+)-([a-z0-9_]+)-s(\d+)", missing.group(2)):
                assert not _committed(recipe, backbone, int(seed)), (chapter, f"{recipe}-{backbone}-s{seed} is committed")
        if all_literal and complete:
            assert from_records, (chapter, "every run it shows is committed, yet it was built in the smoke profile")
    assert "01-data (from its committed records)" in log  # the data chapter shows no runs: always from records


def test_chapters_run_side_by_side_each_with_its_environment_in_its_folder(tmp_path, monkeypatch):
    """Kernels started from two threads at once: each gets the paths made absolute against the folder the
    command ran in and starts in its chapter's folder, and this process's working directory never moves
    (papermill's own `cwd` would chdir the whole process under the other thread)."""
    import nbformat
    from concurrent.futures import ThreadPoolExecutor

    from cifar_tl.book.build import Chapter, run_chapter

    folder = tmp_path / "notebooks"
    folder.mkdir()
    found = []
    for i in range(4):
        notebook = nbformat.v4.new_notebook()
        notebook.cells = [nbformat.v4.new_code_cell(
            "import os, time; time.sleep(1); print(os.environ['CIFAR_TL_DATA'], os.getcwd())")]
        nbformat.write(notebook, folder / f"n{i}.ipynb")
        found.append(Chapter(f"n{i}", f"n{i}", Path("notebooks") / f"n{i}.ipynb"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CIFAR_TL_DATA", "data/x.tar.gz")
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda c: run_chapter(c, Path("out"), {}, progress=False, threads=1), found))
    assert Path.cwd() == tmp_path
    for chapter in found:
        printed = nbformat.read(tmp_path / "out" / f"{chapter.id}.ipynb", as_version=4).cells[0].outputs[0]["text"]
        assert printed.split() == [str(tmp_path / "data/x.tar.gz"), str(folder)]


@pytest.mark.skipif(not Path("/proc/self/autogroup").exists(), reason="no autogroup scheduling on this machine")
def test_a_kernel_in_its_own_session_gets_the_builds_niceness():
    """A kernel starts a session of its own; under autogroup scheduling `nice` would not reach it, so the
    build gives its group the build's niceness. A process that is not niced changes nothing."""
    import subprocess
    import sys

    from cifar_tl.book.build import share_niceness

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        autogroup = Path(f"/proc/{child.pid}/autogroup")
        assert autogroup.read_text().split()[-1] == "0"  # a new session: a new group at the default share
        assert share_niceness(child.pid, 0) is False and autogroup.read_text().split()[-1] == "0"
        assert share_niceness(child.pid, 7) is True
        assert autogroup.read_text().split()[-1] == "7"
    finally:
        child.kill()
        child.wait()
    assert share_niceness(child.pid, 7) is False  # gone: no error, nothing set
