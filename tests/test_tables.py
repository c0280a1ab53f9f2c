"""cifar_tl.book.tables: the ladder and the reference runs as tables, from records built by hand."""

from __future__ import annotations

from cifar_tl.book import tables


def record(recipe: str, seed: int, val: float, test: float, **extra) -> dict:
    return {"config": {"recipe": recipe, "seed": seed, "backbone": "efficientnet_lite0", "profile": "full",
                       "image_size": 224},
            "metrics": {"val_accuracy": val, "test_accuracy": test, "test_images": 10000}, **extra}


def test_ladder_table_pairs_each_rung_with_the_one_before_and_the_first():
    runs = {
        "a": [record("a", 0, 0.50, 0.40), record("a", 1, 0.52, 0.42)],
        "b": [record("b", 0, 0.55, 0.50), record("b", 1, 0.55, 0.50)],
        "c": [record("c", 0, 0.60, 0.45), record("c", 1, 0.60, 0.47)],
    }
    table = tables.ladder_table(runs)
    assert list(table.index) == ["a", "b", "c"]
    assert table.loc["b", "Δ test vs previous (pp)"] == "+9.0"
    assert table.loc["c", "Δ test vs previous (pp)"] == "-4.0"
    assert table.loc["c", "Δ test vs a (pp)"] == "+5.0"
    assert table.loc["c", "Δ validation vs previous (pp)"] == "+5.0"
    assert table.loc["a", "Δ test vs previous (pp)"] == "–"
    assert table.loc["b", "test accuracy"] == "50.0 ± 0.0% (n=2)"
    other = tables.ladder_table(runs, bases={"c": "a"})
    assert other.loc["c", "compared with"] == "a" and other.loc["c", "Δ test vs previous (pp)"] == "+5.0"


def test_reference_table_groups_seeds_and_sets_this_build_beside_them():
    gpu = {"machine": {"gpu": "NVIDIA H100", "cpu": "x86"}}
    refs = [record("full", 0, 0.90, 0.88, **gpu), record("full", 1, 0.91, 0.90, **gpu),
            record("linear_probe", 0, 0.7, 0.7, machine={"gpu": None, "cpu": "Some CPU"})]
    own = {"full": [record("full", 0, 0.3, 0.2), record("full", 1, 0.3, 0.4)]}
    table = tables.reference_table(refs, own).set_index("recipe")
    assert table.loc["full", "test accuracy"] == "89.0 ± 1.4% (n=2)"
    assert table.loc["full", "machine"] == "NVIDIA H100" and table.loc["linear_probe", "machine"] == "Some CPU"
    assert table.loc["full", "test images"] == "10,000" and table.loc["full", "input"] == "224×224"
    assert table.loc["full", "data"] == "?"  # these hand-made records name no data
    assert table.loc["full", "this build's test accuracy"] == "30.0 ± 14.1% (n=2)"
    assert table.loc["linear_probe", "this build's test accuracy"] == "–"
    assert tables.reference_table([]).empty
