"""The library's modules sit in layers, and imports run one way: a module imports from its own layer or a lower
one, never a higher one (imports inside functions count too). The README's *Architecture* section names the
same layers; this table is the one place they are kept."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cifar_tl"

# Lowest first. A module's layer is its job: what it may know about.
LAYERS: dict[str, set[str]] = {
    "core": {"__init__", "errors", "files", "resume", "stats", "metrics"},  # no knowledge of data, models or runs
    "data": {"data", "augment", "own_data"},  # image sources, subsets, augmentation on batches
    "models": {"backbones", "checkpoints"},  # the backbone registry, saved models and prediction
    "training": {"recipes", "train", "logistic_probe", "self_training", "consistency"},  # recipes and the loops
    "records": {"runs", "results", "campaign", "bench"},  # run configs, identity, the record store, the campaign
    "book": {"chapter", "chapters", "pages", "tables", "plots", "ladder", "recipe_info", "compare", "course",
             "batchnorm", "self_training_report"},  # what the chapters call, and the book build
    "apps": {"cli", "app"},  # the command line and the demo app
}


def layer_of() -> dict[str, int]:
    return {module: rank for rank, modules in enumerate(LAYERS.values()) for module in modules}


def imports_of(source: str) -> set[str]:
    """The cifar_tl modules a module's source imports (relative or absolute, at any depth in the file)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found.update([node.module.split(".")[0]] if node.module else [alias.name for alias in node.names])
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == "cifar_tl":
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("cifar_tl."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("cifar_tl."))
    return found


def upward_imports(sources: dict[str, str]) -> list[str]:
    """Every import from a higher layer, as 'module (layer) imports other (layer)'."""
    rank, names = layer_of(), list(LAYERS)
    problems = []
    for module, source in sorted(sources.items()):
        for other in sorted(imports_of(source) & set(rank)):
            if rank[other] > rank[module]:
                problems.append(f"{module} ({names[rank[module]]}) imports {other} ({names[rank[other]]})")
    return problems


def test_every_module_has_one_layer():
    modules = {path.stem for path in PACKAGE.glob("*.py")}
    placed = [m for layer in LAYERS.values() for m in layer]
    assert len(placed) == len(set(placed)), "a module is in two layers"
    assert set(placed) == modules, (f"not in a layer: {sorted(modules - set(placed))}; "
                                    f"no longer a module: {sorted(set(placed) - modules)}")


def test_imports_run_one_way():
    sources = {path.stem: path.read_text() for path in PACKAGE.glob("*.py")}
    assert upward_imports(sources) == []


@pytest.mark.parametrize("source", ["from .runs import run", "from . import chapter", "from cifar_tl import pages",
                                    "def later():\n    from cifar_tl.cli import main", "import cifar_tl.app"])
def test_an_import_from_a_higher_layer_is_caught(source):
    assert upward_imports({"train": source}) != []  # train (training) may not import records, book or apps


def test_imports_from_the_same_or_a_lower_layer_pass():
    assert upward_imports({"runs": "from .train import train\nfrom . import campaign, errors"}) == []
