"""The nine patterns and the answer letters, defined once in pipeline.patterns."""

from __future__ import annotations

import pytest

from pipeline.core import patterns


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


def test_order_and_names_are_those_of_mmvps_script() -> None:
    from tests.helpers import mmvp_oracle

    assert [patterns.rank(p.key) for p in patterns.PATTERNS] == list(range(9))
    # the oracle holds MMVP's evaluate_vlm.py category list as that script spells and orders it
    assert patterns.MMVP_SCRIPT_CATEGORIES == mmvp_oracle.MMVP_CATEGORIES


def _choices(config: str) -> dict[str, list[str]]:
    import xml.etree.ElementTree as ET

    root = ET.fromstring(config)
    return {c.get("name"): [x.get("value") for x in c.iter("Choice")] for c in root.iter("Choices")}


def test_labeling_configs_offer_the_closed_sets_of_pipeline_patterns() -> None:
    from annotation import push
    from annotation import push_verification as verify

    writing = _choices(push.writing_config())
    assert writing["pattern"] == writing["tags"] == list(patterns.PAPER_NAMES)
    assert writing["answer_a"] == writing["answer_b"] == list(patterns.ANSWERS)
    verification = _choices(push.render_config(verify.VERIFICATION_CONFIG.read_text()))
    assert verification["verify_a"] == verification["verify_b"] == [*patterns.ANSWERS, "unanswerable"]
    # the templates spell none of the names: they are rendered from pipeline.core.patterns alone
    for template in (push.WRITING_CONFIG.read_text(), verify.VERIFICATION_CONFIG.read_text()):
        assert not any(f'"{name}"' in template for p in patterns.PATTERNS for name in p.spellings)
        assert not any(f'<Choice value="{letter}"' in template for letter in patterns.ANSWERS)


def test_rendering_a_config_is_idempotent_and_refuses_unknown_sets() -> None:
    from annotation import push

    assert push.render_config(push.writing_config()) == push.writing_config()
    with pytest.raises(ValueError, match="'colours'.*answers"):
        push.render_config("<View>\n  <!-- choices: colours -->\n</View>")


def test_guidelines_name_the_patterns_as_the_writing_config_offers_them() -> None:
    from annotation import push

    template = push.GUIDELINES.read_text()
    rendered = push.render_guidelines(template)
    assert "; ".join(patterns.PAPER_NAMES) + "." in rendered
    assert f"(a) Three (b) Four. A: (b), B: (a). {patterns.by_key('quantity').paper}.</li>" in rendered
    assert "<!--" not in rendered and not any(name in template for name in patterns.PAPER_NAMES if " " in name)
    with pytest.raises(patterns.PatternError, match="'colour'"):
        push.render_guidelines("<!-- pattern: colour -->")


def test_in_order_puts_any_spelling_in_mmvp_order_and_others_after():
    from pipeline.core.patterns import PATTERNS, in_order

    color, orientation, text = (patterns.by_key(k) for k in ("color", "orientation", "text"))
    given = ["unlabelled", text.paper, color.key, orientation.paper, "Own type", color.key]
    assert in_order(given) == [orientation.paper, color.key, text.paper, "unlabelled", "Own type"]
    assert in_order(reversed([p.paper for p in PATTERNS])) == [p.paper for p in PATTERNS]
