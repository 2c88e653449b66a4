"""validate: the writing snapshot → the annotations table, each row valid or rejected with a reason.

Inputs: the writing snapshot `clipblind pull` wrote (labels/writing.json), the pairs table;
params section `validate`.
Output: the annotations table (kind `annotations`): one row per submitted writing
annotation, in question_id order, the text exactly as typed, `valid` and, when not valid,
a reason from annotation.tables.INVALID_REASONS and a detail sentence. The pattern the writer
chose (Label Studio shows and stores its paper name) is stored as its stable key
(pipeline.core.patterns); text a spreadsheet would evaluate is rejected (`formula_like`) so that
the writer rephrases it, and released files hold exactly what was written.
Metrics: written = valid + invalid, invalid_by_reason, valid_per_pattern (by pattern key); accept's
metrics repeat written, valid, invalid and invalid_by_reason under the same names.
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from annotation import results
from annotation.adjudication import formula_like
from annotation.snapshot import read_snapshot
from annotation.tables import (
    ANSWER_NOT_AN_OPTION,
    FORMULA_LIKE,
    IDENTICAL_OPTIONS,
    INVALID_REASONS,
    MISSING_OPTION,
    MISSING_QUESTION,
    PAIR_REJECTED,
    SAME_ANSWER,
    STALE_PAIR,
    UNKNOWN_PATTERN,
)
from pipeline.core import patterns, schemas
from pipeline.core.config import command_params
from pipeline.core.report import progress, summary, write_headline, write_metrics
from pipeline.params import ValidateParams

STAGE = "validate"
# Counts of the written questions that metrics/accept.json repeats under the same names and values.
SHARED_COUNTS: tuple[str, ...] = ("written", "valid", "invalid", "invalid_by_reason")


# What each reason says to the writer when their question comes back to them (`clipblind feedback`);
# the check's detail sentence follows it.
MESSAGES: dict[str, str] = {
    PAIR_REJECTED: "You rejected this pair.",
    STALE_PAIR: "This pair is no longer among the mined pairs.",
    MISSING_QUESTION: "The question is empty: write one question about both images.",
    MISSING_OPTION: "An option is empty: fill in option (a) and option (b).",
    IDENTICAL_OPTIONS: "Options (a) and (b) are the same: make them two different answers.",
    FORMULA_LIKE: "A text starts like a spreadsheet formula: start it with a word or a digit.",
    UNKNOWN_PATTERN: "The pattern is not one of MMVP's nine: choose one from the list.",
    ANSWER_NOT_AN_OPTION: "An answer is missing: choose (a) or (b) for image A and for image B.",
    SAME_ANSWER: "Image A and image B have the same answer: the correct answer must differ between the two images.",
}
if set(MESSAGES) != set(INVALID_REASONS):
    raise RuntimeError(f"validate.MESSAGES must name every reason of {INVALID_REASONS}")


# Released as cells of MMVP's CSV files: none may be text a spreadsheet evaluates.
TEXT_FIELDS = ("question", "option_a", "option_b", "statement_a", "statement_b")


def pattern_key(choice: str) -> str | None:
    """The stable key of a pattern choice (any of its spellings), or None when it is none of the nine."""
    try:
        return patterns.lookup(choice).key
    except patterns.PatternError:
        return None


def check(values: dict[str, list[str]], pair_known: bool, params: ValidateParams) -> tuple[str | None, str | None]:
    """The first reason (and a detail) this written annotation is not a valid question, or (None, None)."""
    option_a, option_b = results.text(values, "option_a"), results.text(values, "option_b")
    answers = results.choice(values, "answer_a"), results.choice(values, "answer_b")
    unknown = [p for p in [results.choice(values, "pattern"), *results.choices(values, "tags")] if pattern_key(p) is None]
    formulas = [(f, results.text(values, f)) for f in TEXT_FIELDS if formula_like(results.text(values, f))]
    norm = (lambda s: " ".join(s.casefold().split())) if params.options_ignore_case else (lambda s: s)
    checks = [
        (PAIR_REJECTED, bool(results.choice(values, "reject")),
         f"the writer rejected the pair: {results.text(values, 'reject_reason') or 'no reason given'}"),
        (STALE_PAIR, not pair_known, "the pair is not in the current pairs table (re-mined away)"),
        (MISSING_QUESTION, not results.text(values, "question"), "no question was written"),
        (MISSING_OPTION, not option_a or not option_b, "option (a) or option (b) is empty"),
        (IDENTICAL_OPTIONS, norm(option_a) == norm(option_b), "options (a) and (b) are the same"),
        (FORMULA_LIKE, bool(formulas),
         "; ".join(f"{f} {t!r} starts like a spreadsheet formula (= + - @, tab or CR)" for f, t in formulas)
         + ": rephrase it so that it starts with a word or a digit (e.g. 'minus 5' for '-5')"),
        (UNKNOWN_PATTERN, bool(unknown),
         f"not one of MMVP's nine patterns: {unknown}; choose one of {list(patterns.PAPER_NAMES)}"),
        (ANSWER_NOT_AN_OPTION, any(a not in patterns.ANSWERS for a in answers),
         f"answers must be one of {list(patterns.ANSWERS)}, got {list(answers)}"),
        (SAME_ANSWER, answers[0] == answers[1], f"both images have answer {answers[0]}: the answers must differ"),
    ]
    for reason, failed, detail in checks:
        if failed:
            return reason, detail
    return None, None


def _image_id(data: dict[str, Any], member: str) -> str:
    return str(data.get(f"{member}_id") or "")


def validate(snapshot: dict[str, Any], pairs: pa.Table, params: ValidateParams) -> pa.Table:
    """One annotations-table row per submitted annotation of the writing snapshot."""
    known = set(pairs.column("pair_id").to_pylist())
    rows = []
    for task in progress(snapshot["tasks"], desc="validate", unit="task"):
        data = task["data"]
        for ann in task["annotations"]:
            values = results.fields(ann["result"])
            reason, detail = check(values, data.get("pair_id") in known and not task.get("stale"), params)
            rows.append({
                "question_id": f"{data['pair_id']}-{ann['id']}",
                "pair_id": data["pair_id"],
                "task_id": task["task_id"],
                "annotation_id": ann["id"],
                "writer": ann["annotator"],
                "image_a": _image_id(data, "image_a"),
                "image_b": _image_id(data, "image_b"),
                "image_a_url": str(data.get("image_a", "")),
                "image_b_url": str(data.get("image_b", "")),
                "pattern": pattern_key(results.choice(values, "pattern")) or "",
                "tags": sorted({k for k in map(pattern_key, results.choices(values, "tags")) if k}),
                "question": results.text(values, "question"),
                "option_a": results.text(values, "option_a"),
                "option_b": results.text(values, "option_b"),
                "answer_a": results.choice(values, "answer_a"),
                "answer_b": results.choice(values, "answer_b"),
                "statement_a": results.text(values, "statement_a") or None,
                "statement_b": results.text(values, "statement_b") or None,
                "lead_time_s": ann.get("lead_time"),
                "valid": reason is None,
                "reason": reason,
                "detail": detail,
            })
    rows.sort(key=lambda r: (r["pair_id"], r["annotation_id"]))
    return pa.Table.from_pylist(rows, schema=schemas.ANNOTATIONS)


def metrics_of(table: pa.Table) -> dict[str, Any]:
    """Counts of the annotations table: written = valid + invalid, invalid by reason, valid per pattern key."""
    rows = table.to_pylist()
    reasons = Counter(r["reason"] for r in rows if not r["valid"])
    per_pattern = Counter(r["pattern"] for r in rows if r["valid"])
    return {
        "written": len(rows),
        "valid": len(rows) - sum(reasons.values()),
        "invalid": sum(reasons.values()),
        "invalid_by_reason": {reason: reasons.get(reason, 0) for reason in INVALID_REASONS},
        "valid_per_pattern": {key: per_pattern.get(key, 0) for key in patterns.KEYS},
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: `python -m annotation.validate --snapshot S --pairs P --annotations OUT --metrics M`."""
    parser = argparse.ArgumentParser(prog="clipblind validate", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--snapshot", required=True, help="writing snapshot from `clipblind pull`")
    parser.add_argument("--pairs", required=True)
    parser.add_argument("--annotations", required=True, help="output annotations table")
    parser.add_argument("--metrics", required=True)
    parser.add_argument("--headline", help="output headline metrics JSON (what `dvc metrics show` lists: report.HEADLINES)")
    args = parser.parse_args(argv)
    params = command_params(parser, args.params, STAGE, ValidateParams)
    table = validate(read_snapshot(args.snapshot), schemas.read_table(args.pairs, "pairs"), params)
    schemas.write_table(table, args.annotations, "annotations")
    metrics = metrics_of(table)
    write_metrics(args.metrics, metrics)
    write_headline(args.headline, STAGE, metrics)
    summary(STAGE, f"{metrics['written']} written → {metrics['valid']} valid, {metrics['invalid']} invalid "
                   f"{ {k: v for k, v in metrics['invalid_by_reason'].items() if v} } → {args.annotations}")
    return 0


if __name__ == "__main__":
    from pipeline.core.errors import run_command

    raise SystemExit(run_command(main, "validate"))
