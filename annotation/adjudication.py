"""The adjudication file: disputed questions with every answer, and the lead's decisions.

`accept` writes the queue (data/adjudication_queue.csv); `clipblind adjudicate` merges it
into the lead's file (labels/adjudication.csv, versioned), keeping decisions already made.
The lead sets `decision` to `accept`, `reject` or `correct` (the right answers in `answer_a` and
`answer_b`); `accept` applies the decisions on its next run. A statement is true of one image, so
a correction that changes the answers of a question with statements also says what they become:
new text in `statement_a` and `statement_b` (checked as the writer's is), or `drop_statements`
set to `yes` (the pair then leaves mmvp_vlm/). `clipblind adjudicate --correct ID` adds (or
updates) the row of any question verifiers answered, accepted ones included, so a wrong answer
found after a release is corrected through the same file.
Annotation text is untrusted: a cell that a spreadsheet would read as a formula
(`formula_like`) is written with a leading apostrophe, and read back exactly. The same rule
makes `validate` reject such text, so released files never need the guard.
"""

from __future__ import annotations

import argparse
import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

import annotation.tables
from pipeline.core import schemas
from pipeline.core.atomic import write_bytes
from pipeline.core.errors import ClipblindError
from pipeline.core.patterns import ANSWERS

# What the lead fills in; every other column describes the question.
ANSWER_COLUMNS = ("answer_a", "answer_b")
STATEMENT_COLUMNS = ("statement_a", "statement_b")
DROP_STATEMENTS = "drop_statements"
DROP = "yes"  # the value of `drop_statements` that drops them
LEAD_COLUMNS = ("decision", *ANSWER_COLUMNS, *STATEMENT_COLUMNS, DROP_STATEMENTS, "note")
COLUMNS = ("question_id", "pair_id", "pattern", "question", "option_a", "option_b", "writer",
           "writer_answer_a", "writer_answer_b", "writer_statement_a", "writer_statement_b",
           "verifier_answers_a", "verifier_answers_b", *LEAD_COLUMNS)
# Files written before the lead could correct answers or statements lack these; they read as empty.
_ADDED_COLUMNS = (*ANSWER_COLUMNS, "writer_statement_a", "writer_statement_b", *STATEMENT_COLUMNS, DROP_STATEMENTS)
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


class AdjudicationError(ClipblindError, ValueError):
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
    statements: tuple[str, str] | None = None  # the lead's statements (image_a, image_b) when CORRECT gives them
    drop_statements: bool = False  # CORRECT only: the question ships without statements

    def shipped_statements(self, written: tuple[str | None, str | None]) -> tuple[str | None, str | None]:
        """The statements that ship with this decision, given the writer's."""
        if self.drop_statements:
            return None, None
        return self.statements if self.statements is not None else written


def _has_statements(statements: Sequence[str | None]) -> bool:
    return any((s or "").strip() for s in statements)


def statement_problem(answers: tuple[str, str], statements: tuple[str, str], drop: bool,
                      writer_answers: tuple[str, str], writer_statements: Sequence[str | None],
                      fix: str = "fill statement_a and statement_b, or set drop_statements to yes") -> str | None:
    """Why a correction's statements cannot ship (None when they can).

    New statements are checked as the writer's are (both non-empty, none formula-like); a change
    of answers on a question with statements must say what they become (`fix` says how).
    """
    given = tuple(s.strip() for s in statements)
    if drop and any(given):
        return "statements are given and dropped at once: give statement_a and statement_b, or drop them, not both"
    if any(given):
        if not all(given):
            return f"statement_a/statement_b {given[0]!r}/{given[1]!r}: give both (one true of each image)"
        formulas = [f"{c} {t!r}" for c, t in zip(STATEMENT_COLUMNS, given) if formula_like(t)]
        if formulas:
            return (f"{'; '.join(formulas)} starts like a spreadsheet formula (= + - @, tab or CR): rephrase it so "
                    "that it starts with a word or a digit")
        return None
    if not drop and answers != writer_answers and _has_statements(writer_statements):
        return (f"the answers change from {writer_answers[0]}/{writer_answers[1]} to {answers[0]}/{answers[1]}, "
                f"so the writer's statements {[s or '' for s in writer_statements]} no longer hold for their images: "
                f"{fix}")
    return None


