"""A record's code_version hashes the code that computed it: records/runner.py and every cifar_tl module it
imports, at any depth, found from the source rather than from a hand-kept list."""

from __future__ import annotations

from pathlib import Path

import cifar_tl.records.identity as identity


def test_the_result_modules_are_what_the_runner_imports_and_nothing_of_the_book():
    modules = set(identity.result_modules())
    # imported at the top of runner.py, through the training loop, and inside functions (the scikit-learn probe,
    # self-training), with the packages' __init__ files that run first
    assert {"records/runner.py", "training/loop.py", "training/recipes.py", "core/resume.py", "core/metrics.py",
            "core/files.py", "training/logistic_probe.py", "training/self_training.py", "__init__.py",
            "records/__init__.py"} <= modules
    assert not {m for m in modules if m.startswith("book/")} | (modules & {"cli.py", "app.py"})


def test_code_version_follows_the_bytes_of_those_modules(monkeypatch, tmp_path):
    before = identity.code_version()
    installed = Path(identity.__file__).resolve().parents[1]
    package = tmp_path / "cifar_tl"
    for name in identity.result_modules():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_bytes((installed / name).read_bytes())
    monkeypatch.setattr(identity, "__file__", str(package / "records" / "identity.py"))
    assert identity.code_version() == before  # the same bytes elsewhere: the same version
    (package / "core" / "metrics.py").write_text((package / "core" / "metrics.py").read_text() + "\n# an edit\n")
    assert identity.code_version() != before
