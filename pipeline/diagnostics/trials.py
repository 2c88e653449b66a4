"""A VLM asked every question under every condition, and its answers summed up per question and per model.

* `run_trials(pairs, backend, params)`: for each question (one image of a pair) the fixed prompt
  (`backends.build_prompt`, the one evaluate uses) is asked with the real image (`IMAGE`), with no image
  (`NO_IMAGE`), with a white image of the same size (`BLANK`), with the image's tiles shuffled
  (`PIXEL_SHUFFLE`, every grid g of `diagnose.shuffle.grids`, K = `permutations` seeds) and, for a local
  transformers VLM of the LLaVA family when `token_level` is set, with its visual tokens shuffled after the
  projector (`TOKEN_SHUFFLE`, the same K seeds). Seed k of K is `seed + k`. One `Prediction` per call;
  pairs without a question or with an image missing are left out (the caller counts them).
* `model_questions(pairs, predictions, params)`: one `ModelQuestion` per model and question.
* One model's figures, overall and per pattern, are summed up from its records by
  `pipeline.diagnostics.summary.model_summary` (the card, the metrics and the evaluate report show them).
* `calls_per_question(params, token)`: what the trials cost, in model calls per question.

How replies count: `scoring.extract_answer` reads each reply; an unanswered reply (None) is wrong. A
shuffled answer flips when it differs from the answer to the unshuffled image, so an unanswered reply
flips against an answered one and not against an unanswered one. A wrong answer is bias-aligned when it
chose the same option as the model did with no image: an unanswered reply chose no option, so it is a
wrong answer that is never bias-aligned.

Rates are rounded to 4 places, as `scoring` rounds its accuracies.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from statistics import fmean

from pipeline.core.errors import ClipblindError
from pipeline.core.report import progress
from pipeline.diagnostics.records import (
    BLANK,
    IMAGE,
    NO_IMAGE,
    PIXEL_SHUFFLE,
    TOKEN_SHUFFLE,
    ModelQuestion,
    Prediction,
    item_id,
)
from pipeline.diagnostics.shuffle import ShuffleError, shuffle_tiles, token_shuffle, token_shuffle_supported
from pipeline.images.decode import DecodeError
from pipeline.params import ShuffleParams
from pipeline.release.folder import MEMBERS
from pipeline.vlm import scoring
from pipeline.vlm.backends import Backend, CachedBackend, blank_like, build_prompt
from pipeline.vlm.pairs import EvalPair

# The reply cache's name for the model with its visual tokens shuffled by one seed (CachedBackend's `variant`).
TOKEN_VARIANT = "token_shuffle:{seed}"

# A condition as one call asks it: (condition, grid, seed).
Trial = tuple[str, int | None, int | None]


class TrialError(ClipblindError, ValueError):
    """A question the trials cannot ask, or predictions that cannot be summed up."""


def calls_per_question(params: ShuffleParams, token: bool) -> int:
    """Model calls the trials make per question: image, no image, blank, K per grid, and K token shuffles if `token`."""
    return 3 + len(params.grids) * params.permutations + (params.permutations if token else 0)


def _trials(params: ShuffleParams, token: bool) -> list[Trial]:
    """Every condition one question is asked under, in the order it is asked."""
    seeds = [params.seed + k for k in range(params.permutations)]
    return ([(IMAGE, None, None), (NO_IMAGE, None, None), (BLANK, None, None)]
            + [(PIXEL_SHUFFLE, grid, seed) for grid in params.grids for seed in seeds]
            + ([(TOKEN_SHUFFLE, None, seed) for seed in seeds] if token else []))


def _usable(pair: EvalPair) -> bool:
    return (pair.question is not None and pair.options is not None and pair.answers is not None
            and all(image is not None for image in pair.images))


def _ask(backend: Backend, prompt: str, image: bytes, trial: Trial) -> str:
    """The model's reply to `prompt` about `image` under one condition."""
    condition, grid, seed = trial
    if condition == IMAGE:
        return backend.ask(prompt, image)
    if condition == NO_IMAGE:
        return backend.ask(prompt, None)
    if condition == BLANK:
        return backend.ask(prompt, blank_like(image))
    assert seed is not None
    if condition == PIXEL_SHUFFLE:
        assert grid is not None
        return backend.ask(prompt, shuffle_tiles(image, grid, seed))
    with token_shuffle(backend, seed):
        if isinstance(backend, CachedBackend):
            return backend.ask(prompt, image, variant=TOKEN_VARIANT.format(seed=seed))
        return backend.ask(prompt, image)


