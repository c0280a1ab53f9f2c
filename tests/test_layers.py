"""The library's subpackages are its layers, and imports run one way: a module imports from its own layer or a
lower one, never a higher one (imports inside functions count too). The README's *Architecture* section names the
same layers; this table is the one place their order is kept."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cifar_tl"

# Lowest first. A subpackage's layer is its job: what it may know about.
LAYERS = ("core", "data", "models", "training", "records", "book", "apps")
TOP_LEVEL = {"__init__": "core", "cli": "apps", "app": "apps"}  # the package's own modules
MAX_LINES = 450  # a module longer than this does more than one job


def module_name(path: Path) -> str:
    """'records.runner' for cifar_tl/records/runner.py, 'book' for cifar_tl/book/__init__.py."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts) or "__init__"


def layer_of(module: str) -> str:
    """The layer of a module named as `module_name` gives, or of what an import names (`cifar_tl.X...`)."""
    top = module.split(".")[0]
    if top in TOP_LEVEL:
        return TOP_LEVEL[top]
    if top not in LAYERS:
        raise ValueError(f"cifar_tl.{module} is in no layer: add its subpackage to LAYERS")
    return top


def imports_of(source: str, module: str) -> set[str]:
    """The cifar_tl modules (as 'sub.module' or 'sub') a module's source imports, at any depth in the file."""
    package = module.split(".")[0] if "." in module or module in LAYERS else ""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            found.add(package if node.level == 1 and package else node.module or "__init__")
        elif isinstance(node, ast.ImportFrom) and node.module == "cifar_tl":
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cifar_tl."):
            found.add(node.module.removeprefix("cifar_tl."))
        elif isinstance(node, ast.Import):
            found.update(a.name.removeprefix("cifar_tl.") for a in node.names if a.name.startswith("cifar_tl."))
    return {name if name.split(".")[0] in LAYERS or name.split(".")[0] in TOP_LEVEL else "__init__"
            for name in found}


def upward_imports(sources: dict[str, str]) -> list[str]:
    """Every import from a higher layer, as 'module (layer) imports other (layer)'."""
    problems = []
    for module, source in sorted(sources.items()):
        mine = layer_of(module)
        for other in sorted(imports_of(source, module)):
            theirs = layer_of(other)
            if LAYERS.index(theirs) > LAYERS.index(mine):
                problems.append(f"{module} ({mine}) imports {other} ({theirs})")
    return problems


def package_sources() -> dict[str, str]:
    return {module_name(path): path.read_text() for path in PACKAGE.rglob("*.py")
            if "reference_results" not in path.parts}


def test_every_module_is_in_a_layer():
    for module in package_sources():
        layer_of(module)  # raises for a module outside the layers


def test_the_package_has_no_flat_modules_but_its_entry_points():
    flat = {path.stem for path in PACKAGE.glob("*.py")}
    assert flat == set(TOP_LEVEL), f"modules outside a subpackage: {sorted(flat - set(TOP_LEVEL))}"


def test_imports_run_one_way():
    assert upward_imports(package_sources()) == []


def test_no_module_is_long_enough_to_hide_two_jobs():
    lengths = {module: len(source.splitlines()) for module, source in package_sources().items()}
    assert {m: n for m, n in lengths.items() if n > MAX_LINES} == {}


@pytest.mark.parametrize("source", ["from cifar_tl.records.runner import run", "from cifar_tl.book import chapter",
                                    "from cifar_tl import book", "def later():\n    from cifar_tl.cli import main",
                                    "import cifar_tl.app", "from ..records import store"])
def test_an_import_from_a_higher_layer_is_caught(source):
    assert upward_imports({"training.loop": source}) != []  # training may not import records, book or apps


def test_imports_from_the_same_or_a_lower_layer_pass():
    source = ("from cifar_tl.training.loop import train\nfrom cifar_tl.records import store\n"
              "from cifar_tl.core.errors import UserError\nfrom cifar_tl import __version__\nfrom . import identity")
    assert upward_imports({"records.runner": source}) == []


def test_a_module_outside_the_layers_is_named():
    with pytest.raises(ValueError, match="cifar_tl.helpers.misc is in no layer"):
        layer_of("helpers.misc")
