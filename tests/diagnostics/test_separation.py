"""The encoder side of the 2x2 on a stub vision tower whose features are planted per image: every figure is
worked out by hand below (unit vectors along axes e0..e3 of a 4-d space)."""

import dataclasses
import math

import numpy as np
import pytest

from pipeline.core import patterns
from pipeline.diagnostics import separation
from pipeline.diagnostics.features import Features
from pipeline.diagnostics.records import BY_PATCH, BY_PROBE
from pipeline.params import EncoderDiagnosticsParams
from pipeline.vlm import scoring
from pipeline.vlm.pairs import EvalPair
from tests.helpers.params import demo_params

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
    assert probe["A1"] == (True, 4, True, BY_PROBE)
    assert probe["A2"] == (True, 4, True, BY_PROBE)
    assert probe["A3"] == (True, 4, True, BY_PROBE)  # right only with the release's option reversal undone
    assert probe["A4"] == (False, 4, False, BY_PROBE)
    assert probe["A5"] == (False, 4, False, BY_PROBE)
    # no answers: no probe (5 answered pairs around it), the patch rule: identical images, 0 < .1
    assert probe["C1"] == (None, 5, False, BY_PATCH)
    # PATCHED: one training pair each (D1 is no training pair), fewer than 2: the last layer's patches decide
    assert probe["B1"] == (None, 1, True, BY_PATCH)  # 1.0 >= .1
    assert probe["B2"] == (None, 1, False, BY_PATCH)  # .0025 < .1

    # batched: 8 usable pairs, 2 pairs (4 images) per call
    assert [len(c) for c in tower.calls] == [4, 4, 4, 4]
    assert all(v.encoder == "planted" for v in got.values())


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
