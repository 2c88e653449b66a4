"""Trials with scripted models whose behaviour is known (figures computed by hand), over the local
OpenAI-compatible test server, and with the tiny random LLaVA for the token shuffle."""

from __future__ import annotations

import hashlib
import io
import json
import threading
from collections import Counter
from http.server import ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest
from PIL import Image

from pipeline.core.patterns import lookup
from pipeline.diagnostics import records
from pipeline.diagnostics.records import BLANK, IMAGE, NO_IMAGE, PIXEL_SHUFFLE, TOKEN_SHUFFLE
from pipeline.diagnostics.shuffle import shuffle_tiles, tile_permutation, token_shuffle
from pipeline.diagnostics.summary import SummaryError, model_summary
from pipeline.diagnostics.trials import (
    TOKEN_VARIANT,
    TrialError,
    calls_per_question,
    model_questions,
    run_trials,
)
from pipeline.images.decode import decode
from pipeline.params import ShuffleParams, VlmParams
from pipeline.release.folder import MEMBERS
from pipeline.vlm.backends import CachedBackend, OpenAIBackend, TransformersBackend, blank_like, build_prompt
from pipeline.vlm.pairs import EvalPair
from tests.helpers.openai_server import chat_handler
from tests.helpers.tiny_vlm import build_tiny_vlm

RED, DARK_RED, BLUE = (200, 0, 0), (20, 0, 0), (0, 0, 200)
W, H = 48, 40  # every grid used divides both sides: no crop changes a half's mean


def png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(out, format="PNG")
    return out.getvalue()


def plain(colour: tuple[int, int, int]) -> bytes:
    return png(np.full((H, W, 3), colour))


