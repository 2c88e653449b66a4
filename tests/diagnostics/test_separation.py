"""The encoder side of the 2x2 on a stub vision tower whose features are planted per image: every figure is
worked out by hand below (unit vectors along axes e0..e3 of a 4-d space)."""

import dataclasses
import math

import numpy as np
import pytest

from pipeline.core import patterns
from pipeline.core.config import ParamsError, build
from pipeline.diagnostics import separation
from pipeline.diagnostics.features import Features
from pipeline.diagnostics.records import BY_PATCH, BY_PROBE
from pipeline.params import EncoderDiagnosticsParams
from pipeline.vlm import scoring
from pipeline.vlm.pairs import EvalPair
from tests.helpers.params import demo_params, section

PROBED = patterns.PAPER_NAMES[0]  # five pairs with answers: a probe trains on four
PATCHED = patterns.PAPER_NAMES[1]  # two usable pairs: one training pair, too few, the patch rule decides
E = np.eye(4)


def unit(v):
    return v / np.linalg.norm(v)


class PlantedTower:
    """A FeatureEncoder whose features are set per image (the image bytes are its key)."""

    name = "planted"
    random_init = False

    def __init__(self, pooled, patches_last, patches_middle, texts=None):
        self.pooled, self.last, self.middle, self.text_vectors = pooled, patches_last, patches_middle, texts
        self.calls = []

    def features(self, images):
        self.calls.append(list(images))
        stack = lambda table: None if table is None else np.stack([table[i] for i in images]).astype(np.float32)  # noqa: E731
        return Features(stack(self.pooled), stack(self.last), stack(self.middle))

    def texts(self, texts):
        return None if self.text_vectors is None else np.stack([self.text_vectors[t] for t in texts])


def pair(pair_id, pattern, answers=("(a)", "(b)"), statements=(None, None), swapped=False, images=None):
    images = images or (f"{pair_id}a".encode(), f"{pair_id}b".encode())
    return EvalPair(pair_id, pattern, "q?", ("left", "right"), answers, images, statements, options_swapped=swapped)


# Pooled embeddings. In PROBED, the image whose pooled vector leans to +e1 has its answer at written option
# index 1: A1, A2 and A3 agree with that (A3's release reversed its options, so "(a)" there is written option 1),
# A4's images differ along e2 only, A5's answers contradict the rule (and its difference leans to e3 too).
V = unit(E[1] + 0.3 * E[3])
POOLED = {
    b"A1a": unit(E[0] + 0.5 * E[1]), b"A1b": unit(E[0] - 0.5 * E[1]),
    b"A2a": unit(E[0] - 0.5 * E[1]), b"A2b": unit(E[0] + 0.5 * E[1]),
    b"A3a": unit(E[0] + 0.5 * E[1]), b"A3b": unit(E[0] - 0.5 * E[1]),
    b"A4a": unit(E[0] + 0.5 * E[2]), b"A4b": unit(E[0] - 0.5 * E[2]),
    b"A5a": unit(E[0] + 0.5 * V), b"A5b": unit(E[0] - 0.5 * V),
    b"C1a": E[0], b"C1b": E[0],
    b"B1a": E[0], b"B1b": unit(E[0] + E[2]),
    b"B2a": E[0], b"B2b": unit(E[0] + 0.1 * E[2]),
    b"D1a": E[0],
}
# Patch tokens (2 per image). PROBED: both tokens are the pooled vector. B1: the second token turns round at the
# last layer (1 - cos = 2) and turns a right angle at the middle one (1 - cos = 1); B2: it moves a little.
LAST = {k: np.stack([v, v]) for k, v in POOLED.items()}
MIDDLE = dict(LAST)
LAST.update({b"B1a": np.stack([E[0], E[1]]), b"B1b": np.stack([E[0], -E[1]]),
             b"B2a": np.stack([E[0], E[1]]), b"B2b": np.stack([E[0], unit(E[1] + 0.1 * E[2])])})
MIDDLE.update({b"B1a": np.stack([E[0], E[1]]), b"B1b": np.stack([E[0], E[2]]),
               b"B2a": np.stack([E[0], E[1]]), b"B2b": np.stack([E[0], E[1]])})
TEXT = {scoring.CLIP_TEXT.format(statement=s): v for s, v in {
    "A1 a": POOLED[b"A1a"], "A1 b": POOLED[b"A1b"],  # each statement is its own image: right both ways
    "B1 a": E[0], "B1 b": E[2],  # sim = [[1, 0], [.707, .707]]: forward right, reverse a tie for image b
    "B2 a": E[2], "B2 b": E[0],  # the statements swapped: sim = [[0, 1], [.0995, .995]], wrong both ways
}.items()}

