"""The chapter notebooks as files, without executing them: how each one starts (the Colab install cell, its
parameters, one set-up call) and ends (a Summary from measured numbers, Exercises with collapsed solutions),
and no prose that only the built book can render."""

from __future__ import annotations

import io
import re

import nbformat
import pytest

from cifar_tl.book.build import ROOT, chapters

try:
    import tomllib
except ImportError:  # Python 3.10, which pyproject.toml allows, has no tomllib
    tomllib = None


def _project_version() -> str:
    text = (ROOT / "pyproject.toml").read_text()
    if tomllib is not None:
        return tomllib.loads(text)["project"]["version"]
    project = text.split("[project]", 1)[1].split("\n[", 1)[0]  # the [project] table, up to the next table
    return re.search(r'(?m)^version\s*=\s*"([^"]+)"', project).group(1)


CHAPTERS = chapters()
VERSION = _project_version()


def _notebook(chapter_id: str) -> nbformat.NotebookNode:
    return nbformat.read(next(c.path for c in CHAPTERS if c.id == chapter_id), as_version=4)


def _sections(notebook) -> list[tuple[str, list]]:
    """(level-2 heading, the cells from it to the next level-2 heading), in order; cells before the first: ''."""
    sections = [("", [])]
    for cell in notebook.cells:
        heading = next((line[3:].strip() for line in cell.source.splitlines() if line.startswith("## ")), None)
        if cell.cell_type == "markdown" and heading is not None:
            sections.append((heading, [cell]))
        else:
            sections[-1][1].append(cell)
    return sections


@pytest.fixture(params=[c.id for c in CHAPTERS])
def chapter_id(request) -> str:
    return request.param


def test_notebook_is_stored_as_nbformat_writes_it_without_outputs(chapter_id):
    path = next(c.path for c in CHAPTERS if c.id == chapter_id)
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    written = io.StringIO()
    nbformat.write(notebook, written)
    assert path.read_text() == written.getvalue(), "write it with nbformat.write (1-space indent, sorted keys)"
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert not [c for c in code if c.outputs or c.execution_count is not None], "outputs are stored"


def test_chapter_ends_with_summary_then_exercises(chapter_id):
    sections = _sections(_notebook(chapter_id))
    if sections[-1][0] == "Questionnaire":  # after the exercises (tests/test_course.py checks it)
        sections = sections[:-1]
    names = [name for name, _ in sections]
    assert names[-2:] == ["Summary", "Exercises"], f"the last two sections are {names[-2:]}"
    summary_cells, exercise_cells = sections[-2][1], sections[-1][1]

    # The summary's points carry numbers this run measured, so they are displayed from code, never typed.
    shown = "\n".join(c.source for c in summary_cells if c.cell_type == "code")
    assert re.search(r"\bbullets\(", shown), "the Summary's points are displayed with chapter.bullets(...)"
    points = shown.count('f"') + shown.count("f'")
    assert points >= 3, "the Summary has at least 3 points with measured values filled in"
    typed = "\n".join(c.source for c in summary_cells if c.cell_type == "markdown")
    assert not re.search(r"\d+(\.\d+)?\s*%", typed), "a Summary markdown cell types a percentage in"

    text = "\n".join(c.source for c in exercise_cells if c.cell_type == "markdown")
    exercises = re.findall(r"(?m)^\d+\.\s", text)
    assert len(exercises) >= 3, f"{len(exercises)} exercises; at least 3"
    assert re.search(r"-p \w+|parameters=|cifar_tl\.\w+|run_seeds\(|\.runs\(", text), \
        "at least one exercise runs a variant through a papermill parameter or a library call"
    solutions = re.findall(r"(?ms)^[ \t]*(:{3,}|`{3,})\{(admonition|toggle)\}([^\n]*)\n(.*?)^[ \t]*\1[ \t]*$", text)
    assert solutions, "no solution block"
    for fence, kind, title, body in solutions:
        if kind == "admonition":
            assert "Solution" in title and re.search(r"(?m)^[ \t]*:class:.*\bdropdown\b", body), \
                f"a solution admonition must be titled Solution and collapsed (:class: dropdown): {title!r}"


