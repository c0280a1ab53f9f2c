"""Every chapter executes in the smoke profile, and the book builds from the executed notebooks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cifar_tl.chapters import ROOT, build_book, chapters
from cifar_tl.errors import UserError

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
    for later in ("03-linear-probe", "04-naive-finetune"):  # keep the test short: stop after the broken one
        (tmp_path / "notebooks" / f"{later}.ipynb").unlink()
    with pytest.raises(UserError, match="chapter 02-scratch failed .*this chapter is broken"):
        build_book("smoke", progress=False, root=tmp_path)
    assert not (tmp_path / "_build" / "html").exists()
    assert not (tmp_path / "_build" / "source" / "notebooks" / "02-scratch.ipynb").exists()


def test_the_published_book_renders_complete_chapters_from_records(published_book):
    """A chapter whose full-profile records are all committed shows them (n=3, no smoke warning) and trained
    nothing; a chapter still missing records is built in the smoke profile, says so, and the build names it."""
    from cifar_tl.campaign import RECORD_CHAPTERS
    from cifar_tl.chapters import chapter_profiles

    build, log = published_book
    profiles, lacking = chapter_profiles([c.id for c in chapters()])
    assert set(profiles) == {c.id for c in chapters()}
    for chapter, profile in profiles.items():
        page = (build / "html" / "notebooks" / f"{chapter}.html").read_text()
        executed = build / "source" / "notebooks" / f"{chapter}.ipynb"
        text = "\n".join(_text(o) for o in _outputs(executed))
        if profile == "full":
            assert chapter in RECORD_CHAPTERS
            assert "not meaningful" not in page, chapter
            assert "Profile:** `full`" in text and "JPEG q75" in page, chapter
            if chapter != "01-data":
                assert "(n=3)" in page, chapter
            assert "executing " + chapter + " (from its committed records)" in log
        else:
            assert "not meaningful" in page, chapter
            assert f"{chapter}: " in log and chapter in lacking
    assert profiles["03-linear-probe"] == "full" or "scratch" in " ".join(lacking["03-linear-probe"])