PAIRS = [
    pair("A1", PROBED, ("(b)", "(a)"), ("A1 a", "A1 b")),
    pair("A2", PROBED, ("(a)", "(b)")),
    pair("A3", PROBED, ("(a)", "(b)"), swapped=True),
    pair("A4", PROBED, ("(a)", "(b)")),
    pair("A5", PROBED, ("(a)", "(b)")),
    pair("C1", PROBED, answers=None),  # no answers (an MMVP-VLM folder): never trained on, never probed
    pair("B1", PATCHED, statements=("B1 a", "B1 b")),
    pair("B2", PATCHED, statements=("B2 a", "B2 b")),
    pair("D1", PATCHED, images=(b"D1a", None)),  # an image missing: skipped, and no training pair of B1 or B2
]


@pytest.fixture
def params():
    return dataclasses.replace(demo_params("diagnose.encoders"), probe="linear", probe_min_train_pairs=2,
                               separable_min=0.1, probe_l2=1.0, batch_size=4)


def verdicts(tower, params):
    return {v.pair_id: v for v in separation.encoder_pairs(PAIRS, tower, params)}


def test_planted_tower_gives_the_hand_computed_verdicts(params):
    tower = PlantedTower(POOLED, LAST, MIDDLE, TEXT)
    got = verdicts(tower, params)
    assert list(got) == ["A1", "A2", "A3", "A4", "A5", "C1", "B1", "B2"]  # D1 skipped

    # pooled cosine: (1 - .25) / 1.25 = .6 for A1; 1/sqrt(2) for B1; 1/sqrt(1.01) for B2; identical images: 1
    assert got["A1"].pooled_cosine == pytest.approx(0.6)
    assert got["B1"].pooled_cosine == pytest.approx(1 / math.sqrt(2))
    assert got["B2"].pooled_cosine == pytest.approx(1 / math.sqrt(1.01))
    assert got["C1"].pooled_cosine == pytest.approx(1.0)
    # patch separability: mean over the two aligned tokens of 1 - cos
    assert got["A1"].patch_separability_last == pytest.approx(0.4)
    assert got["B1"].patch_separability_last == pytest.approx((0 + 2) / 2)
    assert got["B1"].patch_separability_middle == pytest.approx((0 + 1) / 2)
    assert got["B2"].patch_separability_last == pytest.approx((1 - 1 / math.sqrt(1.01)) / 2)
    assert got["B2"].patch_separability_middle == pytest.approx(0.0)

    # statements (forward: each statement nearer its own image; reverse: each image nearer its own statement)
    assert (got["A1"].statement_forward, got["A1"].statement_reverse) == (True, True)
    assert (got["B1"].statement_forward, got["B1"].statement_reverse) == (True, False)
    assert (got["B2"].statement_forward, got["B2"].statement_reverse) == (False, False)
    assert (got["A2"].statement_forward, got["A2"].statement_reverse) == (None, None)  # no statements

    # the probe: PROBED trains on the 4 other answered pairs; A4's difference (e2) is orthogonal to everything
    # the other folds learn from (e1, e3), so its score is exactly 0 and takes no side; A5 contradicts the rule
    probe = {k: (v.probe_right, v.probe_train_pairs, v.separates, v.separates_by) for k, v in got.items()}
    assert probe["A1"] == (True, 4, False, BY_PROBE)
    assert probe["A2"] == (True, 4, False, BY_PROBE)
    assert probe["A3"] == (True, 4, False, BY_PROBE)  # right only with the release's option reversal undone
    assert probe["A4"] == (False, 4, False, BY_PROBE)
    assert probe["A5"] == (False, 4, False, BY_PROBE)
    # ... but 3 of 5 right does not beat chance: 5 pairs hold only C(5, 2) = 10 arrangements of their labels
    # (two pairs answer (1, 0)), and 16 of the 20 seeded shuffles reach 3 of 5 too: p = (1 + 16) / 21, no pair of
    # PROBED separates. The figures sit on every pair of the pattern, C1 too; PATCHED has no probe.
    figures = {k: (v.probe_pattern_accuracy, v.probe_chance, v.probe_p_value) for k, v in got.items()}
    for k in ("A1", "A2", "A3", "A4", "A5", "C1"):
        assert figures[k] == pytest.approx((3 / 5, 0.48, 17 / 21))
    assert figures["B1"] == figures["B2"] == (None, None, None)
    # no answers: no probe (5 answered pairs around it), the patch rule: identical images, 0 < .1
    assert probe["C1"] == (None, 5, False, BY_PATCH)
    # PATCHED: one training pair each (D1 is no training pair), fewer than 2: the last layer's patches decide
    assert probe["B1"] == (None, 1, True, BY_PATCH)  # 1.0 >= .1
    assert probe["B2"] == (None, 1, False, BY_PATCH)  # .0025 < .1

    # batched: 8 usable pairs, 2 pairs (4 images) per call
    assert [len(c) for c in tower.calls] == [4, 4, 4, 4]
    assert all(v.encoder == "planted" for v in got.values())

    # where any p passes, the probe's own verdicts decide: A1, A2 and A3 separate
    lenient = verdicts(PlantedTower(POOLED, LAST, MIDDLE, TEXT), dataclasses.replace(params, probe_max_p=1.0))
    assert {k: v.separates for k, v in lenient.items() if v.separates_by == BY_PROBE} == {
        "A1": True, "A2": True, "A3": True, "A4": False, "A5": False}


