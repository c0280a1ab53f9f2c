"""What a chapter page says about itself: its header (backbone, data, profile, and what made its numbers)."""

from __future__ import annotations

from .recipes import get_profile


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
        f"**Profile:** `{profile}`: {chosen.description}",
    ]
    made_by = provenance(records)
    if made_by:
        lines.append(f"**Made by:** {made_by}")
    text = "  \n".join(line for line in lines if line)
    if data.get("note"):
        text += f"\n\n*{data['note']}.*"
    if not chosen.meaningful:
        text += (
            "\n\n> **Warning: smoke profile.** This page was built with tiny inputs and one or two epochs, only to "
            "prove the code runs. Its numbers are not meaningful; build it with `--profile full` for real ones."
        )
    return text


def provenance(records: list[dict]) -> str:
    """Which machines (with precision), code versions and dates made `records` and every other record this
    page has loaded (`runs.records_shown`)."""
    from .results import machine_name
    from .runs import records_shown

    shown = {r["name"]: r for r in [*records, *records_shown()]}.values()
    if not shown:
        return ""
    machines = sorted({machine_name(r) for r in shown})
    versions = sorted({r.get("code_version", "?") for r in shown})
    dates = sorted(r.get("created", "?")[:10] for r in shown)
    span = dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}"
    return (f"{len(shown)} run records from {'; '.join(machines)}; code {', '.join(versions)}; {span}")