def test_numbers_are_displayed_from_code_not_glued(chapter_id):
    notebook = _notebook(chapter_id)
    for cell in notebook.cells:
        assert "{glue" not in cell.source, f"a {cell.cell_type} cell still uses glue (renders only in the book)"
        if cell.cell_type == "code":
            assert not re.search(r"\bglue\(", cell.source), "glue(...) is no longer needed: display the prose"


def test_chapter_starts_with_the_colab_install_then_parameters_then_one_setup_call(chapter_id):
    code = [c for c in _notebook(chapter_id).cells if c.cell_type == "code"]
    install, parameters, setup = code[0], code[1], code[2]
    assert '"google.colab" in sys.modules' in install.source
    assert f"cifar-tl @ git+https://github.com/cifar-tl/cifar-tl@v{VERSION}" in install.source, \
        f"the Colab cell installs the version in pyproject.toml (v{VERSION})"
    assert "parameters" in parameters.metadata.get("tags", [])
    assert re.search(r"\bchapter\.setup\(profile, seeds, backbone, data\)", setup.source)
    assert sum("chapter.setup(" in c.source for c in code) == 1
    everything = "\n".join(c.source for c in code)
    assert "default_profile" not in everything, "chapter.setup resolves the profile"
    if re.search(r"import matplotlib\.pyplot as plt", everything):
        assert re.search(r"\bplt\.", everything), "matplotlib.pyplot is imported and never used"


def test_setup_page_installs_the_same_version_as_the_notebooks():
    page = (ROOT / "book" / "setup.md").read_text()
    assert f"cifar-tl @ git+https://github.com/cifar-tl/cifar-tl@v{VERSION}" in page


# Every notebook the book executes: the chapters, and the book's own pages written as notebooks (the introduction).
PAGES = {**{c.id: c.path for c in CHAPTERS}, **{p.stem: p for p in sorted((ROOT / "book").glob("*.ipynb"))}}


@pytest.mark.parametrize("page", sorted(PAGES))
def test_a_chapter_imports_the_library_from_the_book_face_only(page):
    """One obvious place: `from cifar_tl.book import ...`, and every name it takes is one the face exports."""
    import ast

    import cifar_tl.book as face

    chapter_id = page
    for cell in nbformat.read(PAGES[page], as_version=4).cells:
        if cell.cell_type != "code":
            continue
        code = "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith(("!", "%")))
        for node in ast.walk(ast.parse(code)):
            if isinstance(node, ast.Import):
                assert not [a.name for a in node.names if a.name.startswith("cifar_tl")], ast.unparse(node)
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cifar_tl"):
                assert node.module == "cifar_tl.book", f"{chapter_id}: {ast.unparse(node)}"
                assert {a.name for a in node.names} <= set(face.__all__), f"{chapter_id}: {ast.unparse(node)}"


@pytest.mark.parametrize("page", sorted(PAGES))
def test_a_chapter_uses_no_name_that_none_of_its_cells_defines_or_imports(page):
    """pyflakes over the chapter's code cells in order (shell and magic lines left out): an undefined name would stop
    the chapter with a NameError at that cell, in the book build and on Colab alike."""
    from pyflakes.api import check
    from pyflakes.reporter import Reporter

    cells = [cell.source for cell in nbformat.read(PAGES[page], as_version=4).cells if cell.cell_type == "code"]
    code = "\n\n".join("\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("!", "%")))
                       for source in cells)
    warnings = io.StringIO()
    check(code, f"{page}.ipynb", Reporter(warnings, io.StringIO()))
    undefined = [line for line in warnings.getvalue().splitlines() if "undefined name" in line]
    assert undefined == [], "\n".join(undefined)
