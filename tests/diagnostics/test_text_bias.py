"""The text-only bias audit: a planted answer-position leak is found, balanced positions leave nothing, no answer feeds its own score."""

from __future__ import annotations

import dataclasses

import pytest

from pipeline.diagnostics import records
from pipeline.diagnostics.text_bias import permutation_score, text_bias
from pipeline.release.items import answer_balance
from pipeline.vlm.pairs import EvalPair, pairs_from_items
from tests.helpers.params import demo_params
from tests.release.test_balance import OTHER_LETTER, items_of, leaky_rows

PARAMS = demo_params("diagnose.text_bias")


def written_pairs(rows: list[dict]) -> list[EvalPair]:
    """Accepted rows as pairs in the order the writers wrote them (before package balances answer positions)."""
    return [EvalPair(r["pair_id"], r["pattern"], r["question"], (r["option_a"], r["option_b"]), (r["answer_a"], r["answer_b"]),
                     (None, None)) for r in rows]


def released_pairs(rows: list[dict], images) -> list[EvalPair]:
    """The same rows through the real build_items (answer positions balanced), as pairs."""
    items, rejected = items_of(rows, images)
    assert not rejected
    return pairs_from_items(items)


def flagged_share(audit: list[records.TextBias]) -> float:
    return sum(r.text_bias_flagged for r in audit) / len(audit)


def test_a_position_leak_is_found_and_gone_once_package_balances_positions():
    rows, images = leaky_rows(120)  # every writer gave the first image answer (a)
    leaky = text_bias(written_pairs(rows), PARAMS)
    assert len(leaky) == 240 and flagged_share(leaky) > 0.95
    assert all(r.text_bias is not None and r.text_bias_flagged == (r.text_bias > PARAMS.threshold) for r in leaky)

    items, _ = items_of(rows, images)
    assert answer_balance(items, 0) == {"pairs": 120, "first_answer_a": 60, "first_answer_b": 60, "swapped_pairs": 60,
                                        "seed": 0}
    balanced = text_bias(pairs_from_items(items), PARAMS)
    assert [r.item_id for r in balanced] == [i["item_id"] for i in items]
    assert [r.options_swapped for r in balanced] == [i["options_swapped"] for i in items]
    assert [r.pattern for r in balanced] == [i["pattern"] for i in items]
    assert not [r.item_id for r in balanced if r.text_bias_flagged]
    scores = [r.text_bias for r in balanced if r.text_bias is not None]
    assert len(scores) == 240 and 0.45 < sum(scores) / 240 < 0.55


def text_leak_rows(n_pairs: int) -> tuple[list[dict], object]:
    """Rows whose first image's right option is always the shorter one: after balancing, text (not letters) leaks."""
    rows, images = leaky_rows(n_pairs)
    return [dict(r, option_b=f"{r['option_b']} with a longer wording") for r in rows], images


def test_text_that_tells_the_first_image_apart_is_found_after_balancing():
    rows, images = text_leak_rows(120)
    audit = text_bias(released_pairs(rows, images), PARAMS)
    assert flagged_share(audit) > 0.9


def test_answers_permuted_across_pairs_score_about_half():
    rows, images = leaky_rows(60)
    balanced = released_pairs(rows, images)
    assert permutation_score(balanced, PARAMS, rounds=4, seed=1) == pytest.approx(0.5, abs=0.04)
    # a text leak scores high with its own answers and about 0.5 once answers no longer belong to their text
    leak_rows, leak_images = text_leak_rows(60)
    text_leak = released_pairs(leak_rows, leak_images)
    assert sum(r.text_bias or 0 for r in text_bias(text_leak, PARAMS)) / 120 > 0.8
    assert permutation_score(text_leak, PARAMS, rounds=4, seed=1) == pytest.approx(0.5, abs=0.06)


def test_a_questions_own_answer_never_feeds_its_own_score():
    rows, images = leaky_rows(40)
    pairs = released_pairs(rows, images)
    before = {r.item_id: float(r.text_bias) for r in text_bias(pairs, PARAMS) if r.text_bias is not None}
    target = pairs[7]
    assert target.answers is not None
    flipped = dataclasses.replace(target, answers=(OTHER_LETTER[target.answers[0]], target.answers[1]))
    after = {r.item_id: float(r.text_bias) for r in text_bias([*pairs[:7], flipped, *pairs[8:]], PARAMS) if r.text_bias is not None}
    assert len(before) == len(after) == 80
    own, partner = records.item_id(target.pair_id, "a"), records.item_id(target.pair_id, "b")
    # its model never saw it (nor its partner): the probability it gives is unchanged, so the score of the
    # flipped answer is exactly the complement of the old one
    assert after[own] == pytest.approx(1.0 - before[own], abs=1e-9)
    assert after[partner] == pytest.approx(before[partner], abs=1e-9)
    # the flip did reach the models trained with that pair: other questions' scores moved
    moved = [k for k in before if k not in (own, partner) and abs(after[k] - before[k]) > 1e-6]
    assert len(moved) > 20


def test_folds_are_seeded_and_too_few_pairs_give_no_score():
    rows, images = leaky_rows(40)
    pairs = released_pairs(rows, images)
    first = text_bias(pairs, PARAMS)
    # folds are dealt from the sorted pair ids: the input order changes nothing
    again = {r.item_id: r.text_bias for r in text_bias(list(reversed(pairs)), PARAMS)}
    assert again == pytest.approx({r.item_id: r.text_bias for r in first}, abs=1e-9)
    reseeded = text_bias(pairs, dataclasses.replace(PARAMS, seed=PARAMS.seed + 1))
    assert [r.text_bias for r in reseeded] != [r.text_bias for r in first]

    few = pairs[: PARAMS.folds - 1]
    audit = text_bias(few, PARAMS)
    assert len(audit) == 2 * len(few) and all(r.text_bias is None and not r.text_bias_flagged for r in audit)
    # a pair without a question or answers (an MMVP-VLM folder) is skipped; the others are scored
    bare = dataclasses.replace(pairs[0], question=None, options=None, answers=None)
    audit = text_bias([bare, *pairs[1:]], PARAMS)
    assert pairs[0].pair_id not in {r.pair_id for r in audit} and len(audit) == 2 * (len(pairs) - 1)
    assert all(r.text_bias is not None for r in audit)
