"""A chapter's parameters are checked in its first code cell: executed by papermill (as a practitioner does, with
no `cifar-tl run` checking them first), a wrong value stops the chapter there, with the one message, and no
later cell runs. (test_hostile_inputs.py checks each wrong value against `chapter.setup` itself.)"""

from __future__ import annotations

import os

import nbformat
import pytest

from cifar_tl.book.build import find_chapter


def test_a_wrong_parameter_stops_the_chapter_in_its_first_code_cell(tmp_path, tiny_dataset):
    import papermill
    from papermill.exceptions import PapermillExecutionError

    chapter = find_chapter("01")
    out = tmp_path / "01-data.ipynb"
    environment = {"CIFAR_TL_DATA": str(tiny_dataset), "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    saved = {name: os.environ.get(name) for name in environment}
    os.environ.update(environment)
    try:
        with pytest.raises(PapermillExecutionError) as caught:
            papermill.execute_notebook(str(chapter.path), str(out), parameters={"profile": "smoke", "seeds": [3, 3]},
                                       kernel_name="python3", cwd=str(chapter.path.parent), progress_bar=False)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    assert caught.value.ename == "UserError"
    assert caught.value.evalue.startswith("parameter seeds repeats a subset ([3, 3])")
    assert "\n" not in caught.value.evalue

    code = [cell for cell in nbformat.read(out, as_version=4).cells if cell.cell_type == "code"]
    failed = [i for i, cell in enumerate(code) if any(o.get("output_type") == "error" for o in cell.outputs)]
    assert len(failed) == 1
    tags = [set(cell.metadata.get("tags", [])) for cell in code]
    injected = next(i for i, cell_tags in enumerate(tags) if "injected-parameters" in cell_tags)
    first = injected + 1  # the chapter's first code cell after its parameters (before them: Colab's install)
    assert failed[0] == first and "chapter.setup(" in code[first].source
    assert all(cell.execution_count is None for cell in code[first + 1:])  # nothing after it ran