def run_trials(pairs: Sequence[EvalPair], backend: Backend, params: ShuffleParams) -> list[Prediction]:
    """Every usable question of `pairs` asked under every condition: one prediction per call, pair by pair."""
    trials = _trials(params, params.token_level and token_shuffle_supported(backend))
    out = []
    for pair in progress([p for p in pairs if _usable(p)], desc=f"trials {backend.name}", unit="pair"):
        assert pair.question is not None and pair.options is not None and pair.answers is not None
        prompt = build_prompt(pair.question, *pair.options)
        for index, member in enumerate(MEMBERS):
            image = pair.images[index]
            assert image is not None
            for trial in trials:
                try:
                    reply = _ask(backend, prompt, image, trial)
                except (DecodeError, ShuffleError) as err:
                    raise TrialError(f"question {item_id(pair.pair_id, member)}: {err}") from err
                answer = scoring.extract_answer(reply, pair.options)
                out.append(Prediction(model=backend.name, item_id=item_id(pair.pair_id, member), pair_id=pair.pair_id,
                                      member=member, condition=trial[0], grid=trial[1], seed=trial[2], reply=reply,
                                      answer=answer, correct=answer == pair.answers[index]))
    return out


def _partner(member: str) -> str:
    return MEMBERS[1 - MEMBERS.index(member)]


def _shuffled(own: dict[Trial, Prediction], partner: dict[Trial, Prediction], unshuffled: str | None,
              trials: Sequence[Trial]) -> tuple[float, float, float]:
    """Accuracy, flip rate and pair-right rate (both questions right with the same seed) over `trials`, unrounded."""
    answers = [own[t] for t in trials]
    accuracy = fmean(p.correct for p in answers)
    flips = fmean(p.answer != unshuffled for p in answers)
    pair_right = fmean(own[t].correct and t in partner and partner[t].correct for t in trials)
    return accuracy, flips, pair_right


def model_questions(pairs: Sequence[EvalPair], predictions: Sequence[Prediction], params: ShuffleParams) -> list[ModelQuestion]:
    """One record per model and question that has an answer with the real image, in the predictions' order.

    `global_cue`: the pair stays right for at least `global_cue_min_rate` of the seeds at every grid
    >= `global_cue_min_grid` that was run (None when none was). The 2x2 (`buckets`) is left empty.
    """
    pattern_of = {p.pair_id: p.pattern for p in pairs}
    asked: dict[tuple[str, str], dict[Trial, Prediction]] = defaultdict(dict)
    for p in predictions:
        asked[(p.model, p.item_id)][(p.condition, p.grid, p.seed)] = p
    out = []
    for (model, item), own in asked.items():
        image = own.get((IMAGE, None, None))
        if image is None:
            continue
        if image.pair_id not in pattern_of:
            raise TrialError(f"prediction for question {item} of model {model!r} names pair {image.pair_id}, which is not "
                             "among the pairs given: pass the pairs the trials ran on")
        lacking = [c for c in (NO_IMAGE, BLANK) if (c, None, None) not in own]
        if lacking:
            raise TrialError(f"model {model!r} has no {' or '.join(lacking)} answer for question {item}: "
                             "run_trials asks every condition; sum up its whole output")
        partner = asked.get((model, item_id(image.pair_id, _partner(image.member))), {})
        partner_image = partner.get((IMAGE, None, None))
        no_image = own[(NO_IMAGE, None, None)]
        grids = sorted({grid for (condition, grid, _) in own if condition == PIXEL_SHUFFLE and grid is not None})
        pixel = [_shuffled(own, partner, image.answer, sorted(t for t in own if t[0] == PIXEL_SHUFFLE and t[1] == g))
                 for g in grids]
        token_trials = sorted(t for t in own if t[0] == TOKEN_SHUFFLE)
        token = _shuffled(own, partner, image.answer, token_trials) if token_trials else None
        cue_grids = [i for i, g in enumerate(grids) if g >= params.global_cue_min_grid]
        out.append(ModelQuestion(
            model=model, item_id=item, pair_id=image.pair_id, member=image.member, pattern=pattern_of[image.pair_id],
            correct=image.correct,
            pair_right=image.correct and partner_image is not None and partner_image.correct,
            no_image_correct=no_image.correct,
            blank_correct=own[(BLANK, None, None)].correct,
            bias_aligned_error=None if image.correct else (image.answer is not None and image.answer == no_image.answer),
            shuffle_grids=tuple(grids),
            shuffle_accuracy=tuple(round(a, 4) for a, _, _ in pixel),
            shuffle_flip_rate=tuple(round(f, 4) for _, f, _ in pixel),
            shuffle_pair_right_rate=tuple(round(r, 4) for _, _, r in pixel),
            token_shuffle_accuracy=round(token[0], 4) if token else None,
            token_shuffle_flip_rate=round(token[1], 4) if token else None,
            token_shuffle_pair_right_rate=round(token[2], 4) if token else None,
            global_cue=all(pixel[i][2] >= params.global_cue_min_rate for i in cue_grids) if cue_grids else None,
            bucket_encoders=(), buckets=(),
        ))
    return out