def _answer_problem(row: dict[str, str]) -> str | None:
    """Why a row's answer and statement cells do not fit its decision (None when they do)."""
    given = (row["answer_a"].strip(), row["answer_b"].strip())
    lead_text = [c for c in (*STATEMENT_COLUMNS, DROP_STATEMENTS) if (row.get(c) or "").strip()]
    if row["decision"].strip().lower() != CORRECT:
        if any(given):
            return (f"answer_a/answer_b {given[0]!r}/{given[1]!r} are set but decision is {row['decision']!r}: "
                    f"set decision to {CORRECT} to change the answers, or clear answer_a and answer_b")
        if lead_text:
            return (f"{'/'.join(lead_text)} set but decision is {row['decision']!r}: set decision to {CORRECT} "
                    f"(with answer_a and answer_b) to change the statements, or clear {'/'.join(lead_text)}")
        return None
    drop = (row.get(DROP_STATEMENTS) or "").strip().lower()
    if drop not in ("", DROP):
        return f"{DROP_STATEMENTS} {row[DROP_STATEMENTS]!r}: write {DROP} to drop the statements, or leave it empty"
    for column, value in zip(ANSWER_COLUMNS, given):
        if value not in ANSWERS:
            return f"{column} {value!r} is not one of {list(ANSWERS)}: write {' or '.join(ANSWERS)} in {column}"
    if given[0] == given[1]:
        return (f"answer_a and answer_b are both {given[0]!r}: the two images' answers must differ "
                f"(MMVP's rule); write {ANSWERS[0]} for one image and {ANSWERS[1]} for the other")
    return statement_problem(given, (row.get("statement_a") or "", row.get("statement_b") or ""), drop == DROP,
                             (row.get("writer_answer_a") or given[0], row.get("writer_answer_b") or given[1]),
                             (row.get("writer_statement_a"), row.get("writer_statement_b")))


def decisions(rows: list[dict[str, str]], questions: Mapping[str, Mapping[str, Any]] | None = None,
              ) -> tuple[dict[str, Decision], list[str]]:
    """question_id → the lead's decision, for rows that state one correctly; plus one message per bad row.

    Rows are numbered as a spreadsheet shows them (the header is row 1). A bad row is skipped alone.
    `questions` (question_id → annotations-table row), when given, says what the writer wrote, in
    place of the row's own copy (which an older file may lack).
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
        if questions is not None and qid in questions:
            q = questions[qid]
            row = {**row, "writer_answer_a": q["answer_a"], "writer_answer_b": q["answer_b"],
                   "writer_statement_a": q["statement_a"] or "", "writer_statement_b": q["statement_b"] or ""}
        if not decision:
            problem = _answer_problem(row) if any(row[c].strip() for c in (*ANSWER_COLUMNS, *STATEMENT_COLUMNS,
                                                                            DROP_STATEMENTS)) else None
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
        if decision == CORRECT:
            statements = (row["statement_a"].strip(), row["statement_b"].strip())
            found[qid] = Decision(decision, (row["answer_a"].strip(), row["answer_b"].strip()),
                                  statements if all(statements) else None,
                                  row[DROP_STATEMENTS].strip().lower() == DROP)
        else:
            found[qid] = Decision(decision)
    return found, problems


def question_row(question: dict[str, Any], verifiers: Sequence[str], answers_a: Sequence[str],
                 answers_b: Sequence[str]) -> dict[str, str]:
    """The adjudication row of an annotations-table question with its verifiers' answers (lead's cells empty)."""
    return {
        **{k: question[k] for k in ("question_id", "pair_id", "pattern", "question", "option_a", "option_b", "writer")},
        "writer_answer_a": question["answer_a"], "writer_answer_b": question["answer_b"],
        "writer_statement_a": question["statement_a"] or "", "writer_statement_b": question["statement_b"] or "",
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
UNANSWERED_REASONS: tuple[str, ...] = (*annotation.tables.INVALID_REASONS, annotation.tables.AWAITING_VERIFICATION)


def decidable(reason: str | None) -> bool:
    """Whether a lead's decision applies to a question with this outcome reason (verifiers answered it)."""
    return reason not in UNANSWERED_REASONS


class CorrectionError(ClipblindError, ValueError):
    """`adjudicate --correct` names a question the lead cannot correct (or answers that cannot be right)."""


@dataclass(frozen=True)
class Correction:
    """What `adjudicate --correct` sets: the right answers and what becomes of the statements."""

    answers: tuple[str, str]
    statements: tuple[str, str] = ("", "")  # new statements (image_a, image_b); empty: keep (or drop)
    drop_statements: bool = False
    note: str = ""


