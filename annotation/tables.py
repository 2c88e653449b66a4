"""Tables the annotation stages hand on, registered with pipeline.schemas, and their closed sets."""

from __future__ import annotations

import pyarrow as pa

from pipeline import schemas

# MMVP's nine visual patterns, in the paper's order.
PATTERNS: tuple[str, ...] = (
    "Orientation and Direction",
    "Presence of Specific Features",
    "State and Condition",
    "Quantity and Count",
    "Positional and Relational Context",
    "Color and Appearance",
    "Structural and Physical Characteristics",
    "Text",
    "Viewpoint and Perspective",
)
OPTIONS: tuple[str, str] = ("(a)", "(b)")

# Why a written annotation is not a valid question (validate stage).
INVALID_REASONS: tuple[str, ...] = (
    "pair_rejected",  # the writer rejected the pair instead of writing a question
    "stale_pair",  # the pair is no longer in the pairs table (re-mined away)
    "missing_question",
    "missing_option",
    "identical_options",
    "unknown_pattern",  # primary pattern (or a secondary tag) outside MMVP's nine
    "answer_not_an_option",  # an answer missing or other than (a)/(b)
    "same_answer",  # MMVP's invariant: the two images' answers differ
)

# Why a valid question is not (yet) accepted (accept stage).
OUTCOME_REASONS: tuple[str, ...] = (
    "awaiting_verification",  # fewer verifier answers than `accept.verifiers`
    "awaiting_adjudication",  # a verifier disagreed; no decision in the adjudication file yet
    "adjudicated_reject",
    "duplicate_pair",  # another accepted question already covers this pair
)

ANNOTATIONS = schemas.register("annotations", pa.schema([
    pa.field("question_id", pa.string(), nullable=False),  # "<pair_id>-<writing annotation id>"
    pa.field("pair_id", pa.string(), nullable=False),
    pa.field("task_id", pa.int64(), nullable=False),
    pa.field("annotation_id", pa.int64(), nullable=False),
    pa.field("writer", pa.string(), nullable=False),
    pa.field("image_a", pa.string(), nullable=False),
    pa.field("image_b", pa.string(), nullable=False),
    pa.field("image_a_url", pa.string(), nullable=False),
    pa.field("image_b_url", pa.string(), nullable=False),
    pa.field("pattern", pa.string(), nullable=False),
    pa.field("tags", pa.list_(pa.string()), nullable=False),
    pa.field("question", pa.string(), nullable=False),  # untrusted text, stored exactly as typed
    pa.field("option_a", pa.string(), nullable=False),
    pa.field("option_b", pa.string(), nullable=False),
    pa.field("answer_a", pa.string(), nullable=False),
    pa.field("answer_b", pa.string(), nullable=False),
    pa.field("statement_a", pa.string(), nullable=True),
    pa.field("statement_b", pa.string(), nullable=True),
    pa.field("lead_time_s", pa.float64(), nullable=True),
    pa.field("valid", pa.bool_(), nullable=False),
    pa.field("reason", pa.string(), nullable=True),  # one of INVALID_REASONS when not valid
    pa.field("detail", pa.string(), nullable=True),
]))

OUTCOMES = schemas.register("question_outcomes", pa.schema([
    pa.field("question_id", pa.string(), nullable=False),
    pa.field("pair_id", pa.string(), nullable=False),
    pa.field("pattern", pa.string(), nullable=False),
    pa.field("status", pa.string(), nullable=False),  # accepted | rejected | pending
    pa.field("reason", pa.string(), nullable=True),  # INVALID_REASONS or OUTCOME_REASONS
    pa.field("verification", pa.string(), nullable=True),  # verified | adjudicated when accepted
    pa.field("verifiers", pa.list_(pa.string()), nullable=False),
    pa.field("verifier_answers_a", pa.list_(pa.string()), nullable=False),
    pa.field("verifier_answers_b", pa.list_(pa.string()), nullable=False),
]))
