"""Can an encoder tell a pair's two images apart: the encoder's side of the encoder-vs-VLM 2x2.

`encoder_pairs(pairs, encoder, params)` gives one `records.EncoderPair` per pair that has both images
(the others are skipped; the caller counts them), from one `FeatureEncoder`:

* `pooled_cosine`: the cosine of the two images' pooled embeddings.
* `patch_separability_last` / `_middle`: the mean over spatially aligned patch tokens j of
  1 - cos(token j of image a, token j of image b), at the last and the middle layer (None when the
  encoder gives no patch tokens).
* `statement_forward` / `_reverse` (encoders with a text tower, pairs with both statements): each
  statement, as `scoring.CLIP_TEXT`, closer to its own image than to the other image (MMVP-VLM's test),
  and each image closer to its own statement than to the other statement (ties are wrong).
* the probe: leave-one-pair-out within the pair's pattern (folds grouped by pair: both images of the
  test pair are left out), predicting each image's answer. An image's feature is its pooled embedding
  minus its pair's mean (what differs within the pair); its label is the index of its answer in the
  WRITTEN option order (a release that reversed a pair's options, `options_swapped`, is undone), so a
  label means the same option text position across the pairs of a pattern. `diagnose.encoders.probe`:
  `linear` is an L2 logistic regression without intercept (the features are centred per pair),
  minimising the log-losses summed + probe_l2 / 2 * |w|^2 (`logistic.fit`, deterministic); `knn` is
  1-nearest neighbour by cosine. A score of exactly 0 (no side taken) is wrong. `probe_right`: both
  images right; `probe_train_pairs`: the pairs of the fold's training set (the pattern's other pairs with
  answers); fewer than `probe_min_train_pairs`, or the pair has no answers (MMVP-VLM folders): None.
  The two images' features are opposite, so both probes predict opposite labels for them: a pair whose
  two answers are the same option is never probe-right.
* the probe against chance, per pattern (every answered pair of a pattern trains on the same number of
  pairs, so a pattern is probed whole or not at all): `probe_pattern_accuracy`, the share of its pairs
  that are probe-right; `probe_chance`, the mean of the same share over `probe_permutations` rounds in
  which whole pairs' label pairs are shuffled across the pattern's answered pairs (seeded by
  `diagnose.encoders.seed` and the pattern's name); `probe_p_value` = (1 + rounds at or above the
  accuracy) / (1 + rounds). Where the answers carry no information the features hold, a held-out pair is
  probe-right by luck about half the time; the shuffles measure that luck. Where every pair's answers
  follow member order (the first image always option (a)) a shuffle changes nothing and p is 1: the
  probe cannot tell reading the answer from reading which image comes first. The figures sit on every
  pair of the pattern (None where the pattern has no probe).
* `separates`: where the pair has a probe verdict (`BY_PROBE`), probe-right AND the pattern's p-value at
  most `probe_max_p` (a pattern whose probe does not beat chance shows no readable signal: none of its
  pairs separates); else `patch_separability_last >= separable_min` (`BY_PATCH`); for an encoder without
  patch tokens, 1 - pooled cosine stands in for the patch separability (the same scale: 0 for identical
  images, up to 2).

Images go through the encoder in batches of at most `batch_size` images (whole pairs; one pair when
`batch_size` is 1), all pairs of the run through the same `FeatureEncoder`.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.core.patterns import ANSWERS
from pipeline.core.report import progress
from pipeline.diagnostics import logistic
from pipeline.diagnostics.features import FeatureEncoder, Features
from pipeline.diagnostics.records import BY_PATCH, BY_PROBE, EncoderPair
from pipeline.params import EncoderDiagnosticsParams
from pipeline.vlm import scoring
from pipeline.vlm.pairs import EvalPair


@dataclass(frozen=True)
class PairView:
    """One pair as an encoder sees it."""

    pooled: np.ndarray  # (2, d): the two images' pooled embeddings
    pooled_cosine: float
    patch_last: float | None
    patch_middle: float | None


def patch_separability(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over aligned patch tokens (p, d) of 1 - cosine (a zero token has cosine 0 with anything)."""
    tiny = np.finfo(np.float64).tiny
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    cosines = (a64 * b64).sum(axis=-1) / np.maximum(np.linalg.norm(a64, axis=-1) * np.linalg.norm(b64, axis=-1), tiny)
    return float(np.mean(1.0 - cosines))


def _view(features: Features, row: int) -> PairView:
    a, b = row, row + 1
    pooled = features.pooled[[a, b]].astype(np.float64)

    def separability(patches: np.ndarray | None) -> float | None:
        return None if patches is None else patch_separability(patches[a], patches[b])

    return PairView(pooled, float(pooled[0] @ pooled[1]), separability(features.patches_last),
                    separability(features.patches_middle))


