"""The annotation stages' closed sets: why a question is invalid (validate) or not accepted (accept).

The tables these stages hand on (annotations, question_outcomes) are defined in pipeline.core.schemas
with every other table; the nine patterns and the answer letters in pipeline.core.patterns.
"""

from __future__ import annotations

# Why a written annotation is not a valid question (validate stage).
PAIR_REJECTED = "pair_rejected"  # the writer rejected the pair instead of writing a question
STALE_PAIR = "stale_pair"  # the pair is no longer in the pairs table (re-mined away)
MISSING_QUESTION = "missing_question"
MISSING_OPTION = "missing_option"
IDENTICAL_OPTIONS = "identical_options"
FORMULA_LIKE = "formula_like"  # question, option or statement a spreadsheet would evaluate (leading = + - @, tab, CR)
UNKNOWN_PATTERN = "unknown_pattern"  # primary pattern (or a secondary tag) outside MMVP's nine
ANSWER_NOT_AN_OPTION = "answer_not_an_option"  # an answer missing or other than the two answer letters
SAME_ANSWER = "same_answer"  # MMVP's invariant: the two images' answers differ
INVALID_REASONS: tuple[str, ...] = (PAIR_REJECTED, STALE_PAIR, MISSING_QUESTION, MISSING_OPTION, IDENTICAL_OPTIONS,
                                    FORMULA_LIKE, UNKNOWN_PATTERN, ANSWER_NOT_AN_OPTION, SAME_ANSWER)
# Invalid for no mistake of the writer's (the writer rejected the pair, or re-mining dropped it): not sent back to
# the writer by `clipblind feedback`; every other invalid question is.
NOT_RETURNED: tuple[str, ...] = (PAIR_REJECTED, STALE_PAIR)

# Why a valid question is not (yet) accepted (accept stage).
AWAITING_VERIFICATION = "awaiting_verification"  # fewer verifier answers than `accept.verifiers`
AWAITING_ADJUDICATION = "awaiting_adjudication"  # a verifier disagreed; no decision in the adjudication file yet
ADJUDICATED_REJECT = "adjudicated_reject"
DUPLICATE_PAIR = "duplicate_pair"  # another accepted question already covers this pair
OUTCOME_REASONS: tuple[str, ...] = (AWAITING_VERIFICATION, AWAITING_ADJUDICATION, ADJUDICATED_REJECT, DUPLICATE_PAIR)
# The outcome reasons that leave a question pending (its pair may still be accepted).
PENDING_REASONS: tuple[str, ...] = (AWAITING_VERIFICATION, AWAITING_ADJUDICATION)
