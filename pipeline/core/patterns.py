"""The closed sets every question is built from: MMVP's nine visual patterns and the two answer letters.

Each pattern has a stable `key` (snake_case, what tables store) and three published spellings:

* `paper`: the name in Tong et al., "Eyes Wide Shut?" (CVPR 2024); annotators see it.
* `vlm_type`: the MMVP-VLM `Type` value and image folder name (`MLLM_VLM Images/<Type>/...`).
* `mmvp_script`: the category string in MMVP's `scripts/evaluate_vlm.py`.

`PATTERNS` is in the order of that script's category list, which labels MMVP-VLM pair k with
`categories[k // 15]`: a layout that script reads must list its pairs pattern by pattern in this
order. Every module renders pattern names from here; none spells them again.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from pipeline.core.errors import ClipblindError


@dataclass(frozen=True)
class Pattern:
    """One of MMVP's nine visual patterns, with its stable key and its three published names."""

    key: str
    paper: str
    vlm_type: str
    mmvp_script: str

    @property
    def spellings(self) -> tuple[str, ...]:
        """Every name this pattern is known by: key, paper, MMVP-VLM type, MMVP script category."""
        return (self.key, self.paper, self.vlm_type, self.mmvp_script)


PATTERNS: tuple[Pattern, ...] = (
    Pattern("orientation", "Orientation and Direction", "Orientation", "Orientation and Direction"),
    Pattern("presence", "Presence of Specific Features", "Presence", "Presence of Specific Features"),
    Pattern("state", "State and Condition", "State", "State and Condition"),
    Pattern("quantity", "Quantity and Count", "Quantity", "Quantity and Count"),
    Pattern("spatial", "Positional and Relational Context", "Spatial", "Positional and Relational Context"),
    Pattern("color", "Color and Appearance", "Color", "Color and Appearance"),
    Pattern("structural_character", "Structural and Physical Characteristics", "Structural Character",
            "Structural Characteristics"),
    Pattern("text", "Text", "Text", "Texts"),
    Pattern("camera_perspective", "Viewpoint and Perspective", "Camera Perspective", "Viewpoint and Perspective"),
)
KEYS: tuple[str, ...] = tuple(p.key for p in PATTERNS)
PAPER_NAMES: tuple[str, ...] = tuple(p.paper for p in PATTERNS)
MMVP_SCRIPT_CATEGORIES: tuple[str, ...] = tuple(p.mmvp_script for p in PATTERNS)

# The two answer letters of every question: option (a) and option (b).
ANSWERS: tuple[str, str] = ("(a)", "(b)")


class PatternError(ClipblindError, ValueError):
    """A name that is none of the nine patterns' spellings."""


def _fold(name: str) -> str:
    """Case, spaces, '-' and '_' do not distinguish spellings."""
    return re.sub(r"[\s_\-]+", " ", name).strip().casefold()


_BY_KEY: dict[str, Pattern] = {p.key: p for p in PATTERNS}
_BY_NAME: dict[str, Pattern] = {_fold(s): p for p in PATTERNS for s in p.spellings}


def _allowed() -> str:
    return "; ".join(f"{p.key} ({p.paper} / {p.vlm_type} / {p.mmvp_script})" for p in PATTERNS)


def by_key(key: str) -> Pattern:
    """The pattern stored in tables as `key`; PatternError for anything else."""
    if key not in _BY_KEY:
        raise PatternError(f"unknown pattern key {key!r}; tables store one of {list(KEYS)}")
    return _BY_KEY[key]


def lookup(name: str) -> Pattern:
    """The pattern spelled `name` in any of its spellings (case, spaces, '-' and '_' ignored)."""
    found = _BY_NAME.get(_fold(name)) if isinstance(name, str) else None
    if found is None:
        raise PatternError(f"unknown visual pattern {name!r}; use one of the nine: {_allowed()}")
    return found


def rank(key: str) -> int:
    """Position of pattern `key` in MMVP's script order (the MMVP-VLM layout's order)."""
    return KEYS.index(by_key(key).key)


def in_order(names: Iterable[str]) -> list[str]:
    """Names of patterns (any spelling), each once, in MMVP's order; a name that is none of the nine (MMVP's
    `unlabelled`, a foreign folder's own type) follows, in the order first given."""
    given = list(dict.fromkeys(names))

    def known(name: str) -> int | None:
        try:
            return rank(lookup(name).key)
        except PatternError:
            return None

    ranked = sorted((r, n) for n in given if (r := known(n)) is not None)
    return [n for _, n in ranked] + [n for n in given if known(n) is None]
