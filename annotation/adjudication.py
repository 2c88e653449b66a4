"""The adjudication file: disputed questions with every answer, and the lead's decisions.

`accept` writes the queue (data/adjudication_queue.csv); `clipblind adjudicate` merges it
into the lead's file (labels/adjudication.csv, versioned), keeping decisions already made.
The lead sets `decision` to `accept`, `reject` or `correct` (the right answers in `answer_a` and
`answer_b`); `accept` applies the decisions on its next run. `clipblind adjudicate --correct ID`
adds (or updates) the row of any question verifiers answered, accepted ones included, so a wrong
answer found after a release is corrected through the same file.
Annotation text is untrusted: a cell that a spreadsheet would read as a formula
(`formula_like`) is written with a leading apostrophe, and read back exactly. The same rule
makes `validate` reject such text, so released files never need the guard.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pyarrow as pa

import annotation.tables  # also registers the table kinds `--correct` reads (annotations, question_outcomes)
from pipeline import schemas
from pipeline.atomic import write_bytes
from pipeline.patterns import ANSWERS

# What the lead fills in; every other column describes the question.
LEAD_COLUMNS = ("decision", "answer_a", "answer_b", "note")
COLUMNS = ("question_id", "pair_id", "pattern", "question", "option_a", "option_b", "writer",
           "writer_answer_a", "writer_answer_b", "verifier_answers_a", "verifier_answers_b", *LEAD_COLUMNS)
# Files written before the lead could correct answers lack these; they read as empty.
_ADDED_COLUMNS = ("answer_a", "answer_b")
ACCEPT, REJECT, CORRECT = "accept", "reject", "correct"
DECISIONS = (ACCEPT, REJECT, CORRECT)
# Excel, LibreOffice and Google Sheets evaluate a cell that starts with one of these (OWASP, "CSV
# Injection"); tab and carriage return start one too. Leading spaces are looked past: some
# spreadsheet imports trim them before deciding.
FORMULA_START = ("=", "+", "-", "@")
_CONTROL_START = ("\t", "\r")


def formula_like(text: str) -> bool:
    """Whether a spreadsheet opening a CSV with `text` in a cell could evaluate it as a formula."""
    return text.startswith(_CONTROL_START) or text.lstrip().startswith(FORMULA_START)


class AdjudicationError(ValueError):
    """The adjudication file cannot be read as written by this module."""


def guard(cell: str) -> str:
    """A cell value a spreadsheet shows as text, never evaluates."""
    return "'" + cell if formula_like(cell) or cell.startswith("'") else cell  # "'" too: unguarding is unambiguous


def unguard(cell: str) -> str:
    """The original value of a guarded cell."""
    inner = cell[1:]
    return inner if cell.startswith("'") and (formula_like(inner) or inner.startswith("'")) else cell


def encode(rows: list[dict[str, str]]) -> bytes:
    """CSV bytes of adjudication rows (sorted by question_id), every cell guarded."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n", quoting=csv.QUOTE_ALL)
    writer.writeheader()
    for row in sorted(rows, key=lambda r: r["question_id"]):
        writer.writerow({c: guard(str(row.get(c) or "")) for c in COLUMNS})
    return out.getvalue().encode()


def read(path: str | Path) -> list[dict[str, str]]:
    """Rows of an adjudication CSV, in file order (missing file: none)."""
    path = Path(path)
    if not path.exists():
        return []
    reader = csv.DictReader(io.StringIO(path.read_text(encoding="utf-8")))
    missing = sorted(set(COLUMNS) - set(_ADDED_COLUMNS) - set(reader.fieldnames or []))
    if missing:
        raise AdjudicationError(f"{path} lacks columns {missing}: regenerate it with `clipblind adjudicate`")
    return [{c: unguard(row.get(c) or "") for c in COLUMNS} for row in reader]


@dataclass(frozen=True)
class Decision:
    """The lead's decision on one question: accept or reject it as written, or correct its answers."""

    kind: str  # one of DECISIONS
    answers: tuple[str, str] | None = None  # (answer for image_a, for image_b) when kind is CORRECT


