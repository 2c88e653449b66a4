"""The adjudication file: disputed questions with every answer, and the lead's decisions.

`accept` writes the queue (data/adjudication_queue.csv); `clipblind adjudicate` merges it
into the lead's file (labels/adjudication.csv, versioned), keeping decisions already made.
The lead sets `decision` to `accept` or `reject`; `accept` applies the decisions on its next run.
Annotation text is untrusted: a cell that a spreadsheet would read as a formula
(`formula_like`) is written with a leading apostrophe, and read back exactly. The same rule
makes `validate` reject such text, so released files never need the guard.
"""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path
from typing import Sequence

from pipeline.atomic import write_bytes

COLUMNS = ("question_id", "pair_id", "pattern", "question", "option_a", "option_b", "writer",
           "writer_answer_a", "writer_answer_b", "verifier_answers_a", "verifier_answers_b", "decision", "note")
DECISIONS = ("accept", "reject")
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
    """Rows of an adjudication CSV (missing file: none)."""
    path = Path(path)
    if not path.exists():
        return []
    reader = csv.DictReader(io.StringIO(path.read_text(encoding="utf-8")))
    missing = sorted(set(COLUMNS) - set(reader.fieldnames or []))
    if missing:
        raise AdjudicationError(f"{path} lacks columns {missing}: regenerate it with `clipblind adjudicate`")
    return [{c: unguard(row[c] or "") for c in COLUMNS} for row in reader]


def decisions(rows: list[dict[str, str]]) -> tuple[dict[str, str], list[str]]:
    """question_id → decision for rows with a valid decision; plus a message per unreadable decision."""
    found, problems = {}, []
    for row in rows:
        decision = row["decision"].strip().lower()
        if not decision:
            continue
        if decision not in DECISIONS:
            problems.append(f"question {row['question_id']}: decision {row['decision']!r} is not one of {list(DECISIONS)}; "
                            "fix it in the adjudication file")
            continue
        found[row["question_id"]] = decision
    return found, problems


def merge(queue: list[dict[str, str]], current: list[dict[str, str]]) -> list[dict[str, str]]:
    """The queue's rows with the decisions (and notes) already in `current`; decided rows no longer queued are kept."""
    kept = {r["question_id"]: r for r in current}
    merged = {}
    for row in queue:
        old = kept.get(row["question_id"], {})
        merged[row["question_id"]] = {**row, "decision": old.get("decision", ""), "note": old.get("note", "")}
    for qid, row in kept.items():
        if qid not in merged and row["decision"]:
            merged[qid] = row
    return sorted(merged.values(), key=lambda r: r["question_id"])


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: `clipblind adjudicate [--queue data/adjudication_queue.csv] [--file labels/adjudication.csv]`."""
    parser = argparse.ArgumentParser(prog="clipblind adjudicate", description="merge new disputes into the lead's adjudication file")
    parser.add_argument("--queue", default="data/adjudication_queue.csv")
    parser.add_argument("--file", default="labels/adjudication.csv")
    args = parser.parse_args(argv)
    queue, current = read(args.queue), read(args.file)
    merged = merge(queue, current)
    write_bytes(args.file, encode(merged))
    undecided = sum(1 for r in merged if not r["decision"])
    print(f"[adjudicate] {len(merged)} disputed questions in {args.file}, {undecided} without a decision: "
          "set decision to accept or reject, commit, then `dvc repro accept`")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
