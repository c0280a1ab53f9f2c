"""What a chapter page says about itself: its header (backbone, data, profile) and the values glued into its prose."""

from __future__ import annotations

from .recipes import get_profile


def glue(name: str, value, display: bool = False) -> None:
    """Store `value` for the page's prose (MyST-NB's glue); a no-op where myst_nb is absent (Colab)."""
    try:
        from myst_nb import glue as myst_glue
    except ImportError:
        return
    myst_glue(name, value, display=display)


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
    text = "  \n".join(line for line in lines if line)
    if data.get("note"):
        text += f"\n\n*{data['note']}.*"
    if not chosen.meaningful:
        text += (
            "\n\n> **Warning: smoke profile.** This page was built with tiny inputs and one or two epochs, only to "
            "prove the code runs. Its numbers are not meaningful; build it with `--profile full` for real ones."
        )
    return text
