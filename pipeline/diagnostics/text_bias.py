"""How well text alone predicts each question's right answer: k-fold logistic models on text-only features.

In the spirit of "Benchmark designers should train on the test set" (2025): for every question, a
model trained on the other pairs' questions (folds grouped by pair, seeded) reads only text (a
hashed bag of words of the question and of each option, tagged by the option's position, the
pattern, the question's image position in its pair, the options' lengths) and gives the
out-of-fold probability of the right answer. A question above `diagnose.text_bias.threshold` is
flagged for review, never dropped.

The rule: a question's own answer never feeds its own score. Features are built without any answer
(and without statistics of the data: hashing and fixed transforms only), and the model that scores a
question never saw its pair. `permutation_score` checks the whole audit: with the answers shuffled
across pairs, text can predict nothing, so the mean score sits near 0.5.

For MMVP-style pairs (one question, the two images' answers differ) the leak to look for is answer
position: which letter the first image's answer has. `package` balances it (`release.items`).
"""

from __future__ import annotations

import dataclasses
import math
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.core import patterns
from pipeline.core.report import progress
from pipeline.diagnostics import logistic, records
from pipeline.diagnostics.records import TextBias
from pipeline.params import TextBiasParams
from pipeline.release.folder import MEMBERS
from pipeline.vlm.pairs import EvalPair

# Buckets of the hashed bag of words (question, options, pattern; each word also tagged by image position): enough
# that the rare words of a few hundred questions seldom share one (a shared bucket carries one pair's memorised
# weight to another pair's score). The dual Newton fit (`logistic.fit`) costs n x n, not d x d, so d may be large.
HASH_DIM = 2048
# L2 penalty on the weights (on the summed log-loss). Measured on 150-300 pairs of random text: at 1 (or 3) a
# random-text benchmark has 12-20 % (3-7 %) of its questions above 0.75, at 10 none (max 0.72), while a position
# leak still scores 0.99 and "the first image's answer is the longer option" 0.94. The intercept is penalised
# far less, only so that a fold of one class stays finite.
L2 = 10.0
L2_INTERCEPT = 1e-3
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class Question:
    """One question of a pair as the audit sees it: its text-only features and its right answer (kept apart)."""

    pair_id: str
    member: str
    pattern: str
    options_swapped: bool
    features: np.ndarray  # built from text and position only, never from an answer
    answer: str  # "(a)" | "(b)": the label, used only by models trained without this question's pair


def text_bias(pairs: Sequence[EvalPair], params: TextBiasParams) -> list[TextBias]:
    """Per question (two per pair with a question and answers): the out-of-fold P(right answer) from text alone.

    Pairs without a question or answers (an MMVP-VLM folder) are skipped. With fewer such pairs than
    `params.folds`, no model can be trained: every question gets text_bias None (and is not flagged).
    """
    questions = _questions(pairs)
    p_first = _out_of_fold(questions, params)
    out = []
    for q in questions:
        p = p_first.get((q.pair_id, q.member))
        score = None if p is None else (p if q.answer == patterns.ANSWERS[0] else 1.0 - p)
        out.append(TextBias(item_id=records.item_id(q.pair_id, q.member), pair_id=q.pair_id, member=q.member,
                            pattern=q.pattern, options_swapped=q.options_swapped, text_bias=score,
                            text_bias_flagged=score is not None and score > params.threshold))
    return out


def permutation_score(pairs: Sequence[EvalPair], params: TextBiasParams, rounds: int, seed: int) -> float:
    """The mean text_bias over `rounds` runs with whole pairs' answers shuffled across pairs (seeded).

    Near 0.5 when the audit leaks no answer into its own score; NaN when no question could be scored.
    """
    usable = [p for p in pairs if _usable(p)]
    rng = np.random.default_rng(seed)
    means = []
    for _ in progress(range(rounds), desc="text-bias permutations", unit="round"):
        order = rng.permutation(len(usable))
        shuffled = [dataclasses.replace(p, answers=usable[int(k)].answers) for p, k in zip(usable, order)]
        scores = [r.text_bias for r in text_bias(shuffled, params) if r.text_bias is not None]
        if scores:
            means.append(float(np.mean(scores)))
    return float(np.mean(means)) if means else math.nan


def _usable(pair: EvalPair) -> bool:
    return pair.question is not None and pair.options is not None and pair.answers is not None


def _questions(pairs: Sequence[EvalPair]) -> list[Question]:
    out = []
    for pair in pairs:
        question, options, answers = pair.question, pair.options, pair.answers
        if question is None or options is None or answers is None:
            continue
        for position, (member, answer) in enumerate(zip(MEMBERS, answers)):
            out.append(Question(pair.pair_id, member, pair.pattern, pair.options_swapped,
                                features(question, options, pair.pattern, position), answer))
    return out


def features(question: str, options: tuple[str, str], pattern: str, position: int) -> np.ndarray:
    """Text-only features of one question: no answer goes in, only its pair's text and its image's position.

    Layout: HASH_DIM hashed words (question, each option tagged by its letter, the pattern; each also
    tagged by the image position, so a linear model can tie text to the first or second image), then
    the image position (+1 first, -1 second: the answer-position leak), the log lengths of options (a)
    and (b), and the intercept.
    """
    x = np.zeros(HASH_DIM + 4)
    tokens = [f"q:{w}" for w in _words(question)]
    for letter, option in zip(patterns.ANSWERS, options):
        tokens.extend(f"{letter}:{w}" for w in _words(option))
    tokens.append(f"pattern:{pattern}")
    for token in tokens:
        for tagged in (token, f"{MEMBERS[position]}|{token}"):
            x[zlib.crc32(tagged.encode()) % HASH_DIM] = 1.0
    x[HASH_DIM] = 1.0 if position == 0 else -1.0
    x[HASH_DIM + 1] = math.log1p(len(options[0]))
    x[HASH_DIM + 2] = math.log1p(len(options[1]))
    x[HASH_DIM + 3] = 1.0  # intercept
    return x


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _folds(pair_ids: Sequence[str], folds: int, seed: int) -> dict[str, int]:
    """pair_id → fold: pairs (sorted, then shuffled by the seed) dealt round-robin, so both questions share a fold."""
    ordered = sorted(set(pair_ids))
    shuffled = np.random.default_rng(seed).permutation(len(ordered))
    return {ordered[int(k)]: rank % folds for rank, k in enumerate(shuffled)}


def _out_of_fold(questions: Sequence[Question], params: TextBiasParams) -> dict[tuple[str, str], float]:
    """(pair_id, member) → P(answer is (a)) from the model trained on the other folds; {} with too few pairs."""
    pair_ids = list(dict.fromkeys(q.pair_id for q in questions))
    if len(pair_ids) < params.folds:
        return {}
    fold_of = _folds(pair_ids, params.folds, params.seed)
    x = np.stack([q.features for q in questions])
    y = np.array([q.answer == patterns.ANSWERS[0] for q in questions], dtype=float)
    fold = np.array([fold_of[q.pair_id] for q in questions])
    penalty = np.full(x.shape[1], L2)
    penalty[-1] = L2_INTERCEPT  # the last feature is the intercept
    p = np.empty(len(questions))
    for k in range(params.folds):
        held = fold == k
        p[held] = logistic.sigmoid(x[held] @ logistic.fit(x[~held], y[~held], penalty))
    return {(q.pair_id, q.member): float(v) for q, v in zip(questions, p)}