def test_the_swapped_options_rule_decides_a3(params):
    """Without undoing the release's reversal, A3's labels read (0, 1) and the probe, which learnt +e1 → 1, fails."""
    assert separation.answer_labels(PAIRS[2]) == (1, 0)
    assert separation.answer_labels(dataclasses.replace(PAIRS[2], options_swapped=False)) == (0, 1)
    unswapped = [dataclasses.replace(p, options_swapped=False) if p.pair_id == "A3" else p for p in PAIRS]
    got = {v.pair_id: v for v in separation.encoder_pairs(unswapped, PlantedTower(POOLED, LAST, MIDDLE), params)}
    assert got["A3"].probe_right is False
    assert separation.answer_labels(PAIRS[5]) is None  # no answers


def test_knn_probe_gives_the_same_verdicts_here(params):
    """1-NN by cosine: A1's images are nearest to A2's (cos 1, labels agree); A4's (e2) have every cosine 0 and take
    the first training row's label (A1's image a: 1, wrong for 0); A5's lean to e3 (cos .958 with e1) finds A1's."""
    got = verdicts(PlantedTower(POOLED, LAST, MIDDLE), dataclasses.replace(params, probe="knn"))
    assert {k: v.probe_right for k, v in got.items()} == {
        "A1": True, "A2": True, "A3": True, "A4": False, "A5": False, "C1": None, "B1": None, "B2": None}


def test_without_patch_tokens_or_text_tower_pooled_cosine_stands_in(params):
    """B1: 1 - 1/sqrt(2) = .29 >= .1 separates; B2: 1 - .995 = .005 does not; no text tower: no statements."""
    got = verdicts(PlantedTower(POOLED, None, None, None), params)
    assert got["B1"].patch_separability_last is None and got["B1"].patch_separability_middle is None
    assert (got["B1"].separates, got["B1"].separates_by) == (True, BY_PATCH)
    assert (got["B2"].separates, got["B2"].separates_by) == (False, BY_PATCH)
    assert all(v.statement_forward is None and v.statement_reverse is None for v in got.values())
    assert got["A1"].probe_right is True  # the probe reads pooled features only


def test_min_train_pairs_moves_a_pattern_to_the_patch_rule(params):
    got = verdicts(PlantedTower(POOLED, LAST, MIDDLE), dataclasses.replace(params, probe_min_train_pairs=5))
    assert {(v.probe_right, v.separates_by) for k, v in got.items()} == {(None, BY_PATCH)}
    assert got["A1"].separates is True  # patch separability .4 >= .1
    assert got["A1"].probe_train_pairs == 4


def test_one_image_per_call_still_keeps_pairs_whole(params):
    tower = PlantedTower(POOLED, LAST, MIDDLE)
    separation.encoder_pairs(PAIRS, tower, dataclasses.replace(params, batch_size=1))
    assert [len(c) for c in tower.calls] == [2] * 8


