"""The records of the diagnostics, and the four tables they ship as (a release configuration each).

Defined here only; every diagnostic module fills these records, the diagnose stage writes the
tables, `package` copies them into the release (`load_dataset(folder, name=...)`), the card and
the Croissant file describe them, and `evaluate` reports them.

* `diagnostics` (one row per question, i.e. per item): the text-side audit (`TextBias`) and the
  option order the release gave the pair.
* `encoders` (one row per pair and encoder): can the encoder tell the two images apart
  (`EncoderPair`).
* `models` (one row per model and question): the model's answers under every condition, summed up
  (`ModelQuestion`), with the pair's encoder-vs-VLM bucket per encoder.
* `predictions` (one row per model call): every answer a model gave (`Prediction`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from typing import Any

import pyarrow as pa

# Conditions a question is asked under (closed set): the real image, no image at all, a blank image of the same
# size (the gate's trials), the image's tiles permuted (g x g grid, seed), the visual tokens permuted (seed).
IMAGE = "image"
NO_IMAGE = "no_image"
BLANK = "blank"
PIXEL_SHUFFLE = "pixel_shuffle"
TOKEN_SHUFFLE = "token_shuffle"
CONDITIONS = (IMAGE, NO_IMAGE, BLANK, PIXEL_SHUFFLE, TOKEN_SHUFFLE)

# The encoder-vs-VLM 2x2 (closed set): {encoder separates the pair, cannot} x {VLM pair-right, pair-wrong}.
SEEN_AND_ANSWERED = "seen_and_answered"  # encoder separates, VLM right
HIDDEN_IN_PLAIN_SIGHT = "hidden_in_plain_sight"  # encoder separates, VLM wrong: the language side failed
ANSWERED_BLIND = "answered_without_encoder"  # encoder cannot, VLM right
ENCODER_BLIND = "encoder_blind"  # encoder cannot, VLM wrong
BUCKETS = (SEEN_AND_ANSWERED, HIDDEN_IN_PLAIN_SIGHT, ANSWERED_BLIND, ENCODER_BLIND)


def bucket(separates: bool, pair_right: bool) -> str:
    """The 2x2 cell of one pair for one encoder and one VLM."""
    if separates:
        return SEEN_AND_ANSWERED if pair_right else HIDDEN_IN_PLAIN_SIGHT
    return ANSWERED_BLIND if pair_right else ENCODER_BLIND


# How an encoder was judged to separate a pair (closed set): its leave-one-pair-out probe answered both images
# right and the pattern's probe beat chance (`diagnose.encoders.probe_max_p`), or (too few training pairs in the
# pattern for a probe) its patch separability reached `diagnose.encoders.separable_min`.
BY_PROBE = "probe"
BY_PATCH = "patch"
SEPARATES_BY = (BY_PROBE, BY_PATCH)


@dataclass(frozen=True)
class Prediction:
    """One model call: what the model answered for one question under one condition."""

    model: str
    item_id: str
    pair_id: str
    member: str  # "a" | "b" (release.MEMBERS)
    condition: str  # CONDITIONS
    grid: int | None  # pixel_shuffle: tiles per side; else None
    seed: int | None  # pixel_shuffle / token_shuffle: the permutation's seed; else None
    reply: str  # the model's text
    answer: str | None  # "(a)" | "(b)" | None (unanswered), by scoring.extract_answer
    correct: bool


@dataclass(frozen=True)
class EncoderPair:
    """Can one encoder tell one pair's images apart."""

    encoder: str  # the encoder's name (model and weights)
    pair_id: str
    pattern: str
    pooled_cosine: float  # cosine of the two images' pooled embeddings
    patch_separability_last: float | None  # mean over aligned patch tokens of 1 - cosine, last layer (None: no patch tokens)
    patch_separability_middle: float | None  # the same at the middle layer
    statement_forward: bool | None  # MMVP-VLM: each statement closer to its own image (None: no text tower or statements)
    statement_reverse: bool | None  # each image closer to its own statement
    probe_right: bool | None  # the leave-one-pair-out probe answered both images right (None: too few training pairs)
    probe_train_pairs: int  # pairs of the same pattern the probe was trained on
    # the pattern's probe against chance (the same on every pair of the pattern; None: the pattern has no probe)
    probe_pattern_accuracy: float | None  # share of the pattern's probed pairs that are probe-right
    probe_chance: float | None  # the same share with whole pairs' labels shuffled across the pattern, mean of the rounds
    probe_p_value: float | None  # (1 + rounds at or above probe_pattern_accuracy) / (1 + rounds)
    separates: bool
    separates_by: str  # SEPARATES_BY


