"""What a chapter page says about itself: its header (backbone, data, profile, and what made its numbers), the
smoke-profile banner, and a decision of the ladder worded from `ladder.decision`'s numbers."""

from __future__ import annotations

import re

from cifar_tl.training.profiles import get_profile

# The first words of the smoke-profile warning: book/_ext/smoke_pages.py finds the warning by them, lifts it to
# the top of the built page as a banner, and marks the page in the table of contents.
SMOKE_BANNER = "Warning: smoke profile."


def input_sizes(records: list[dict]) -> list[int]:
    """The input sizes (pixels per side) the records were trained and tested at."""
    return sorted({r["config"]["image_size"] for r in records if r.get("config", {}).get("image_size")})


def profile_description(profile: str, records: list[dict] | None = None) -> str:
    """The profile's description, with its input size replaced by the records' own where a recipe fixes its
    size (the from-scratch CNN trains at 32×32 in every profile): a page never claims an input it did not use."""
    chosen = get_profile(profile)
    text = chosen.description
    sizes = input_sizes(records or [])
    if sizes and sizes != [chosen.image_size]:
        used = " and ".join(f"{s}×{s}" for s in sizes)
        text = re.sub(r"\b\d+x\d+ input", f"{used} input (the recipe's own size, not the profile's "
                      f"{chosen.image_size}×{chosen.image_size})", text)
    return text.replace(f"{chosen.image_size}x{chosen.image_size}", f"{chosen.image_size}×{chosen.image_size}")


def smoke_banner() -> str:
    return (f"> **{SMOKE_BANNER}** This page was built with tiny inputs and one or two epochs, only to prove the "
            "code runs. Its numbers are not meaningful. The published book renders a chapter from its full-profile "
            "records once they are all committed (`cifar-tl campaign --status` lists what is missing); "
            "`--profile full` runs it for real.")


def page_header(profile: str, backbone: str | None, records: list[dict], data: dict | None = None) -> str:
    """Markdown naming the backbone, the data (with its note) and the profile of this page's runs."""
    chosen = get_profile(profile)
    data = data or (records[0]["data"] if records else {})
    tested = ""
    if records:
        metrics = records[0]["metrics"]
        tested = f", {metrics['test_images']:,} test images"
        tested += " (a class-balanced cap of the test split)" if metrics["test_limited"] else ""
    lines = [
        f"**Backbone:** `{backbone}`" if backbone else None,
        f"**Data:** {data.get('name', '?')}{tested}",
        f"**Profile:** `{profile}`: {profile_description(profile, records)}",
    ]
    made_by = provenance(records)
    if made_by:
        lines.append(f"**Made by:** {made_by}")
    text = "  \n".join(line for line in lines if line)
    if data.get("note"):
        text += f"\n\n*{data['note']}.*"
    if not chosen.meaningful:
        text += "\n\n" + smoke_banner()
    return text


def provenance(records: list[dict]) -> str:
    """Which machines (with precision), code versions and dates made `records` and every other record this
    page has loaded (`chapter.records_shown`)."""
    from cifar_tl.book.chapter import records_shown
    from cifar_tl.records.store import machine_name

    shown = {r["name"]: r for r in [*records, *records_shown()]}.values()
    if not shown:
        return ""
    machines = sorted({machine_name(r) for r in shown})
    versions = sorted({r.get("code_version", "?") for r in shown})
    dates = sorted(r.get("created", "?")[:10] for r in shown)
    span = dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}"
    return (f"{len(shown)} run records from {'; '.join(machines)}; code {', '.join(versions)}; {span}")


def decision_outcome(decided: dict) -> str:
    """"better", "worse" or "no clear difference": `ladder.decision`'s `outcome`."""
    return decided["outcome"]


def decision_evidence(decided: dict) -> str:
    """The numbers behind a decision in one clause: the mean paired validation difference, its 95% interval
    when the decision gives one, and the per-subset differences."""
    from cifar_tl.core.stats import fmt_points

    n = decided["n"]
    per_subset = ", ".join(fmt_points(v) for v in decided["deltas"].values())
    text = f"mean paired validation difference {decided['mean_delta_points']} points over {n} subset{'s' * (n != 1)}"
    if decided.get("interval_points"):
        text += f" (95% interval {decided['interval_points']})"
    text += f"; per subset {per_subset}"
    if len(decided.get("precisions", [])) > 1:
        from cifar_tl.book.ladder import MIXED_PRECISIONS

        text += f"; {MIXED_PRECISIONS}"
    return text


def decision_text(decided: dict) -> str:
    """A decision in plain words for a chapter's prose: what validation says, with the interval, and what the
    ladder does with the step. A step the ladder keeps regardless of the outcome is said to be kept because the
    ladder is measured, not selected: its recipes are fixed in the code, and a page reports what each did."""
    outcome = decision_outcome(decided)
    said = {"better": "better on validation", "worse": "worse on validation",
            "no clear difference": "no clear difference on validation"}.get(outcome, outcome)
    text = f"`{decided['new']}` against `{decided['base']}`: {said}, {decision_evidence(decided)}"
    if decided["in_ladder"] and outcome != "better":
        text += ". The ladder keeps the step regardless: it is measured, not selected"
    elif decided["in_ladder"]:
        text += ". The ladder keeps the step"
    else:
        text += f". A side step: the ladder goes on from `{decided['base']}` without it"
    return text + "."


MEASURED_NOT_SELECTED = ("The ladder is measured, not selected: every rung is fixed in `cifar_tl.training.recipes` before its runs "
                         "exist, and each chapter reports what its step did, helpful or not.")


def decision_rule(decided: dict) -> str:
    """The rule the decisions follow (`ladder.decision`'s `rule`), as a sentence for a page."""
    rule = decided["rule"].strip()
    return f"The rule: {rule[0].lower() + rule[1:]}{'' if rule.endswith('.') else '.'}"