def test_linear_probe_matches_a_direct_minimisation():
    """The span-of-rows Newton solution equals scipy's minimisation of the same objective over w."""
    from scipy.optimize import minimize

    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 30))  # fewer rows than dimensions, as in a pattern's fold
    y = np.where(rng.random(12) < 0.5, -1.0, 1.0)
    for l2 in (0.1, 1.0, 10.0):
        w = separation.fit_linear_probe(x, y, l2)

        def objective(v, l2=l2):
            return np.logaddexp(0, -y * (x @ v)).sum() + 0.5 * l2 * v @ v

        def gradient(v, l2=l2):
            return -(x * (y * (1 - 1 / (1 + np.exp(-y * (x @ v)))))[:, None]).sum(axis=0) + l2 * v

        oracle = minimize(objective, np.zeros(30), jac=gradient, method="BFGS", options={"gtol": 1e-10}).x
        np.testing.assert_allclose(w, oracle, atol=1e-5)
    separable = np.array([[1.0, 0.0], [-1.0, 0.0]])  # separable data: the L2 term keeps the weights finite
    w = separation.fit_linear_probe(separable, np.array([1.0, -1.0]), 1e-3)
    assert np.all(np.isfinite(w)) and w[0] > 0 and w[1] == 0


def test_patch_separability_by_hand():
    a = np.stack([E[0], E[1], np.zeros(4)])
    b = np.stack([E[0], -E[1], E[2]])
    assert separation.patch_separability(a, b) == pytest.approx((0 + 2 + 1) / 3)  # a zero token: cosine 0


def test_params_come_from_params_yaml():
    assert isinstance(demo_params("diagnose.encoders"), EncoderDiagnosticsParams)


# The chance control. A pattern of N pairs whose images differ along a planted direction d_k per pair: image a
# leans to +d_k, image b to -d_k, so the probe's feature of image a is a positive multiple of d_k.
N = 12
DIM = 16
E_AXIS = np.eye(DIM)[1]
SHAPES = patterns.PAPER_NAMES[2]


def planted_pattern(directions, answers, pattern=PROBED, prefix="P"):
    """Pairs and a tower whose pair k differs along directions[k] and whose answers are answers[k]."""
    pooled, pairs = {}, []
    for k, (d, answer) in enumerate(zip(directions, answers)):
        pair_id = f"{prefix}{k}"
        base = np.zeros(DIM)
        base[0] = 1.0
        pooled[f"{pair_id}a".encode()] = unit(base + 0.5 * unit(d))
        pooled[f"{pair_id}b".encode()] = unit(base - 0.5 * unit(d))
        pairs.append(pair(pair_id, pattern, answer))
    return pairs, pooled


def random_directions(seed, n=N):
    """Directions with nothing to do with any answer: normal vectors orthogonal to the shared axis e0."""
    d = np.random.default_rng(seed).normal(size=(n, DIM))
    d[:, 0] = 0.0
    return list(d)


def run_pattern(pairs, pooled, params):
    return separation.encoder_pairs(pairs, PlantedTower(pooled, None, None), params)


@pytest.mark.parametrize("probe", ["linear", "knn"])
def test_answers_in_member_order_never_separate(params, probe):
    """Every first image answers (a): the labels say "first image" only. Shuffling whole pairs' labels across the
    pairs changes nothing, so every round scores what the probe scored: chance = the accuracy, p = (1 + 20) / 21 = 1,
    and no pair separates, although the leave-one-pair-out probe calls some pairs right by luck."""
    params = dataclasses.replace(params, probe=probe)
    pairs, pooled = planted_pattern(random_directions(1), [("(a)", "(b)")] * N)
    got = run_pattern(pairs, pooled, params)
    accuracy = sum(bool(v.probe_right) for v in got) / N
    assert 0 < accuracy < 1  # the old verdict: a coin flip per pair
    for v in got:
        assert (v.probe_pattern_accuracy, v.probe_chance, v.probe_p_value) == pytest.approx((accuracy, accuracy, 1.0))
        assert (v.probe_train_pairs, v.separates, v.separates_by) == (N - 1, False, BY_PROBE)


def test_answers_the_features_do_not_carry_rarely_beat_chance(params):
    """Random directions, answers drawn at random per pair: the permutation test keeps a pattern's chance of
    passing at most probe_max_p = .05. Over 40 such patterns of 12 pairs (seeded), 248 of the 480 pairs are
    probe-right (the old verdict: a coin flip each), and no pattern beats chance (2 expected at most): none separates.
    The bound below allows 4 patterns (binomial(40, .05) exceeds 4 with probability .05)."""
    rng = np.random.default_rng(7)
    right = separating = beating = 0
    for s in range(40):
        answers = [("(a)", "(b)") if rng.random() < 0.5 else ("(b)", "(a)") for _ in range(N)]
        got = run_pattern(*planted_pattern(random_directions(100 + s), answers, pattern=f"random {s}"), params)
        right += sum(bool(v.probe_right) for v in got)
        separating += sum(v.separates for v in got)
        beating += got[0].probe_p_value <= params.probe_max_p
    assert right == 248 and 0.4 < right / (40 * N) < 0.6
    assert beating <= 4 and separating <= 4 * N


