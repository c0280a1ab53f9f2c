"""Decisions of the technique chapters: the ladder of recipes, and whether a change is kept, judged on
validation accuracy only (paired by subset), never on test accuracy."""

from __future__ import annotations

import numpy as np

from .recipes import RECIPES, get_profile
from .stats import fmt_points, paired_deltas

# Each rung of the ladder and the recipe it changes (Recipe.builds_on). The main line runs from finetune_naive
# to full; ft_gradual is a side step that the main line does not take.
LADDER_BASES: dict[str, str] = {r.name: r.builds_on for r in RECIPES.values() if r.builds_on}


def ladder(last: str = "full") -> list[str]:
    """The main line of the ladder, from its first recipe to `last` (following LADDER_BASES back)."""
    names = [last]
    while names[-1] in LADDER_BASES:
        names.append(LADDER_BASES[names[-1]])
    return names[::-1]


def decision(base_records: list[dict], new_records: list[dict], in_ladder: bool = True, base_name: str | None = None,
             new_name: str | None = None) -> dict:
    """Whether a change is kept, decided by VALIDATION accuracy only (paired by subset), never by test.

    The change is supported when the mean paired validation difference is above zero. `in_ladder` says
    whether recipes.py's ladder takes the step anyway (it is fixed in the code), which decides how an
    unsupported step is worded. Returns the numbers (fractions; `*_points` strings in percentage points)
    and `verdict`, a plain-text sentence fragment for the page's prose (no Markdown: `{glue:text}` shows
    it as it is).
    """
    deltas = paired_deltas(base_records, new_records, "val_accuracy")
    if not deltas:
        raise ValueError("the two settings share no subset (seed): nothing to compare")
    mean = float(np.mean(list(deltas.values())))
    n = len(deltas)
    rose = sum(d > 0 for d in deltas.values())
    supported = mean > 0
    base_name = base_name or base_records[0]["config"]["recipe"]
    new_name = new_name or new_records[0]["config"]["recipe"]
    moved = "rose" if mean > 0 else "fell" if mean < 0 else "did not change"
    by = f" by {fmt_points(abs(mean)).lstrip('+')} points" if mean != 0 else ""
    evidence = (f"validation accuracy {moved}{by} on average over {n} subset{'s' if n != 1 else ''}, rising in "
                f"{rose} of them ({', '.join(fmt_points(d) for d in deltas.values())} points)")
    if in_ladder and supported:
        verdict = f"kept: {evidence}"
    elif in_ladder:
        verdict = (f"not supported in this build: {evidence}; the ladder in the code keeps the step anyway, "
                   "pending the full-profile reference runs")
    elif supported:
        verdict = (f"supported in this build but not taken: {evidence}; the ladder in the code continues "
                   f"from {base_name} without it, pending the full-profile reference runs")
    else:
        verdict = f"not kept: {evidence}; the ladder continues from {base_name}"
    return {
        "base": base_name,
        "new": new_name,
        "mean_delta": mean,
        "mean_delta_points": fmt_points(mean),
        "deltas": deltas,
        "n": n,
        "rose_in": rose,
        "supported": supported,
        "in_ladder": in_ladder,
        "verdict": verdict,
    }


def profile_caveat(profile: str) -> str:
    """A sentence on how far a verdict of this profile can be trusted."""
    chosen = get_profile(profile)
    if not chosen.meaningful:
        return (f"This page was built with the {chosen.name} profile, so the verdict shows how the decision is "
                "made, not what it would be; build it with the full profile for a real one.")
    return (f"With {len(chosen.seeds)} subsets, a difference smaller than the spread between subsets is within the "
            "luck of the draw; the per-subset differences show whether the subsets agree.")
