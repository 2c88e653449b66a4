"""The nine patterns and the answer letters, defined once in pipeline.patterns."""

from __future__ import annotations

import pytest

from pipeline import patterns


def test_nine_patterns_with_distinct_spellings() -> None:
    assert len(patterns.PATTERNS) == 9
    for field in ("key", "paper", "vlm_type", "mmvp_script"):
        assert len({getattr(p, field) for p in patterns.PATTERNS}) == 9, field
    assert all(p.key.isidentifier() and p.key == p.key.lower() for p in patterns.PATTERNS)


@pytest.mark.parametrize("pattern", patterns.PATTERNS, ids=lambda p: p.key)
def test_lookup_by_every_spelling(pattern: patterns.Pattern) -> None:
    for spelling in pattern.spellings:
        assert patterns.lookup(spelling) is pattern
        assert patterns.lookup(f"  {spelling.upper()} ") is pattern
        assert patterns.lookup(spelling.replace(" ", "_")) is pattern
    assert patterns.by_key(pattern.key) is pattern


def test_unknown_names_are_refused_with_the_allowed_ones() -> None:
    with pytest.raises(patterns.PatternError, match=r"'Quantity and Colour'.*quantity \(Quantity and Count"):
        patterns.lookup("Quantity and Colour")
    with pytest.raises(patterns.PatternError, match=r"'Quantity'.*'quantity'"):
        patterns.by_key("Quantity")  # a spelling is not a key


def test_order_is_mmvp_script_order() -> None:
    assert [patterns.rank(p.key) for p in patterns.PATTERNS] == list(range(9))
    assert patterns.PATTERNS[0].mmvp_script == "Orientation and Direction"
    assert patterns.PATTERNS[-1].mmvp_script == "Viewpoint and Perspective"
