"""Tables the annotation stages hand on, registered with pipeline.core.schemas, and their closed sets.

The nine visual patterns and the answer letters are defined in pipeline.core.patterns; these tables
store a pattern's stable key (`Pattern.key`), never one of its display names.
"""

from __future__ import annotations

import pyarrow as pa

from pipeline.core import schemas

# Why a written annotation is not a valid question (validate stage).
INVALID_REASONS: tuple[str, ...] = (
    "pair_rejected",  # the writer rejected the pair instead of writing a question
    "stale_pair",  # the pair is no longer in the pairs table (re-mined away)
    "missing_question",
    "missing_option",
    "identical_options",
    "formula_like",  # question, option or statement a spreadsheet would evaluate (leading = + - @, tab, CR)
    "unknown_pattern",  # primary pattern (or a secondary tag) outside MMVP's nine
    "answer_not_an_option",  # an answer missing or other than the two answer letters
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
    pa.field("pattern", pa.string(), nullable=False),  # pattern key; "" when the choice is none of the nine
    pa.field("tags", pa.list_(pa.string()), nullable=False),  # pattern keys
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
    pa.field("pattern", pa.string(), nullable=False),  # pattern key (as in annotations)
    pa.field("status", pa.string(), nullable=False),  # accepted | rejected | pending
    pa.field("reason", pa.string(), nullable=True),  # INVALID_REASONS or OUTCOME_REASONS
    pa.field("verification", pa.string(), nullable=True),  # verified | adjudicated when accepted
    pa.field("verifiers", pa.list_(pa.string()), nullable=False),
    pa.field("verifier_answers_a", pa.list_(pa.string()), nullable=False),
    pa.field("verifier_answers_b", pa.list_(pa.string()), nullable=False),
]))
