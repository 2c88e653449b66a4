"""Reading Label Studio annotation results: control name → the values an annotator gave."""

from __future__ import annotations

from typing import Any


def fields(result: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Map each control (`from_name`) to its values: chosen options or typed text entries."""
    out: dict[str, list[str]] = {}
    for region in result:
        value = region.get("value", {})
        entries = value.get("choices", value.get("text", []))
        if isinstance(entries, str):
            entries = [entries]
        out.setdefault(region["from_name"], []).extend(str(e) for e in entries)
    return out


def text(values: dict[str, list[str]], name: str) -> str:
    """The text typed into a text control, stripped ("" when left empty)."""
    return "\n".join(values.get(name, [])).strip()


def choice(values: dict[str, list[str]], name: str) -> str:
    """The single option chosen in a choice control ("" when none)."""
    chosen = values.get(name, [])
    return chosen[0] if len(chosen) == 1 else ""


def choices(values: dict[str, list[str]], name: str) -> list[str]:
    """Every option chosen in a multiple-choice control, sorted."""
    return sorted(set(values.get(name, [])))
