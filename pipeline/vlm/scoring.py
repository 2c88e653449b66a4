"""Scoring arithmetic for the benchmark: answer extraction, question and pair accuracy, per pattern.

Pure functions over plain data so every number can be checked by hand:

* A vision-language model's reply becomes "(a)", "(b)" or None (unanswered: counted, and
  scored wrong) by `extract_answer`, by these rules, in order (case never matters):

  1. A letter in parentheses anywhere ("(b)", "( B )", "I think it's (b) Red"): one distinct
     letter is the answer; both letters ("(a) Blue (b) Red") are unanswered.
  2. Otherwise a marked letter: after "option" or "choice" (a ":" or "-" may follow) either
     letter as a word of its own ("Option A is correct", "choice b"); at the start of the reply
     or after "answer" or "answer is", "b" counts as a word of its own ("b", "B red", "The
     answer is B."), "a" only when the reply ends there or ")", ".", ":", ",", ";" follows ("A",
     "a) Blue", "A. Blue", "Answer: a"). There "A" or "An" followed by a word is the English
     article, not a letter ("A red square.", "An apple", "The answer is a red one"): rule 4 reads it.
  3. A letter whose following text begins with the other option's text rather than its own
     contradicts itself ("A. Red" for (a) Blue (b) Red) and is unanswered. Options are tried
     longest first, so (a) Red (b) Red and blue reads "(b) Red and blue" as (b).
  4. No letter: the options' texts as whole words, longest first (a match inside a longer
     option's match does not count): exactly one option found is the answer ("Red.",
     "It is blue."); none or both ("Blue and red") are unanswered.
* A pair scores only when both of its questions are right (MMVP's pair accuracy); chance is
  1/2 per question and 1/4 per pair.
* CLIP-family encoders follow MMVP-VLM's script: each statement of a pair is set against the
  pair's two images and is right when its own image is more similar; the pair scores when both
  statements are right. The reverse direction (each image against the two statements) and
  both directions together are reported beside it.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.core.patterns import ANSWERS

CHANCE_QUESTION = 0.5
CLIP_TEXT = "a photo of {statement}"  # MMVP-VLM's text prompt for a statement
CHANCE_PAIR = 0.25

_LETTERS = "".join(a.strip("()") for a in ANSWERS)  # ANSWERS[k] is the option written "(<_LETTERS[k]>)"
_A, _B = _LETTERS[0], _LETTERS[1]
_PAREN = re.compile(rf"\(\s*([{_LETTERS}])\s*\)", re.IGNORECASE)
# At the start or after "answer (is)": "b" as a word of its own; "a" only before the end or ) . : , ;
# (otherwise it is the English article). After "option"/"choice" either letter as a word of its own.
_MARKED = re.compile(
    rf"\b(?:option|choice)\s*[:\-]?\s*([{_LETTERS}])\b"
    rf"|(?:^\s*|\banswer(?:\s+is)?\s*[:\-]?\s*)(?:({_B})\b|({_A})(?=\s*$|\s*[).:,;]))",
    re.IGNORECASE,
)


def extract_answer(reply: str, options: Sequence[str]) -> str | None:
    """The option a reply chose: "(a)", "(b)", or None when it names neither, both, or contradicts itself.

    The rules are stated in this module's docstring.
    """
    text = reply.strip()
    marks = [(m[1].lower(), m.end()) for m in _PAREN.finditer(text)]
    if not marks:
        marks = [((m[1] or m[2] or m[3]).lower(), m.end()) for m in _MARKED.finditer(text)]
    if marks:
        letters = {letter for letter, _ in marks}
        if len(letters) != 1:
            return None
        letter, end = marks[0]
        chosen = _LETTERS.index(letter)
        follows = _options_in(text[end:].lstrip(" \t.:)-,;").lower(), options, at_start=True)
        if follows and follows[0] != chosen:
            return None
        return ANSWERS[chosen]
    found = _options_in(text.lower(), options, at_start=False)
    return ANSWERS[found[0]] if len(found) == 1 else None


def _options_in(text: str, options: Sequence[str], at_start: bool) -> list[int]:
    """Indices of the options whose text occurs in `text` as whole words, longest option first.

    A match inside a longer option's match does not count; `at_start` looks only at the start of `text`.
    """
    found = []
    for k in sorted(range(len(options)), key=lambda k: -len(options[k].strip())):
        phrase = options[k].strip().lower()
        if not phrase:
            continue
        pattern = re.compile(("^" if at_start else r"(?<!\w)") + re.escape(phrase) + r"(?!\w)")
        if pattern.search(text):
            found.append(k)
            if at_start:
                break
            text = pattern.sub(" ", text)
    return found


@dataclass(frozen=True)
class QuestionResult:
    """One question (one image of a pair) answered by a model."""

    pair_id: str
    member: str
    pattern: str
    expected: str
    predicted: str | None

    @property
    def correct(self) -> bool:
        """Whether the model chose the right option (unanswered is wrong)."""
        return self.predicted == self.expected


def _rate(right: int, total: int) -> float | None:
    return round(right / total, 4) if total else None


def score_questions(results: Iterable[QuestionResult]) -> dict[str, Any]:
    """Question and pair accuracy, overall and per pattern, with chance stated."""
    by_pair: dict[str, list[QuestionResult]] = defaultdict(list)
    for r in results:
        by_pair[r.pair_id].append(r)
    per_pattern: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    totals: dict[str, int] = defaultdict(int)
    for pair in by_pair.values():
        if len(pair) != 2:
            raise ValueError(f"pair {pair[0].pair_id} has {len(pair)} answered questions, expected 2")
        counts = per_pattern[pair[0].pattern]
        for bucket in (counts, totals):
            bucket["pairs"] += 1
            bucket["pairs_right"] += all(r.correct for r in pair)
            bucket["questions"] += 2
            bucket["questions_right"] += sum(r.correct for r in pair)
            bucket["unanswered"] += sum(r.predicted is None for r in pair)
    return {
        "question_accuracy": _rate(totals["questions_right"], totals["questions"]),
        "pair_accuracy": _rate(totals["pairs_right"], totals["pairs"]),
        "chance": {"question": CHANCE_QUESTION, "pair": CHANCE_PAIR},
        "counts": dict(totals),
        "per_pattern": {
            p: {"question_accuracy": _rate(c["questions_right"], c["questions"]),
                "pair_accuracy": _rate(c["pairs_right"], c["pairs"]), **c}
            for p, c in sorted(per_pattern.items())
        },
    }


@dataclass(frozen=True)
class PairSimilarity:
    """Cosine similarities of a pair: sim[i][j] = image i against statement j."""

    pair_id: str
    pattern: str
    sim: tuple[tuple[float, float], tuple[float, float]]


def clip_pair_outcome(sim: Sequence[Sequence[float]]) -> dict[str, bool | int]:
    """Image→statement and statement→image correctness of one pair (ties are wrong)."""
    image_to_text = (sim[0][0] > sim[0][1], sim[1][1] > sim[1][0])
    text_to_image = (sim[0][0] > sim[1][0], sim[1][1] > sim[0][1])
    return {
        "image_to_text": all(image_to_text),
        "text_to_image": all(text_to_image),
        "both": all(image_to_text) and all(text_to_image),
        "images_right": sum(image_to_text),
        "statements_right": sum(text_to_image),
    }


def score_clip(pairs: Iterable[PairSimilarity], pairs_without_statements: Mapping[str, int]) -> dict[str, Any]:
    """MMVP-VLM pair accuracy (statement→image), the reverse direction and both, per pattern."""
    per_pattern: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    totals: dict[str, int] = defaultdict(int)
    for pair in pairs:
        outcome = clip_pair_outcome(pair.sim)
        for bucket in (per_pattern[pair.pattern], totals):
            bucket["pairs"] += 1
            bucket["image_to_text_right"] += outcome["image_to_text"]
            bucket["text_to_image_right"] += outcome["text_to_image"]
            bucket["both_right"] += outcome["both"]

    def rates(c: Mapping[str, int]) -> dict[str, Any]:
        return {
            "pair_accuracy": _rate(c.get("text_to_image_right", 0), c.get("pairs", 0)),
            "pair_accuracy_image_to_text": _rate(c.get("image_to_text_right", 0), c.get("pairs", 0)),
            "pair_accuracy_both": _rate(c.get("both_right", 0), c.get("pairs", 0)),
            **c,
        }

    return {
        **rates(totals),
        "chance": {"pair": CHANCE_PAIR, "pair_both": 1 / 16},
        "pairs_without_statements": sum(pairs_without_statements.values()),
        "per_pattern": {
            p: {**rates(per_pattern.get(p, {})), "pairs_without_statements": pairs_without_statements.get(p, 0)}
            for p in sorted(set(per_pattern) | set(pairs_without_statements))
        },
    }