def dark_half(left: bool) -> bytes:
    """Red with one half (left or right) dark red: the mean colour is the same either way."""
    pixels = np.full((H, W, 3), RED)
    if left:
        pixels[:, : W // 2] = DARK_RED
    else:
        pixels[:, W // 2:] = DARK_RED
    return png(pixels)


COLOUR = EvalPair("pc", lookup("color").paper, "What colour is the square?", ("Red", "Blue"), ("(a)", "(b)"),
                  (plain(RED), plain(BLUE)))
SIDE = EvalPair("po", lookup("orientation").paper, "Which side is dark?", ("Left", "Right"), ("(a)", "(b)"),
                (dark_half(left=True), dark_half(left=False)))
NO_QUESTION = EvalPair("pq", lookup("color").paper, None, None, None, (plain(RED), plain(BLUE)))
ONE_IMAGE = EvalPair("pm", lookup("color").paper, "What colour?", ("Red", "Blue"), ("(a)", "(b)"), (plain(RED), None))
PAIRS = [COLOUR, NO_QUESTION, SIDE, ONE_IMAGE]


def shuffle_params(grids=(2, 4, 8), permutations=3, token_level=True, min_grid=4) -> ShuffleParams:
    return ShuffleParams(grids=tuple(grids), permutations=permutations, seed=0, token_level=token_level,
                         global_cue_min_grid=min_grid, global_cue_min_rate=0.8)


class IgnoresImages:
    """Always answers (a), whatever it is shown."""

    name = "ignores-images"

    def ask(self, prompt: str, image: bytes | None) -> str:
        return "(a)"


class MeanColour:
    """Reads only the image's mean colour: (a) when it is redder than blue, else (b); no image: no answer."""

    name = "mean-colour"

    def ask(self, prompt: str, image: bytes | None) -> str:
        if image is None:
            return "I cannot tell."
        r, _, b = np.asarray(decode(image).image, dtype=float).mean(axis=(0, 1))
        return "(a)" if r > b else "(b)"


class DarkerHalf:
    """Reads only which half is darker: (a) the left, (b) the right, no answer when they are alike."""

    name = "darker-half"

    def ask(self, prompt: str, image: bytes | None) -> str:
        if image is None:
            return "I cannot tell."
        pixels = np.asarray(decode(image).image, dtype=float)
        half = pixels.shape[1] // 2
        left, right = pixels[:, :half].sum(), pixels[:, half:].sum()
        return "(a)" if left < right else "(b)" if right < left else "I cannot tell."


def by_item(questions):
    return {q.item_id: q for q in questions}


def test_a_model_that_ignores_images(tmp_path):
    params = shuffle_params()
    model = IgnoresImages()
    predictions = run_trials(PAIRS, model, params)
    # skipped pairs (no question, an image missing) are not in the output; 2 pairs x 2 questions x (3 + 3 x 3) calls
    assert {p.pair_id for p in predictions} == {"pc", "po"}
    assert len(predictions) == 4 * calls_per_question(params, token=False) == 4 * 12
    per_item = Counter((p.item_id, p.condition) for p in predictions)
    assert per_item[("pc-a", IMAGE)] == per_item[("pc-a", NO_IMAGE)] == per_item[("pc-a", BLANK)] == 1
    assert per_item[("pc-a", PIXEL_SHUFFLE)] == 9 and per_item[("pc-a", TOKEN_SHUFFLE)] == 0  # no model code to hook
    assert {(p.grid, p.seed) for p in predictions if p.item_id == "po-b" and p.condition == PIXEL_SHUFFLE} == {
        (g, s) for g in (2, 4, 8) for s in (0, 1, 2)}
    questions = model_questions(PAIRS, predictions, params)
    assert [q.item_id for q in questions] == ["pc-a", "pc-b", "po-a", "po-b"]
    q = by_item(questions)
    # every (a) member right, every (b) member wrong with the answer it gives with no image
    assert [q[i].correct for i in ("pc-a", "pc-b", "po-a", "po-b")] == [True, False, True, False]
    assert q["pc-b"].bias_aligned_error is True and q["pc-a"].bias_aligned_error is None
    assert q["pc-a"].shuffle_grids == (2, 4, 8) and q["pc-a"].shuffle_flip_rate == (0.0, 0.0, 0.0)
    assert q["pc-a"].shuffle_accuracy == (1.0, 1.0, 1.0) and q["pc-b"].shuffle_accuracy == (0.0, 0.0, 0.0)
    assert q["pc-a"].shuffle_pair_right_rate == (0.0, 0.0, 0.0) and q["pc-a"].global_cue is False
    assert q["pc-a"].token_shuffle_accuracy is None and q["pc-a"].buckets == ()

    s = model_summary(questions)
    # MMVP pairs have one (a) and one (b) answer, so a model blind to images scores 1/2 per question, 0 per pair,
    # the same with no image and a blank one: no gain, no leakage beyond chance (0.5 - 0.5); every right answer is
    # one it also gives blind, every wrong one is its no-image answer; shuffles change nothing.
    assert {k: s[k] for k in ("questions", "pairs", "accuracy", "pair_accuracy", "no_image_accuracy", "blank_accuracy",
                              "gain", "leakage", "prior_share", "bias_aligned_error_rate", "token_shuffle",
                              "global_cue_pairs")} == {
        "questions": 4, "pairs": 2, "accuracy": 0.5, "pair_accuracy": 0.0, "no_image_accuracy": 0.5,
        "blank_accuracy": 0.5, "gain": 0.0, "leakage": 0.0, "prior_share": 1.0, "bias_aligned_error_rate": 1.0,
        "token_shuffle": None, "global_cue_pairs": 0}
    assert s["pixel_shuffle"] == [{"grid": g, "accuracy": 0.5, "flip_rate": 0.0, "pair_right_rate": 0.0} for g in (2, 4, 8)]


def test_a_model_that_reads_only_the_mean_colour():
    params = shuffle_params()
    questions = model_questions(PAIRS, run_trials(PAIRS, MeanColour(), params), params)
    q = by_item(questions)
    # colour: red image (a), blue image (b), at every grid and seed (tiles keep the mean): global cue
    assert q["pc-a"].shuffle_accuracy == q["pc-b"].shuffle_accuracy == (1.0, 1.0, 1.0)
    assert q["pc-a"].shuffle_flip_rate == (0.0, 0.0, 0.0) and q["pc-a"].shuffle_pair_right_rate == (1.0, 1.0, 1.0)
    assert q["pc-a"].global_cue is True and q["pc-a"].pair_right
    # orientation: both images equally red, so (a) for both: a right, b wrong, the pair never right
    assert (q["po-a"].correct, q["po-b"].correct, q["po-a"].pair_right) == (True, False, False)
    assert q["po-a"].global_cue is False and q["po-b"].shuffle_pair_right_rate == (0.0, 0.0, 0.0)
    # wrong with (a), but with no image it answers nothing: not bias-aligned
    assert q["po-b"].bias_aligned_error is False and not q["po-b"].no_image_correct

    s = model_summary(questions)
    # right: pc-a, pc-b, po-a (3/4); pairs right: pc (1/2); no image: nothing answered (0/4); blank (white, not
    # redder than blue: (b)): pc-b and po-b right (2/4); gain 0.75 - 0; leakage 0 - 0.5; none of the 3 right
    # answers is right blind; the one wrong answer (po-b) is not its no-image answer
    assert {k: s[k] for k in ("questions", "pairs", "accuracy", "pair_accuracy", "no_image_accuracy", "blank_accuracy",
                              "gain", "leakage", "prior_share", "bias_aligned_error_rate", "global_cue_pairs")} == {
        "questions": 4, "pairs": 2, "accuracy": 0.75, "pair_accuracy": 0.5, "no_image_accuracy": 0.0,
        "blank_accuracy": 0.5, "gain": 0.75, "leakage": -0.5, "prior_share": 0.0, "bias_aligned_error_rate": 0.0,
        "global_cue_pairs": 1}
    assert s["pixel_shuffle"] == [{"grid": g, "accuracy": 0.75, "flip_rate": 0.0, "pair_right_rate": 0.5} for g in (2, 4, 8)]
    colour, side = s["per_pattern"][COLOUR.pattern], s["per_pattern"][SIDE.pattern]
    assert colour == {"questions": 2, "accuracy": 1.0, "pair_accuracy": 1.0, "no_image_accuracy": 0.0,
                      "blank_accuracy": 0.5, "token_shuffle_accuracy": None, "global_cue_pairs": 1,
                      "pixel_shuffle": [{"grid": g, "accuracy": 1.0, "pair_right_rate": 1.0} for g in (2, 4, 8)]}
    assert side == {"questions": 2, "accuracy": 0.5, "pair_accuracy": 0.0, "no_image_accuracy": 0.0,
                    "blank_accuracy": 0.5, "token_shuffle_accuracy": None, "global_cue_pairs": 0,
                    "pixel_shuffle": [{"grid": g, "accuracy": 0.5, "pair_right_rate": 0.0} for g in (2, 4, 8)]}


def darker_half_answer(grid: int, seed: int, dark_left: bool) -> str | None:
    """What DarkerHalf answers on a half-dark image shuffled: count the dark input tiles landing in each half."""
    order = tile_permutation(grid, seed)

    def dark(tile: int) -> bool:
        return (tile % grid < grid // 2) == dark_left

    left = sum(dark(order[i]) for i in range(grid * grid) if i % grid < grid // 2)
    right = sum(dark(order[i]) for i in range(grid * grid) if i % grid >= grid // 2)
    return "(a)" if left > right else "(b)" if right > left else None


def test_a_model_that_reads_position_flips_as_the_tiles_say():
    params = shuffle_params(grids=(2, 4), permutations=5)
    q = by_item(model_questions(PAIRS, run_trials(PAIRS, DarkerHalf(), params), params))
    assert q["po-a"].correct and q["po-b"].correct and q["po-a"].pair_right
    seeds = range(5)
    for i, g in enumerate((2, 4)):
        a = [darker_half_answer(g, s, dark_left=True) for s in seeds]
        b = [darker_half_answer(g, s, dark_left=False) for s in seeds]
        assert q["po-a"].shuffle_accuracy[i] == sum(x == "(a)" for x in a) / 5
        assert q["po-b"].shuffle_accuracy[i] == sum(x == "(b)" for x in b) / 5
        assert q["po-a"].shuffle_flip_rate[i] == sum(x != "(a)" for x in a) / 5  # unanswered is a flip too
        assert q["po-a"].shuffle_pair_right_rate[i] == sum(x == "(a)" and y == "(b)" for x, y in zip(a, b)) / 5
    assert 0 < q["po-a"].shuffle_flip_rate[0] or 0 < q["po-a"].shuffle_flip_rate[1]  # the shuffle does move the dark half
    # uniform colour images: no half darker, unanswered with the image, shuffled or not (no flip) and blind:
    # wrong, but an unanswered reply chose no option, so not bias-aligned
    assert q["pc-a"].shuffle_flip_rate == (0.0, 0.0) and q["pc-a"].shuffle_accuracy == (0.0, 0.0)
    assert q["pc-a"].bias_aligned_error is False
    assert q["pc-a"].global_cue is False  # grid 4 run, pair never right


def test_global_cue_is_none_when_no_grid_reaches_the_minimum():
    params = shuffle_params(grids=(2,), permutations=2, min_grid=4)
    questions = model_questions(PAIRS, run_trials(PAIRS, MeanColour(), params), params)
    assert {q.global_cue for q in questions} == {None}
    assert model_summary(questions)["global_cue_pairs"] == 0


def test_calls_per_question_is_the_trials_cost():
    assert calls_per_question(shuffle_params(grids=(2, 4, 8), permutations=5), token=True) == 3 + 15 + 5
    assert calls_per_question(shuffle_params(grids=(2, 4, 8), permutations=5), token=False) == 18


def test_summing_up_refuses_incomplete_predictions_and_mixed_models():
    params = shuffle_params(grids=(2,), permutations=1)
    predictions = run_trials([COLOUR], MeanColour(), params)
    with pytest.raises(TrialError, match=r"no no_image answer for question pc-a.*run_trials"):
        model_questions([COLOUR], [p for p in predictions if p.condition != NO_IMAGE], params)
    with pytest.raises(TrialError, match="names pair pc, which is not among the pairs"):
        model_questions([SIDE], predictions, params)
    both = model_questions([COLOUR], predictions + run_trials([COLOUR], IgnoresImages(), params), params)
    assert {q.model for q in both} == {"mean-colour", "ignores-images"}
    with pytest.raises(SummaryError, match="one model"):
        model_summary(both)


def test_predictions_and_questions_fit_their_release_tables():
    params = shuffle_params(grids=(2,), permutations=2)
    predictions = run_trials(PAIRS, MeanColour(), params)
    questions = model_questions(PAIRS, predictions, params)
    assert records.from_table("predictions", records.to_table("predictions", predictions)) == predictions
    assert records.from_table("models", records.to_table("models", questions)) == questions


# ---------------------------------------------------------------- over HTTP: the local OpenAI-compatible server


def test_pixel_shuffles_reach_an_openai_compatible_endpoint_as_shuffle_tiles_makes_them():
    params = shuffle_params(grids=(2, 4), permutations=2)
    model = MeanColour()
    seen: list[str | None] = []

    def answer(body: dict[str, Any], prompt: str, image: bytes | None) -> str:
        seen.append(hashlib.sha256(image).hexdigest() if image is not None else None)
        return model.ask(prompt, image)

    server = ThreadingHTTPServer(("127.0.0.1", 0), chat_handler(answer))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        backend = OpenAIBackend(VlmParams(backend="openai", model="mean-colour", max_new_tokens=8, url=url,
                                          api_key_env="CLIPBLIND_TEST_KEY", timeout=10))
        predictions = run_trials([COLOUR, SIDE], backend, params)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)

    def digest(data: bytes | None) -> str | None:
        return hashlib.sha256(data).hexdigest() if data is not None else None

    expected = [digest(x) for pair in (COLOUR, SIDE) for image in pair.images if image is not None
                for x in (image, None, blank_like(image), *(shuffle_tiles(image, g, s) for g in (2, 4) for s in (0, 1)))]
    assert seen == expected
    side = SIDE.images[0]
    assert len({digest(side), digest(shuffle_tiles(side, 4, 0)), digest(shuffle_tiles(side, 4, 1))}) == 3
    scripted = run_trials([COLOUR, SIDE], model, params)
    assert [(p.item_id, p.condition, p.grid, p.seed, p.answer, p.correct) for p in predictions] == [
        (p.item_id, p.condition, p.grid, p.seed, p.answer, p.correct) for p in scripted]
    assert {p.model for p in predictions} == {backend.name}


# ---------------------------------------------------------------- token shuffle: the tiny LLaVA


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = build_tiny_vlm(tmp_path_factory.mktemp("tiny-vlm"))
    return TransformersBackend(VlmParams(backend="transformers", model=str(folder), max_new_tokens=3))


def test_token_shuffle_trials_on_the_tiny_llava(tiny):
    params = shuffle_params(grids=(2,), permutations=2)
    predictions = run_trials([SIDE], tiny, params)
    assert len(predictions) == 2 * calls_per_question(params, token=True) == 2 * 7
    token = [p for p in predictions if p.condition == TOKEN_SHUFFLE]
    assert sorted((p.item_id, p.seed, p.grid) for p in token) == [("po-a", 0, None), ("po-a", 1, None),
                                                                  ("po-b", 0, None), ("po-b", 1, None)]
    prompt = build_prompt(SIDE.question, *SIDE.options)
    for p in token:
        with token_shuffle(tiny, p.seed):
            assert p.reply == tiny.ask(prompt, SIDE.images[MEMBERS.index(p.member)])
    q = by_item(model_questions([SIDE], predictions, params))
    assert q["po-a"].token_shuffle_accuracy is not None and q["po-a"].token_shuffle_flip_rate is not None
    assert model_summary(list(q.values()))["token_shuffle"] is not None
    no_token = run_trials([SIDE], tiny, shuffle_params(grids=(2,), permutations=2, token_level=False))
    assert not [p for p in no_token if p.condition == TOKEN_SHUFFLE]


def test_a_cache_keeps_token_shuffled_replies_apart_from_plain_ones(tiny, tmp_path):
    params = shuffle_params(grids=(2,), permutations=2)
    prompt = build_prompt(SIDE.question, *SIDE.options)
    image = SIDE.images[0]
    path = tmp_path / "replies.jsonl"
    # a plain reply already cached for the real image: the shuffled model must not be answered with it
    plain_key = CachedBackend(tiny, path).key(prompt, image)
    path.write_text(json.dumps({"key": plain_key, "reply": "(b) planted"}) + "\n", encoding="utf-8")
    cached = CachedBackend(tiny, path)
    predictions = run_trials([SIDE], cached, params)
    own = [p for p in predictions if p.item_id == "po-a"]
    assert [p.reply for p in own if p.condition == IMAGE] == ["(b) planted"]
    for p in own:
        if p.condition == TOKEN_SHUFFLE:
            assert p.reply != "(b) planted"
            with token_shuffle(tiny, p.seed):
                assert p.reply == tiny.ask(prompt, image)
            assert cached.replies[cached.key(prompt, image, TOKEN_VARIANT.format(seed=p.seed))] == p.reply
    assert cached.key(prompt, image, TOKEN_VARIANT.format(seed=0)) != cached.key(prompt, image, TOKEN_VARIANT.format(seed=1))
    # a rerun asks nothing and answers the same
    again = CachedBackend(tiny, path)
    assert run_trials([SIDE], again, params) == predictions and again.calls == 0
