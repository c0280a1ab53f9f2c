"""A record's code_version hashes the code that computed it: runs.py and every cifar_tl module it imports, at
any depth, found from the source rather than from a hand-kept list."""

from __future__ import annotations

from cifar_tl import runs


def test_the_result_modules_are_what_runs_imports_and_nothing_of_the_book():
    modules = set(runs.result_modules())
    # imported at the top of runs.py, through train.py, and inside functions (the scikit-learn probe)
    assert {"runs.py", "train.py", "recipes.py", "resume.py", "metrics.py", "files.py", "logistic_probe.py",
            "self_training.py"} <= modules
    assert not modules & {"cli.py", "chapters.py", "app.py", "plots.py", "tables.py"}


def test_code_version_follows_the_bytes_of_those_modules(monkeypatch, tmp_path):
    before = runs.code_version()
    package = tmp_path / "cifar_tl"
    package.mkdir()
    for name in runs.result_modules():
        (package / name).write_bytes((runs.Path(runs.__file__).parent / name).read_bytes())
    monkeypatch.setattr(runs, "__file__", str(package / "runs.py"))
    assert runs.code_version() == before  # the same bytes elsewhere: the same version
    (package / "metrics.py").write_text((package / "metrics.py").read_text() + "\n# an edit\n")
    assert runs.code_version() != before