def test_planted_answers_beat_chance_and_the_right_pairs_separate(params):
    """16 pairs: pair k differs along -e1 or +e1 (alternating, plus noise of length .2 elsewhere) and its first
    image's answer is written option 1 exactly when it leans to +e1, except P0 (linear probe), whose answers
    contradict the rule. Leave one pair out: the other pairs teach e1 → option 1, so P1..P15 are right and P0 wrong:
    15 / 16 (knn, no contradiction: 16 / 16, each image's nearest neighbour leans its way). A seeded shuffle of the
    labels would have to keep the rule (or flip it: the probe has no intercept) at all but one pair; none of the 20
    does, so p = 1 / 21, the least 20 rounds can give. Shuffled labels agree with the rule at about half the pairs, and
    the probe follows the majority or the flipped rule: chance a little above 1 / 2, well below the accuracy."""
    n = 16
    signs = [1.0 if k % 2 else -1.0 for k in range(n)]
    directions = [s * E_AXIS + 0.2 * unit(d) for s, d in zip(signs, random_directions(3, n))]
    answers = [("(b)", "(a)") if s > 0 else ("(a)", "(b)") for s in signs]
    for probe, contradicting in (("linear", True), ("knn", False)):
        planted = [a[::-1] if k == 0 and contradicting else a for k, a in enumerate(answers)]
        got = run_pattern(*planted_pattern(directions, planted), dataclasses.replace(params, probe=probe))
        expected = [not contradicting] + [True] * (n - 1)
        assert [v.probe_right for v in got] == expected
        assert [v.separates for v in got] == expected
        assert {v.separates_by for v in got} == {BY_PROBE}
        assert got[0].probe_pattern_accuracy == pytest.approx(sum(expected) / n)
        assert got[0].probe_p_value == pytest.approx(1 / 21)
        assert 0.4 < got[0].probe_chance < 0.7



def test_p_value_by_hand():
    assert separation.permutation_p_value(0.6, [0.4, 0.6, 0.8, 0.2]) == pytest.approx((1 + 2) / (1 + 4))
    assert separation.permutation_p_value(1.0, [0.5] * 20) == pytest.approx(1 / 21)
    assert separation.permutation_p_value(0.0, [0.5, 0.0, 1.0]) == pytest.approx(1.0)


def test_the_chance_control_is_seeded_and_each_pattern_keeps_its_own_shuffles(params):
    """The same seed gives the same records; another seed other shuffles; a pattern's figures do not depend on the
    other patterns of the run."""
    rng = np.random.default_rng(11)
    answers = [("(a)", "(b)") if rng.random() < 0.5 else ("(b)", "(a)") for _ in range(N)]
    pairs, pooled = planted_pattern(random_directions(5), answers)
    first = run_pattern(pairs, pooled, params)
    assert run_pattern(pairs, pooled, params) == first
    chances = {run_pattern(pairs, pooled, dataclasses.replace(params, seed=seed))[0].probe_chance for seed in range(4)}
    assert len(chances) > 1
    other_pairs, other_pooled = planted_pattern(random_directions(6), answers, pattern=SHAPES, prefix="Q")
    both = run_pattern(other_pairs + pairs, {**other_pooled, **pooled}, params)
    assert [v for v in both if v.pattern == PROBED] == first


def test_too_few_permutations_for_probe_max_p_is_a_params_error(params):
    """20 rounds can give p = 1 / 21 <= .05; 10 rounds never go below 1 / 11: no probe could beat chance."""
    with pytest.raises(ParamsError, match=r"probe_permutations' is 10: .* at least 19"):
        dataclasses.replace(params, probe_permutations=10)
    assert dataclasses.replace(params, probe_permutations=19).probe_permutations == 19
    loaded = {**section("diagnose.encoders"), "probe_permutations": 4, "probe_max_p": 0.1}
    with pytest.raises(ParamsError, match=r"probe_permutations' is 4: .*above probe_max_p 0.1.* at least 9"):
        build(EncoderDiagnosticsParams, loaded, where="diagnose.encoders")
