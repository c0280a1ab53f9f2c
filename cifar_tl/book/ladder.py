"""Decisions of the technique chapters: the ladder of recipes, and whether a change is kept, judged on
validation accuracy only (paired by subset), never on test accuracy."""

from __future__ import annotations

import numpy as np

from cifar_tl.core.stats import fmt_points, paired_deltas
from cifar_tl.training.profiles import get_profile
from cifar_tl.training.recipes import RECIPES

# Each rung of the ladder and the recipe it changes (Recipe.builds_on). The main line runs from finetune_naive
# to full; ft_gradual is a side step that the main line does not take.
LADDER_BASES: dict[str, str] = {r.name: r.builds_on for r in RECIPES.values() if r.builds_on}


def ladder(last: str = "full") -> list[str]:
    """The main line of the ladder, from its first recipe to `last` (following LADDER_BASES back)."""
    names = [last]
    while names[-1] in LADDER_BASES:
        names.append(LADDER_BASES[names[-1]])
    return names[::-1]


# How many standard errors the mean paired difference must clear (with every subset agreeing) to count.
MIN_STANDARD_ERRORS = 2.0
RULE = ("a step counts as better (or worse) only when validation accuracy moves the same way on every subset and "
        f"the mean paired difference is more than {MIN_STANDARD_ERRORS:g} times its standard error; otherwise there "
        "is no clear difference. The 95% interval of the mean (Student's t, n - 1 degrees of freedom) shows how "
        "uncertain it is")


# Said beside a comparison whose paired records were made in more than one precision.
MIXED_PRECISIONS = "the records paired mix bf16 and fp32 (appendix A2 measures what the precision changes)"


def paired_uncertainty(deltas: list[float]) -> tuple[float, float | None, tuple[float, float] | None]:
    """The mean of paired differences, its standard error and a 95% t-interval (None with one subset)."""
    from scipy.stats import t

    values = np.asarray(deltas, dtype=float)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, None, None
    se = float(values.std(ddof=1) / np.sqrt(len(values)))
    half = float(t.ppf(0.975, len(values) - 1)) * se
    return mean, se, (mean - half, mean + half)


def outcome_of(deltas: list[float], se: float | None) -> str:
    """"better", "worse" or "no clear difference", by RULE."""
    mean = float(np.mean(deltas))
    if se is None:
        return "no clear difference"  # one subset: nothing to say how far luck goes
    if all(d > 0 for d in deltas) and mean > MIN_STANDARD_ERRORS * se:
        return "better"
    if all(d < 0 for d in deltas) and mean < -MIN_STANDARD_ERRORS * se:
        return "worse"
    return "no clear difference"


def decision(base_records: list[dict], new_records: list[dict], in_ladder: bool = True, base_name: str | None = None,
             new_name: str | None = None) -> dict:
    """Whether a change helps, judged by VALIDATION accuracy only (paired by subset), never by test, by RULE.

    `in_ladder` says whether recipes.py's ladder takes the step (it is fixed in the code: the ladder is
    measured, not selected), which decides how the verdict is worded. Returns the numbers (fractions;
    `*_points` strings in percentage points), `outcome`, `rule` and `verdict`, a plain-text sentence
    fragment for the page's prose whose words before the first colon say it in short.
    """
    deltas = paired_deltas(base_records, new_records, "val_accuracy")
    if not deltas:
        raise ValueError("the two settings share no subset (seed): nothing to compare")
    values = list(deltas.values())
    mean, se, interval = paired_uncertainty(values)
    outcome = outcome_of(values, se)
    n = len(deltas)
    rose = sum(d > 0 for d in values)
    base_name = base_name or base_records[0]["config"]["recipe"]
    new_name = new_name or new_records[0]["config"]["recipe"]
    moved = "rose" if mean > 0 else "fell" if mean < 0 else "did not change"
    by = f" by {fmt_points(abs(mean)).lstrip('+')} points" if mean != 0 else ""
    interval_points = (f"{fmt_points(interval[0])} to {fmt_points(interval[1])}" if interval else None)
    evidence = (f"validation accuracy {moved}{by} on average over {n} subset{'s' if n != 1 else ''}, rising in "
                f"{rose} of them ({', '.join(fmt_points(d) for d in values)} points"
                + (f"; 95% interval of the mean {interval_points} points" if interval else "") + ")")
    precisions = sorted({r["config"]["precision"] for r in [*base_records, *new_records]
                         if r["config"]["seed"] in deltas and r["config"].get("precision")})
    if len(precisions) > 1:
        evidence += f"; {MIXED_PRECISIONS}"
    if in_ladder:
        verdict = {"better": f"better, kept: {evidence}",
                   "worse": f"worse, kept all the same: {evidence}; the ladder in the code takes the step anyway "
                            "(it is measured, not selected)",
                   "no clear difference": f"no clear difference, kept all the same: {evidence}; the ladder in the "
                                          "code takes the step anyway (it is measured, not selected)"}[outcome]
    else:
        verdict = {"better": f"better, but not taken: {evidence}; the ladder in the code continues from "
                             f"{base_name} without it (it is measured, not selected)",
                   "worse": f"worse, not taken: {evidence}; the ladder continues from {base_name}",
                   "no clear difference": f"no clear difference, not taken: {evidence}; the ladder continues from "
                                          f"{base_name}"}[outcome]
    return {
        "base": base_name,
        "new": new_name,
        "mean_delta": mean,
        "mean_delta_points": fmt_points(mean),
        "deltas": deltas,
        "n": n,
        "rose_in": rose,
        "se": se,
        "interval": interval,
        "interval_points": interval_points,
        "outcome": outcome,
        "supported": outcome == "better",
        "in_ladder": in_ladder,
        "rule": RULE,
        "verdict": verdict,
        "precisions": precisions,
    }


def profile_caveat(profile: str) -> str:
    """A sentence on how far a verdict of this profile can be trusted."""
    chosen = get_profile(profile)
    if not chosen.meaningful:
        return (f"This page was built with the {chosen.name} profile, so the verdict shows how the decision is "
                "made, not what it would be; build it with the full profile for a real one.")
    if len(chosen.seeds) == 1:
        return ("One subset ranks candidates for a paired comparison on three; it cannot show that one is better "
                "than another.")
    return (f"With {len(chosen.seeds)} subsets, a difference smaller than the spread between subsets is within the "
            "luck of the draw; the per-subset differences show whether the subsets agree.")