def pair_views(pairs: Sequence[EvalPair], encoder: FeatureEncoder, batch_size: int) -> list[PairView]:
    """Every pair through the encoder in batches of at most `batch_size` images (whole pairs, at least one)."""
    per_batch = max(1, batch_size // 2)
    views: list[PairView] = []
    starts = range(0, len(pairs), per_batch)
    for start in progress(starts, desc=f"features {encoder.name}", total=len(starts), unit="batch"):
        chunk = pairs[start:start + per_batch]
        images = [image for pair in chunk for image in pair.images if image is not None]
        features = encoder.features(images)
        views.extend(_view(features, 2 * k) for k in range(len(chunk)))
    return views


def statement_tests(pairs: Sequence[EvalPair], views: Sequence[PairView], encoder: FeatureEncoder,
                    batch_size: int) -> list[tuple[bool | None, bool | None]]:
    """(forward, reverse) MMVP-VLM statement test per pair; (None, None) without a text tower or both statements."""
    with_statements = [i for i, pair in enumerate(pairs) if all(pair.statements)]
    texts = [scoring.CLIP_TEXT.format(statement=s) for i in with_statements for s in pairs[i].statements]
    outcomes: list[tuple[bool | None, bool | None]] = [(None, None)] * len(pairs)
    embedded: list[np.ndarray] = []
    for start in range(0, len(texts), batch_size):
        vectors = encoder.texts(texts[start:start + batch_size])
        if vectors is None:
            return outcomes
        embedded.append(np.asarray(vectors, dtype=np.float64))
    if not embedded:
        return outcomes
    statements = np.concatenate(embedded)
    for k, i in enumerate(with_statements):
        sim = views[i].pooled @ statements[2 * k:2 * k + 2].T  # sim[image][statement]
        outcome = scoring.clip_pair_outcome(sim.tolist())
        outcomes[i] = (bool(outcome["text_to_image"]), bool(outcome["image_to_text"]))
    return outcomes


def answer_labels(pair: EvalPair) -> tuple[int, int] | None:
    """Each image's answer as its option's index in the written order (a release's reversal undone); None when the
    pair has no answers, or an answer is no option letter."""
    if pair.answers is None or any(a not in ANSWERS for a in pair.answers):
        return None
    a, b = (ANSWERS.index(answer) for answer in pair.answers)
    return (1 - a, 1 - b) if pair.options_swapped else (a, b)


def fit_linear_probe(x: np.ndarray, y: np.ndarray, l2: float) -> np.ndarray:
    """The weights w minimising sum_i log(1 + exp(-y_i w.x_i)) + l2 / 2 |w|^2 (y in {-1, +1}, no intercept):
    `logistic.fit` with label 1 for y = +1."""
    return logistic.fit(x, (np.asarray(y) > 0).astype(np.float64), l2)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def probe_scores(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                 params: EncoderDiagnosticsParams) -> np.ndarray:
    """A signed score per test row: > 0 predicts label 1, < 0 label 0, 0 takes no side (y in {-1, +1})."""
    if params.probe == "linear":
        return test_x @ fit_linear_probe(train_x, train_y, params.probe_l2)
    cosines = _unit_rows(test_x) @ _unit_rows(train_x).T
    nearest = np.argmax(cosines, axis=1)  # ties: the first of the training rows
    has_side = np.linalg.norm(test_x, axis=1) > 0  # a zero feature (identical images) has no neighbour
    return np.where(has_side, train_y[nearest], 0.0)


@dataclass(frozen=True)
class ProbeVerdict:
    """The probe's verdict on one pair, and its pattern's figures against chance (None: the pattern has no probe)."""

    right: bool | None  # both images right (None: the pair has no answers, or too few training pairs)
    train_pairs: int
    pattern_accuracy: float | None
    chance: float | None
    p_value: float | None
    beats_chance: bool  # p_value <= probe_max_p


def permutation_p_value(observed: float, permuted: Sequence[float]) -> float:
    """(1 + rounds whose permuted accuracy is at least `observed`) / (1 + rounds): never 0, 1 when no round is below."""
    return (1 + sum(1 for accuracy in permuted if accuracy >= observed)) / (1 + len(permuted))


def leave_one_pair_out(centred: Sequence[np.ndarray], labels: Sequence[tuple[int, int]],
                       params: EncoderDiagnosticsParams) -> list[bool]:
    """Probe-right per pair: each pair's two images predicted by the probe trained on all the other pairs
    (pair k's images have features centred[k] and -centred[k], labels labels[k])."""
    rights = []
    for i in range(len(centred)):
        train = [j for j in range(len(centred)) if j != i]
        train_x = np.stack([sign * centred[j] for j in train for sign in (1.0, -1.0)])
        train_y = np.array([2.0 * labels[j][k] - 1.0 for j in train for k in (0, 1)])
        scores = probe_scores(train_x, train_y, np.stack([centred[i], -centred[i]]), params)
        rights.append(all((score > 0 and want == 1) or (score < 0 and want == 0)
                          for score, want in zip(scores, labels[i])))
    return rights


def pattern_rng(seed: int, pattern: str) -> np.random.Generator:
    """The label shuffles of one pattern: from the seed and the pattern's name, whatever other patterns the run has."""
    return np.random.default_rng([seed, zlib.crc32(pattern.encode("utf-8"))])


def chance_control(centred: Sequence[np.ndarray], labels: Sequence[tuple[int, int]], observed: float, pattern: str,
                   params: EncoderDiagnosticsParams) -> tuple[float, float]:
    """(chance, p): the leave-one-pair-out accuracy with whole pairs' labels shuffled across the pairs, the mean of
    `probe_permutations` seeded rounds, and the permutation p-value of `observed` against them."""
    rng = pattern_rng(params.seed, pattern)
    permuted = []
    for _ in range(params.probe_permutations):
        order = rng.permutation(len(labels))
        rights = leave_one_pair_out(centred, [labels[k] for k in order], params)
        permuted.append(sum(rights) / len(rights))
    return float(np.mean(permuted)), permutation_p_value(observed, permuted)


def probe_verdicts(pairs: Sequence[EvalPair], views: Sequence[PairView],
                   params: EncoderDiagnosticsParams) -> list[ProbeVerdict]:
    """The probe's verdict per pair: leave-one-pair-out within each pattern, folds grouped by pair, and the pattern's
    accuracy against its permutation control."""
    labels = [answer_labels(pair) for pair in pairs]
    # an image's feature: its pooled embedding minus its pair's mean, so image b's is minus image a's
    centred = [(view.pooled[0] - view.pooled[1]) / 2.0 for view in views]
    by_pattern: dict[str, list[int]] = {}
    for i, pair in enumerate(pairs):
        by_pattern.setdefault(pair.pattern, []).append(i)
    verdicts: list[ProbeVerdict] = [ProbeVerdict(None, 0, None, None, None, False)] * len(pairs)
    for pattern, members in by_pattern.items():
        known = [i for i in members if labels[i] is not None]
        known_labels = [label for i in known if (label := labels[i]) is not None]
        # every answered pair of the pattern trains on the same number of pairs: all probed, or none
        if len(known) - 1 < params.probe_min_train_pairs:
            for i in members:
                verdicts[i] = ProbeVerdict(None, len(known) - (i in known), None, None, None, False)
            continue
        known_centred = [centred[i] for i in known]
        rights = dict(zip(known, leave_one_pair_out(known_centred, known_labels, params)))
        accuracy = sum(rights.values()) / len(rights)
        chance, p_value = chance_control(known_centred, known_labels, accuracy, pattern, params)
        beats = p_value <= params.probe_max_p
        for i in members:
            verdicts[i] = ProbeVerdict(rights.get(i), len(known) - (i in rights), accuracy, chance, p_value, beats)
    return verdicts


def encoder_pairs(pairs: Sequence[EvalPair], encoder: FeatureEncoder,
                  params: EncoderDiagnosticsParams) -> list[EncoderPair]:
    """Whether `encoder` tells each pair's images apart (pairs without both images are skipped)."""
    usable = [pair for pair in pairs if all(image is not None for image in pair.images)]
    views = pair_views(usable, encoder, params.batch_size)
    statements = statement_tests(usable, views, encoder, params.batch_size)
    probes = probe_verdicts(usable, views, params)
    out = []
    for pair, view, (forward, reverse), probe in zip(usable, views, statements, probes):
        if probe.right is not None:
            # a pattern whose probe reads no more than chance shows no readable signal: no pair of it separates
            separates, by = probe.right and probe.beats_chance, BY_PROBE
        else:
            # without patch tokens, 1 - pooled cosine stands in (the same 0..2 scale)
            spread = view.patch_last if view.patch_last is not None else 1.0 - view.pooled_cosine
            separates, by = spread >= params.separable_min, BY_PATCH
        out.append(EncoderPair(
            encoder=encoder.name, pair_id=pair.pair_id, pattern=pair.pattern, pooled_cosine=view.pooled_cosine,
            patch_separability_last=view.patch_last, patch_separability_middle=view.patch_middle,
            statement_forward=forward, statement_reverse=reverse, probe_right=probe.right,
            probe_train_pairs=probe.train_pairs, probe_pattern_accuracy=probe.pattern_accuracy,
            probe_chance=probe.chance, probe_p_value=probe.p_value, separates=bool(separates), separates_by=by,
        ))
    return out