def _answer_problem(row: dict[str, str]) -> str | None:
    """Why a row's answer cells do not fit its decision (None when they do)."""
    given = (row["answer_a"].strip(), row["answer_b"].strip())
    if row["decision"].strip().lower() != CORRECT:
        if any(given):
            return (f"answer_a/answer_b {given[0]!r}/{given[1]!r} are set but decision is {row['decision']!r}: "
                    f"set decision to {CORRECT} to change the answers, or clear answer_a and answer_b")
        return None
    for column, value in zip(_ADDED_COLUMNS, given):
        if value not in ANSWERS:
            return f"{column} {value!r} is not one of {list(ANSWERS)}: write {' or '.join(ANSWERS)} in {column}"
    if given[0] == given[1]:
        return (f"answer_a and answer_b are both {given[0]!r}: the two images' answers must differ "
                f"(MMVP's rule); write {ANSWERS[0]} for one image and {ANSWERS[1]} for the other")
    return None


def decisions(rows: list[dict[str, str]]) -> tuple[dict[str, Decision], list[str]]:
    """question_id → the lead's decision, for rows that state one correctly; plus one message per bad row.

    Rows are numbered as a spreadsheet shows them (the header is row 1). A bad row is skipped alone.
    """
    found: dict[str, Decision] = {}
    first_row: dict[str, int] = {}
    problems = []
    for number, row in enumerate(rows, start=2):
        qid, decision = row["question_id"], row["decision"].strip().lower()
        where = f"row {number} (question {qid})"
        if qid in first_row:
            problems.append(f"{where}: the question also has row {first_row[qid]}; keep one row per question "
                            "in the adjudication file")
            found.pop(qid, None)
            continue
        first_row[qid] = number
        if not decision:
            problem = _answer_problem(row) if any(row[c].strip() for c in _ADDED_COLUMNS) else None
            if problem:
                problems.append(f"{where}: {problem}")
            continue
        if decision not in DECISIONS:
            problems.append(f"{where}: decision {row['decision']!r} is not one of {list(DECISIONS)}; "
                            "fix it in the adjudication file")
            continue
        problem = _answer_problem(row)
        if problem:
            problems.append(f"{where}: {problem}")
            continue
        answers = (row["answer_a"].strip(), row["answer_b"].strip()) if decision == CORRECT else None
        found[qid] = Decision(decision, answers)
    return found, problems


def question_row(question: dict[str, Any], verifiers: Sequence[str], answers_a: Sequence[str],
                 answers_b: Sequence[str]) -> dict[str, str]:
    """The adjudication row of an annotations-table question with its verifiers' answers (lead's cells empty)."""
    return {
        **{k: question[k] for k in ("question_id", "pair_id", "pattern", "question", "option_a", "option_b", "writer")},
        "writer_answer_a": question["answer_a"], "writer_answer_b": question["answer_b"],
        "verifier_answers_a": "; ".join(f"{v}: {a or '-'}" for v, a in zip(verifiers, answers_a)),
        "verifier_answers_b": "; ".join(f"{v}: {b or '-'}" for v, b in zip(verifiers, answers_b)),
        **{c: "" for c in LEAD_COLUMNS},
    }


def merge(queue: list[dict[str, str]], current: list[dict[str, str]]) -> list[dict[str, str]]:
    """The queue's rows with the lead's cells already in `current`; decided rows no longer queued are kept."""
    kept = {r["question_id"]: r for r in current}
    merged = {}
    for row in queue:
        old = kept.get(row["question_id"], {})
        merged[row["question_id"]] = {**row, **{c: old.get(c, "") for c in LEAD_COLUMNS}}
    for qid, row in kept.items():
        if qid not in merged and row["decision"]:
            merged[qid] = row
    return sorted(merged.values(), key=lambda r: r["question_id"])


# Outcome reasons of questions no verifier answered (as `accept.verifiers` counts): no decision applies to them.
UNANSWERED_REASONS: tuple[str, ...] = (*annotation.tables.INVALID_REASONS, "awaiting_verification")


def decidable(reason: str | None) -> bool:
    """Whether a lead's decision applies to a question with this outcome reason (verifiers answered it)."""
    return reason not in UNANSWERED_REASONS


class CorrectionError(ValueError):
    """`adjudicate --correct` names a question the lead cannot correct (or answers that cannot be right)."""