@dataclass(frozen=True)
class TextBias:
    """The text-only audit of one question: how well text alone predicts its right answer."""

    item_id: str
    pair_id: str
    member: str
    pattern: str
    options_swapped: bool  # the release reversed the written option order of this pair (package.option_order_seed)
    text_bias: float | None  # out-of-fold P(right answer) from text-only features (None: too few pairs for k folds)
    text_bias_flagged: bool  # text_bias > diagnose.text_bias.threshold: listed for review, never dropped


@dataclass(frozen=True)
class ModelQuestion:
    """One model on one question: its answers under every condition, summed up."""

    model: str
    item_id: str
    pair_id: str
    member: str
    pattern: str
    correct: bool  # with the real image
    pair_right: bool  # both questions of the pair right with their real images
    no_image_correct: bool  # right with no image at all (leakage)
    blank_correct: bool  # right with a blank image of the same size
    bias_aligned_error: bool | None  # wrong, and the same answer as with no image (None: not wrong)
    shuffle_grids: tuple[int, ...]  # pixel shuffle, parallel lists: tiles per side
    shuffle_accuracy: tuple[float, ...]  # share of the K permutations answered right
    shuffle_flip_rate: tuple[float, ...]  # share of the K permutations whose answer differs from the unshuffled one
    shuffle_pair_right_rate: tuple[float, ...]  # share of the K seeds at which both questions of the pair are right
    token_shuffle_accuracy: float | None  # token shuffle (local transformers VLMs; None: not run)
    token_shuffle_flip_rate: float | None
    token_shuffle_pair_right_rate: float | None
    global_cue: bool | None  # pair stays right at every grid >= global_cue_min_grid (None: no such grid run)
    bucket_encoders: tuple[str, ...]  # parallel lists: the 2x2 cell of the pair per encoder (BUCKETS)
    buckets: tuple[str, ...]


def _arrow_type(annotation: str) -> pa.DataType:
    base = annotation.replace(" | None", "")
    return {
        "str": pa.string(), "int": pa.int64(), "float": pa.float64(), "bool": pa.bool_(),
        "tuple[int, ...]": pa.list_(pa.int64()), "tuple[float, ...]": pa.list_(pa.float64()),
        "tuple[str, ...]": pa.list_(pa.string()),
    }[base]


def schema_of(record: type) -> pa.Schema:
    """The arrow schema of a record type: one column per field, in field order; `X | None` fields are nullable."""
    return pa.schema([pa.field(f.name, _arrow_type(str(f.type)), nullable="None" in str(f.type)) for f in fields(record)])


# Release configuration name → record type (its rows), in the order the card lists them.
CONFIGS: dict[str, type] = {"diagnostics": TextBias, "encoders": EncoderPair, "models": ModelQuestion, "predictions": Prediction}
SCHEMAS = {name: schema_of(record) for name, record in CONFIGS.items()}


def to_table(config: str, records: Iterable[Any]) -> pa.Table:
    """Records of one configuration as an arrow table of its schema."""
    rows = [asdict(r) for r in records]
    schema = SCHEMAS[config]
    return pa.Table.from_pylist(rows, schema=schema) if rows else schema.empty_table()


def from_table(config: str, table: pa.Table) -> list[Any]:
    """An arrow table of one configuration back as its records (lists as tuples)."""
    record = CONFIGS[config]
    out = []
    for row in table.select(SCHEMAS[config].names).to_pylist():
        out.append(record(**{k: tuple(v) if isinstance(v, list) else v for k, v in row.items()}))
    return out


def item_id(pair_id: str, member: str) -> str:
    """A question's id: its pair and the image it is about (the release's `item_id`)."""
    return f"{pair_id}-{member}"

