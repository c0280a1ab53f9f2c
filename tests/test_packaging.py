"""pyproject.toml declares every third-party package that cifar_tl imports, at module level or inside a function."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]

# Modules of cifar_tl that run only with an extra installed (`cifar-tl app` says to install it): their imports
# may be declared in that extra instead of the dependencies.
EXTRA_MODULES = {"app.py": "app"}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_names(requirements: list[str]) -> set[str]:
    return {normalise(re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", r.strip()).group()) for r in requirements}


def top_level_imports(path: Path) -> set[str]:
    """Top-level package names of every absolute import in the file, wherever it sits."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_every_import_of_cifar_tl_is_stdlib_or_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    dependencies = requirement_names(project["dependencies"])
    extras = {name: requirement_names(reqs) for name, reqs in project["optional-dependencies"].items()}
    distributions = packages_distributions()
    modules = sorted((ROOT / "cifar_tl").rglob("*.py"))
    assert set(EXTRA_MODULES) <= {m.relative_to(ROOT / "cifar_tl").as_posix() for m in modules}, \
        "EXTRA_MODULES names a module that is gone"
    problems = []
    for module in modules:
        name = module.relative_to(ROOT / "cifar_tl").as_posix()
        for package in sorted(top_level_imports(module) - {"cifar_tl"} - set(sys.stdlib_module_names)):
            allowed = set(dependencies)
            extra = EXTRA_MODULES.get(name)
            if extra:
                allowed |= extras.get(extra, set())
            provided_by = {normalise(d) for d in distributions.get(package, [])}
            if not provided_by:
                problems.append(f"cifar_tl/{name} imports {package}, which no installed distribution provides")
            elif not provided_by & allowed:
                where = f"the dependencies or the [{extra}] extra" if extra else "the dependencies"
                problems.append(f"cifar_tl/{name} imports {package} ({' or '.join(sorted(provided_by))}), "
                                f"not declared in {where} of pyproject.toml")
    assert not problems, "\n".join(problems)


def test_pyproject_lists_every_subpackage():
    """setuptools installs only the packages pyproject names: a subpackage left out would be missing from a wheel."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "cifar_tl").rglob("__init__.py")}
    assert found <= listed, f"not in pyproject's packages: {sorted(found - listed)}"