def correct(rows: list[dict[str, str]], wanted: str, answers: tuple[str, str], annotations: pa.Table,
            outcomes: pa.Table, note: str = "") -> list[dict[str, str]]:
    """`rows` with question (or accepted pair) `wanted` set to decision `correct` with `answers`.

    Any question verifiers answered can be corrected: accepted, disputed or rejected by the lead.
    """
    problem = _answer_problem({"decision": CORRECT, "answer_a": answers[0], "answer_b": answers[1]})
    if problem:
        raise CorrectionError(f"--answer-a/--answer-b: {problem}")
    outcome_rows = outcomes.to_pylist()
    by_question = {r["question_id"]: r for r in outcome_rows}
    accepted_of_pair = {r["pair_id"]: r for r in outcome_rows if r["status"] == "accepted"}
    outcome = by_question.get(wanted) or accepted_of_pair.get(wanted)
    if outcome is None:
        raise CorrectionError(f"--correct {wanted!r} is neither a question id nor an accepted pair id in the "
                              "question outcomes: copy the id from labels/adjudication.csv, "
                              "data/question_outcomes.parquet or the release's pair_id, and run `dvc repro accept` first")
    if not decidable(outcome["reason"]):
        raise CorrectionError(f"--correct {wanted!r}: question {outcome['question_id']} is {outcome['status']} "
                              f"({outcome['reason']}); only a question verifiers answered can be corrected here "
                              "(an invalid question goes back to its writer)")
    question = next(r for r in annotations.to_pylist() if r["question_id"] == outcome["question_id"])
    fresh = question_row(question, outcome["verifiers"], outcome["verifier_answers_a"], outcome["verifier_answers_b"])
    existing = {r["question_id"]: r for r in rows}
    row = {**fresh, **{c: existing.get(fresh["question_id"], {}).get(c, "") for c in LEAD_COLUMNS}}
    row.update(decision=CORRECT, answer_a=answers[0], answer_b=answers[1], note=note or row["note"])
    existing[row["question_id"]] = row
    return sorted(existing.values(), key=lambda r: r["question_id"])


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: `clipblind adjudicate [--correct ID --answer-a X --answer-b Y [--note N]] [--file ...]`."""
    parser = argparse.ArgumentParser(prog="clipblind adjudicate",
                                     description="merge new disputes into the lead's adjudication file, or correct an answer")
    parser.add_argument("--queue", default="data/adjudication_queue.csv")
    parser.add_argument("--file", default="labels/adjudication.csv")
    parser.add_argument("--correct", metavar="ID", help="question id (or accepted pair id) whose answers the lead corrects")
    parser.add_argument("--answer-a", choices=ANSWERS, help="the right answer for image_a (with --correct)")
    parser.add_argument("--answer-b", choices=ANSWERS, help="the right answer for image_b (with --correct)")
    parser.add_argument("--note", default="", help="why (with --correct)")
    parser.add_argument("--annotations", default="data/annotations.parquet", help="with --correct: the validate output")
    parser.add_argument("--outcomes", default="data/question_outcomes.parquet", help="with --correct: the accept output")
    args = parser.parse_args(argv)
    if args.correct is None and (args.answer_a or args.answer_b or args.note):
        parser.error("--answer-a, --answer-b and --note go with --correct ID")
    if args.correct is not None and not (args.answer_a and args.answer_b):
        parser.error(f"--correct {args.correct} needs both --answer-a and --answer-b (each one of {list(ANSWERS)})")
    try:
        queue, current = read(args.queue), read(args.file)
        merged = merge(queue, current)
        if args.correct is not None:
            merged = correct(merged, args.correct, (args.answer_a, args.answer_b),
                             schemas.read_table(args.annotations, "annotations"),
                             schemas.read_table(args.outcomes, "question_outcomes"), args.note)
    except (AdjudicationError, CorrectionError, FileNotFoundError, schemas.SchemaError) as err:
        print(f"[adjudicate] {err}", file=sys.stderr)
        return 2
    write_bytes(args.file, encode(merged))
    undecided = sum(1 for r in merged if not r["decision"])
    done = f"question set to correct {args.answer_a}/{args.answer_b}; " if args.correct is not None else ""
    print(f"[adjudicate] {done}{len(merged)} questions in {args.file}, {undecided} without a decision: "
          f"set decision to {ACCEPT}, {REJECT} or {CORRECT} (with answer_a and answer_b), commit, then `dvc repro`")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
