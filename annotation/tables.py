"""The annotation stages' closed sets: why a question is invalid (validate) or not accepted (accept).

The tables these stages hand on (annotations, question_outcomes) are defined in pipeline.core.schemas
with every other table; the nine patterns and the answer letters in pipeline.core.patterns.
"""

from __future__ import annotations

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