def correct(rows: list[dict[str, str]], wanted: str, change: Correction, annotations: pa.Table,
            outcomes: pa.Table) -> tuple[list[dict[str, str]], dict[str, str]]:
    """`rows` with question (or accepted pair) `wanted` set to decision `correct` as `change` says, and that row.

    Any question verifiers answered can be corrected: accepted, disputed or rejected by the lead.
    """
    answers = change.answers
    problem = _answer_problem({"decision": CORRECT, "answer_a": answers[0], "answer_b": answers[1]})
    if problem:
        raise CorrectionError(f"--answer-a/--answer-b: {problem}")
    outcome_rows = outcomes.to_pylist()
    by_question = {r["question_id"]: r for r in outcome_rows}
    accepted_of_pair = {r["pair_id"]: r for r in outcome_rows if r["status"] == schemas.OUTCOME_ACCEPTED}
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
    problem = statement_problem(answers, change.statements, change.drop_statements,
                                (question["answer_a"], question["answer_b"]),
                                (question["statement_a"], question["statement_b"]),
                                fix="give what they become with --statement-a and --statement-b, or --drop-statements")
    if problem:
        raise CorrectionError(f"--correct {wanted!r} (question {question['question_id']}): {problem}")
    fresh = question_row(question, outcome["verifiers"], outcome["verifier_answers_a"], outcome["verifier_answers_b"])
    existing = {r["question_id"]: r for r in rows}
    row = {**fresh, **{c: existing.get(fresh["question_id"], {}).get(c, "") for c in LEAD_COLUMNS}}
    row.update(decision=CORRECT, answer_a=answers[0], answer_b=answers[1], note=change.note or row["note"],
               statement_a=change.statements[0].strip(), statement_b=change.statements[1].strip(),
               drop_statements=DROP if change.drop_statements else "")
    existing[row["question_id"]] = row
    return sorted(existing.values(), key=lambda r: r["question_id"]), row


def describe(row: Mapping[str, str]) -> str:
    """One line naming a corrected question, its pattern, and its answers and statements before → after."""
    before = f"{row['writer_answer_a']}/{row['writer_answer_b']}"
    line = (f"question {row['question_id']} (pair {row['pair_id']}, {row['pattern']}): answers {before} → "
            f"{row['answer_a']}/{row['answer_b']}")
    if row[DROP_STATEMENTS]:
        return line + "; statements dropped"
    if row["statement_a"]:
        return line + f"; statements → {row['statement_a']!r} / {row['statement_b']!r}"
    if row["writer_statement_a"]:
        return line + "; statements kept"
    return line


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: `clipblind adjudicate [--correct ID --answer-a X --answer-b Y [--note N]] [--file ...]`."""
    parser = argparse.ArgumentParser(prog="clipblind adjudicate",
                                     description="merge new disputes into the lead's adjudication file, or correct an answer")
    parser.add_argument("--queue", default="data/adjudication_queue.csv")
    parser.add_argument("--file", default="labels/adjudication.csv")
    parser.add_argument("--correct", metavar="ID", help="question id (or accepted pair id) whose answers the lead corrects")
    parser.add_argument("--answer-a", choices=ANSWERS, help="the right answer for image_a (with --correct)")
    parser.add_argument("--answer-b", choices=ANSWERS, help="the right answer for image_b (with --correct)")
    parser.add_argument("--statement-a", default="", help="with --correct: the new statement true of image_a")
    parser.add_argument("--statement-b", default="", help="with --correct: the new statement true of image_b")
    parser.add_argument("--drop-statements", action="store_true",
                        help="with --correct: the question ships without statements (the pair leaves mmvp_vlm/)")
    parser.add_argument("--note", default="", help="why (with --correct)")
    parser.add_argument("--annotations", default="data/annotations.parquet", help="with --correct: the validate output")
    parser.add_argument("--outcomes", default="data/question_outcomes.parquet", help="with --correct: the accept output")
    args = parser.parse_args(argv)
    if args.correct is None and (args.answer_a or args.answer_b or args.note or args.statement_a or args.statement_b
                                 or args.drop_statements):
        parser.error("--answer-a, --answer-b, --statement-a, --statement-b, --drop-statements and --note go with "
                     "--correct ID")
    if args.correct is not None and not (args.answer_a and args.answer_b):
        parser.error(f"--correct {args.correct} needs both --answer-a and --answer-b (each one of {list(ANSWERS)})")
    queue, current = read(args.queue), read(args.file)
    merged = merge(queue, current)
    corrected = None
    if args.correct is not None:
        change = Correction((args.answer_a, args.answer_b), (args.statement_a, args.statement_b),
                            args.drop_statements, args.note)
        merged, corrected = correct(merged, args.correct, change,
                                    schemas.read_table(args.annotations, "annotations"),
                                    schemas.read_table(args.outcomes, "question_outcomes"))
    write_bytes(args.file, encode(merged))
    undecided = sum(1 for r in merged if not r["decision"])
    if corrected is not None:
        print(f"[adjudicate] {describe(corrected)}: set to {CORRECT} in {args.file}")
    if undecided:
        print(f"[adjudicate] {undecided} of {len(merged)} questions in {args.file} without a decision: set decision "
              f"to {ACCEPT}, {REJECT} or {CORRECT} (with answer_a and answer_b)")
    print(f"[adjudicate] {len(merged)} questions in {args.file}: commit it, then `dvc repro` applies the decisions")
    return 0


if __name__ == "__main__":
    from pipeline.core.errors import run_command

    raise SystemExit(run_command(main, "adjudicate"))
