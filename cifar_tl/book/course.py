"""The course as a whole: the ladder told in the book's own numbers, which chapters a build made from records
and which in the smoke profile, and the checks that keep the pages' sentences honest against the records (the
repository the book is published from: `book.repository`).

Everything here reads committed full-profile records (`records.store.committed_records`, through the campaign's
plan) and never trains, so the introduction can run it in any build, in JupyterLab and on Colab.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

# What each rung of the story adds, in words (the settings themselves are in recipes.py and on the chapter).
RUNG_CHANGES = {
    "scratch": "a small CNN from random weights, no transfer",
    "linear_probe": "frozen ImageNet backbone, a new linear head",
    "finetune_naive": "everything unfrozen at one constant rate",
    "ft_cosine": "+ warm-up and a cosine schedule",
    "ft_discriminative": "+ a learning rate per layer group",
    "ft_lower_lr": "+ a lower peak rate",
    "ft_gradual": "staged unfreezing (a side step)",
    "ft_lpft": "+ a linear-probe stage first (LP-FT)",
    "ft_bn_frozen": "+ BatchNorm statistics frozen",
    "ft_crop_flip": "+ random crops and flips",
    "ft_mix": "+ MixUp and CutMix",
    "ft_label_smoothing": "label smoothing alone (a side step)",
    "ft_weight_decay": "weight decay alone (a side step)",
    "ft_regularised": "+ label smoothing and weight decay",
    "full": "+ weight averaging and test-time flips",
    "self_training": "+ pseudo-labels on the unlabelled images",
    "fixmatch": "+ consistency on the unlabelled images (FixMatch)",
}


# -- the book's records -----------------------------------------------------------------------------------


def story_rungs() -> list[str]:
    """The recipes the book's story climbs, in order: from scratch, the linear probe, then the ladder's main
    line from naive fine-tuning to `full` (`ladder.ladder`)."""
    from cifar_tl.book.ladder import ladder

    return ["scratch", "linear_probe", *ladder("full")]


def book_records() -> dict[str, list[dict]]:
    """The committed, current, whole full-profile records of every run the book shows, by recipe, in seed
    order (the campaign's plan; recipes with no record yet are absent). Reads records only."""
    from cifar_tl.records.campaign import BOOK_PROFILE, campaign_status

    done = campaign_status(data="cifar10").done  # no data needed: records are matched by their config
    found: dict[str, list[dict]] = {}
    for run, record in sorted(done.items(), key=lambda item: (item[0].recipe, item[0].seed)):
        if run.profile == BOOK_PROFILE and run.image_size is None:  # not chapter 12's pilots
            found.setdefault(run.recipe, []).append(record)
    return found


def planned_seeds() -> tuple[int, ...]:
    from cifar_tl.records.campaign import BOOK_PROFILE
    from cifar_tl.training.profiles import get_profile

    return get_profile(BOOK_PROFILE).seeds


def chapter_of(recipe: str) -> str | None:
    from cifar_tl.training.recipes import RECIPES

    return RECIPES[recipe].chapter if recipe in RECIPES else None


def story_table(records: dict[str, list[dict]], rungs: list[str] | None = None) -> pd.DataFrame:
    """One row per rung: the chapter that introduces it, what it adds, validation and test accuracy (mean ± std
    over the committed subsets, n given), and the paired test difference against the rung before it. A rung
    whose records are not all committed says how many are."""
    from cifar_tl.core.stats import accuracies, fmt_mean_std, fmt_points, paired_deltas

    rungs = rungs or story_rungs()
    wanted = len(planned_seeds())
    rows, previous = [], None
    for name in rungs:
        runs = records.get(name, [])
        complete = len(runs) >= wanted
        row = {"rung": name, "chapter": (chapter_of(name) or "–").split("-")[0], "what it adds": RUNG_CHANGES.get(name, "")}
        if complete:
            row["validation accuracy"] = fmt_mean_std(accuracies(runs, "val_accuracy"))
            row["test accuracy"] = fmt_mean_std(accuracies(runs))
            deltas = paired_deltas(records.get(previous, []), runs) if previous else {}
            row["Δ test vs the rung before (pp)"] = fmt_points(float(np.mean(list(deltas.values())))) if deltas else "–"
        else:
            row["validation accuracy"] = row["test accuracy"] = f"not measured yet ({len(runs)} of {wanted} records)"
            row["Δ test vs the rung before (pp)"] = "–"
        rows.append(row)
        previous = name if complete else None
    return pd.DataFrame(rows).set_index("rung")


def measured(records: dict[str, list[dict]], rungs: list[str] | None = None) -> list[str]:
    """The rungs whose records are all committed."""
    wanted = len(planned_seeds())
    return [name for name in (rungs or story_rungs()) if len(records.get(name, [])) >= wanted]


def mean(records: list[dict], key: str = "test_accuracy") -> float:
    return float(np.mean([r["metrics"][key] for r in records]))


def standard_error(p: float, n: int) -> float:
    """The standard error of an accuracy p measured on n independent images (binomial): sqrt(p(1-p)/n)."""
    return float(np.sqrt(p * (1 - p) / n))


def machines(records: dict[str, list[dict]]) -> list[str]:
    from cifar_tl.records.store import machine_name

    return sorted({machine_name(r) for runs in records.values() for r in runs})


def made_on_gpu(records: dict[str, list[dict]]) -> bool:
    return any((r.get("machine") or {}).get("gpu") and str((r.get("timing") or {}).get("device", "")).startswith("cuda")
               for runs in records.values() for r in runs)


def as_evaluated(records: list[dict], views: str) -> tuple[list[dict] | None, list[str]]:
    """The records as if evaluated with test-time `views` ("none" or a mode such as "flip"), from the accuracies
    each stored for both (`metrics.by_test_time_views`): copies whose validation and test accuracy are those of
    `views`, ready for `ladder.decision` and `stats`. None, and the names of the records that lack them, when
    any does (records made before the field existed)."""
    lacking = [r.get("name", "?") for r in records if views not in (r["metrics"].get("by_test_time_views") or {})]
    if lacking:
        return None, lacking
    copies = []
    for record in records:
        chosen = record["metrics"]["by_test_time_views"][views]
        copies.append({**record, "metrics": {**record["metrics"], "val_accuracy": chosen["val_accuracy"],
                                             "test_accuracy": chosen["test_accuracy"]}})
    return copies, []


# -- how this build made each chapter ---------------------------------------------------------------------

_PROFILE_LINE = re.compile(r"\*\*Profile:\*\* `(\w+)`")


def executed_profile(notebook: Path) -> str | None:
    """The profile an executed chapter notebook says it was built with (its header), or None when the
    notebook holds no outputs (not executed)."""
    try:
        cells = json.loads(notebook.read_text())["cells"]
    except (OSError, ValueError, KeyError):
        return None
    for cell in cells:
        for output in cell.get("outputs", []) if cell.get("cell_type") == "code" else []:
            text = "".join((output.get("data") or {}).get("text/markdown", "")) + "".join(output.get("text", ""))
            found = _PROFILE_LINE.search(text)
            if found:
                return found.group(1)
    return None


def chapter_build(notebooks: Path | None = None) -> tuple[dict[str, str], str]:
    """Each chapter's profile in this build, and how that was known.

    Beside executed chapters (a book build stages them in ../notebooks next to book/), it is what each one's
    header says. Elsewhere (a checkout, where notebooks are stored without outputs), it is what the published
    book would do: `build.chapter_profiles`, from which records are committed."""
    from cifar_tl.book.build import chapter_profiles, chapters

    ids = [c.id for c in chapters()]
    if notebooks is not None and notebooks.is_dir():
        seen = {c: executed_profile(notebooks / f"{c}.ipynb") for c in ids}
        if any(seen.values()):
            return {c: p or "not built" for c, p in seen.items()}, "this build"
    return chapter_profiles(ids)[0], "the published book"


def readme_table(records: dict[str, list[dict]] | None = None) -> str:
    """The README's table of the measured rungs, as Markdown (`python -m cifar_tl.book readme-table` prints it;
    tests/test_course.py checks the README's numbers against the same records' story table)."""
    records = book_records() if records is None else records
    table = story_table(records)
    rows = [f"| `{name}` | {table.loc[name, 'chapter']} | {table.loc[name, 'what it adds']} | "
            f"{table.loc[name, 'validation accuracy']} | {table.loc[name, 'test accuracy']} |"
            for name in measured(records)]
    return "\n".join(["| rung | chapter | what it adds | validation accuracy | test accuracy |",
                      "|---|---|---|---|---|", *rows])


# -- sentences the records contradict ----------------------------------------------------------------------

_ATTRIBUTED = re.compile(r"article|Michael|report|demo|others'|their", re.IGNORECASE)


def _sentences(text: str) -> list[str]:
    text = re.sub(r"\s+", " ", text)
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+(?=[A-Z*`(])", text) if s.strip()]


def contradicted_claims(text: str, records: dict[str, list[dict]]) -> list[str]:
    """Sentences of `text` (a page, prose or HTML stripped of tags) that the records contradict or that are
    known to have gone stale: each returned as "why: sentence"."""
    problems = []
    full = records.get("full", [])
    full_test = mean(full) if full else None
    on_gpu = made_on_gpu(records)
    for sentence in _sentences(text):
        near_ninety = re.search(r"\b(close to|approaching|towards?|nearly|about|around|reach(es)?) 90 ?%", sentence)
        if near_ninety and not _ATTRIBUTED.search(sentence) and (full_test is None or full_test < 0.875):
            problems.append(f"the book's own recipe said to be near 90% (records: "
                            f"{'none yet' if full_test is None else f'{100 * full_test:.1f}%'}): {sentence}")
        if re.search(r"\bneeds? a GPU\b", sentence) and re.search(r"full|reference|record", sentence) and not on_gpu:
            problems.append(f"full-profile runs said to need a GPU, but every record was made on a CPU: {sentence}")
        if re.search(r"chooses `?full`? when a GPU", sentence) and re.search(r"cifar-tl book|`book`", sentence):
            problems.append(f"`cifar-tl book` renders from records, it does not choose by GPU: {sentence}")
        if re.search(r"chapters written so far", sentence, re.IGNORECASE):
            problems.append(f"the book is not a set of chapters 'written so far': {sentence}")
        same = re.search(r"\(from ([\d,.]+%?) to \1\)", sentence)
        if same:
            problems.append(f"a range whose ends are the same number: {sentence}")
        if re.search(r"(?<![\d.])0% of the evaluated average still comes from before", sentence):
            problems.append(f"a share of 0% worded as something that is still there: {sentence}")
    return problems


def page_text(html: str) -> str:
    """The visible text of a built page: scripts, styles and tags removed, entities of the common kinds read."""
    html = re.sub(r"(?is)<(script|style)\b.*?</\1>", " ", html)
    html = re.sub(r"(?s)<[^>]+>", " ", html)
    for entity, char in (("&amp;", "&"), ("&lt;", "<"), ("&gt;", ">"), ("&quot;", '"'), ("&#39;", "'"),
                         ("&nbsp;", " "), ("&#177;", "±")):
        html = html.replace(entity, char)
    return re.sub(r"\s+", " ", html)


# -- small wording helpers the chapters share -------------------------------------------------------------


def fmt_range(values, fmt: str = "{:,}") -> str:
    """"from a to b", or "on every subset" when every value is the same: no range whose ends are equal."""
    values = list(values)
    low, high = min(values), max(values)
    if low == high:
        return f"{fmt.format(low)} on every subset" if len(values) > 1 else fmt.format(low)
    return f"from {fmt.format(low)} to {fmt.format(high)}"


def fastest_at_common_size(costs: pd.DataFrame, names: list[str], size: int) -> tuple[str | None, list[str]]:
    """The backbone of `names` with the lowest CPU latency among those measured at input `size`, and the
    names measured at another size (their own native input), which a latency comparison must leave out."""
    same = [n for n in names if int(costs.loc[n, "input size"]) == size]
    other = [n for n in names if n not in same]
    fastest = costs.loc[same, "CPU latency (ms)"].idxmin() if same else None
    return fastest, other
