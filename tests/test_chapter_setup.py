"""cifar_tl.book.chapter: a chapter's set-up in one call, its figures kept under any matplotlib backend, its prose
and its source excerpts displayed from code."""

from __future__ import annotations

import json
import os

import pytest

from cifar_tl.book import chapter
from cifar_tl.core.errors import UserError
from cifar_tl.training.profiles import get_profile


def test_setup_resolves_seeds_and_keeps_what_it_is_given():
    ctx = chapter.setup("smoke", None, "efficientnet_lite0", None)
    assert ctx.profile == "smoke"
    assert ctx.seeds == list(get_profile("smoke").seeds)
    assert ctx.backbone == "efficientnet_lite0" and ctx.data is None
    assert ctx.settings == get_profile("smoke")
    ctx = chapter.setup("full", [2, 0], "resnet18", "cifar10")
    assert (ctx.profile, ctx.seeds, ctx.backbone, ctx.data) == ("full", [2, 0], "resnet18", "cifar10")


@pytest.mark.parametrize("gpu, expected", [(False, "smoke"), (True, "full")], ids=["no GPU", "a GPU"])
def test_setup_resolves_auto_to_full_on_a_gpu_and_smoke_elsewhere(monkeypatch, gpu, expected):
    """The documented rule, not the function that implements it: `auto` is the full profile where PyTorch
    sees a GPU, the smoke profile elsewhere (both cases simulated, so both are checked on every machine)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    ctx = chapter.setup("auto")
    assert ctx.profile == expected and ctx.seeds == list(get_profile(expected).seeds)
    assert chapter.setup("smoke").profile == "smoke" and chapter.setup("full").profile == "full"  # as given


@pytest.mark.parametrize("arguments, message", [
    (dict(profile="huge"), "huge"),
    (dict(seeds=[0, -1]), "seeds"),
    (dict(seeds="0,1"), "seeds"),
    (dict(seeds=[]), "seeds"),
    (dict(backbone="resnet9000"), "resnet9000"),
])
def test_setup_rejects_bad_parameters_in_one_line(arguments, message):
    with pytest.raises(UserError, match=message) as caught:
        chapter.setup(**{"profile": "smoke", **arguments})
    assert "\n" not in str(caught.value)


def test_keep_figures_outside_a_kernel_changes_nothing():
    import matplotlib

    before = matplotlib.get_backend()
    assert chapter.keep_figures() is None
    assert matplotlib.get_backend() == before


def test_source_lines_are_the_library_source():
    import inspect

    from cifar_tl.training.loop import training_step

    assert chapter.source_lines(training_step) == inspect.getsource(training_step).rstrip("\n")
    excerpt = chapter.source_lines(training_step, "optimizer.zero_grad", "optimizer.step()")
    assert excerpt.splitlines()[0].startswith("optimizer.zero_grad")  # dedented
    assert excerpt.splitlines()[-1] == "optimizer.step()"
    with pytest.raises(ValueError, match="no longer contains"):
        chapter.source_lines(training_step, "a line that is not there")


def test_prose_fills_in_values_and_keeps_markdown(monkeypatch):
    shown = []
    monkeypatch.setattr("IPython.display.display", shown.append)
    chapter.prose("""
        The probe reaches **{accuracy}** with $\\eta$ = {rate:.0e} ({{not a placeholder}}).
    """, accuracy="73.3 ± 0.6%", rate=0.001)
    chapter.prose(f"""
        An f-string keeps its braces: $\\tfrac{{1}}{{2}}$ of {3 * 4}.
    """)
    chapter.bullets(["first  point", None, "second\n point"])
    assert shown[0].data == "The probe reaches **73.3 ± 0.6%** with $\\eta$ = 1e-03 ({not a placeholder})."
    assert shown[1].data == "An f-string keeps its braces: $\\tfrac{1}{2}$ of 12."
    assert shown[2].data == "- first point\n- second point"


def _figures_under_agg(notebook: dict, tmp_path, **env) -> list[dict]:
    """Execute `notebook` in a kernel started with MPLBACKEND=Agg; return its outputs."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.from_dict(notebook)
    saved = {name: os.environ.get(name) for name in ("MPLBACKEND", *env)}
    os.environ.update({"MPLBACKEND": "Agg", **env})
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return [output for cell in nb.cells for output in cell.get("outputs", [])]


def test_setup_keeps_figures_when_the_environment_says_agg(tmp_path):
    import nbformat

    cell = nbformat.v4.new_code_cell
    notebook = nbformat.v4.new_notebook(cells=[
        cell("from cifar_tl.book.chapter import setup\nctx = setup('smoke')"),
        cell("import matplotlib.pyplot as plt\nfig, ax = plt.subplots()\n_ = ax.plot([0, 1], [1, 0])"),
    ])
    outputs = _figures_under_agg(notebook, tmp_path)
    assert not [o for o in outputs if o["output_type"] == "error"], outputs
    assert any("image/png" in o.get("data", {}) for o in outputs), "no figure was kept under MPLBACKEND=Agg"


@pytest.mark.slow
def test_chapters_run_under_agg_keep_their_figures_and_show_their_numbers(built_book):
    """The way a headless server runs chapters: MPLBACKEND=Agg in the environment. The session's smoke book
    is built that way (conftest.BOOK_ENVIRONMENT), so its executed chapters are read here rather than one of
    them being executed a second time."""
    from conftest import BOOK_ENVIRONMENT

    assert BOOK_ENVIRONMENT["MPLBACKEND"] == "Agg"
    executed = sorted((built_book / "source" / "notebooks").glob("[0-9a][0-9]-*.ipynb"))
    assert executed and executed[0].name == "01-data.ipynb"
    for notebook in executed:
        cells = json.loads(notebook.read_text())["cells"]
        outputs = [o for c in cells if c["cell_type"] == "code" for o in c.get("outputs", [])]
        figures = [o for o in outputs if "image/png" in o.get("data", {})]
        assert figures, f"{notebook.stem} kept no figure under MPLBACKEND=Agg"
        markdown = ["".join(o["data"]["text/markdown"]) for o in outputs if "text/markdown" in o.get("data", {})]
        assert markdown and not [m for m in markdown if "{glue" in m], notebook.stem
