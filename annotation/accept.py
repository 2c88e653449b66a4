"""accept: valid questions + verifiers' answers + the lead's decisions → accepted pairs.

Inputs: the annotations table (validate), the pairs table, the verification snapshot
(`clipblind pull verification`, labels/verification.json), the lead's adjudication file
(labels/adjudication.csv); params section `accept`.
"Verified" means one thing everywhere (README, metrics, card): a valid question is accepted as
`verified` when at least `verifiers` people other than its writer answered it and every one of
them chose the writer's answer for both images. Any other answer (including "unanswerable")
sends it to the adjudication queue with every answer; the lead's `accept` there accepts it
(`adjudicated`), `reject` rejects it, `correct` accepts it with the lead's answers (`adjudicated`;
the writer's answers kept in `writer_answer_a/b`) and the lead's statements (new, dropped, or the
writer's where the lead's decision keeps them). `reject` and `correct` apply to a verified
question too (`clipblind adjudicate --correct`): the lead's decision on any question verifiers
answered is final.
Outputs: the accepted table (schemas.ACCEPTED, one row per pair), the outcome of every
written question (kind `question_outcomes`), the adjudication queue CSV.
Metrics: written = invalid + valid (invalid by reason), as validate counts them; of the valid questions:
accepted (verified + adjudicated), rejected by reason, pending by reason (awaiting
verification or adjudication: not decided yet, so not rejected); accepted + rejected + pending
== valid. answers_corrected: accepted questions whose answers the lead changed;
decisions_unused: decisions naming no question verifiers answered (unknown, invalid, stale or
awaiting verification). Human verification accuracy over every question verifiers answered
(answered_questions), against the answers that ship (the lead's where corrected), per question
(each image answered) and per pair (both images right: MMVP's 95.7 % figure), and all of these
per pattern.
"""

from __future__ import annotations

import argparse
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from annotation import adjudication, results
from annotation.snapshot import read_snapshot
from annotation.tables import (
    ADJUDICATED_REJECT,
    AWAITING_ADJUDICATION,
    AWAITING_VERIFICATION,
    DUPLICATE_PAIR,
    INVALID_REASONS,
    OUTCOME_REASONS,
    PENDING_REASONS,
    STALE_PAIR,
)
from pipeline.core import patterns, schemas
from pipeline.core.atomic import write_bytes
from pipeline.core.config import command_params
from pipeline.core.report import summary, write_headline, write_metrics
from pipeline.params import AcceptParams

STAGE = "accept"
# Valid questions not decided yet (reported as pending, never as rejected).


@dataclass(frozen=True)
class Answer:
    """One verifier's answers to one question."""

    verifier: str
    answer_a: str
    answer_b: str


def verifier_answers(snapshot: dict[str, Any]) -> dict[str, list[Answer]]:
    """question_id → the verifiers' answers, in annotation order."""
    found: dict[str, list[Answer]] = defaultdict(list)
    for task in snapshot["tasks"]:
        for ann in task["annotations"]:
            values = results.fields(ann["result"])
            found[task["data"]["question_id"]].append(
                Answer(ann["annotator"], results.choice(values, "verify_a"), results.choice(values, "verify_b"))
            )
    return found


def _accuracy(correct: int, total: int) -> float | None:
    return round(correct / total, 4) if total else None


def unused_decisions(decided: Mapping[str, adjudication.Decision], outcomes: pa.Table) -> list[str]:
    """Question ids the lead decided that no verifier answered (unknown, invalid, stale or awaiting verification)."""
    answered = {r["question_id"] for r in outcomes.select(["question_id", "reason"]).to_pylist()
                if adjudication.decidable(r["reason"])}
    return sorted(set(decided) - answered)


def accept(
    annotations: pa.Table,
    pairs: pa.Table,
    verification: dict[str, Any],
    decided: Mapping[str, adjudication.Decision],
    params: AcceptParams,
) -> tuple[pa.Table, pa.Table, list[dict[str, str]], dict[str, Any]]:
    """Decide every written question; return (accepted, outcomes, adjudication queue, metrics)."""
    pair_rows = {r["pair_id"]: r for r in pairs.to_pylist()}
    answers = verifier_answers(verification)
    accepted, outcomes, queue = [], [], []
    reasons: Counter[str] = Counter()  # valid questions not accepted
    invalid_reasons: Counter[str] = Counter()
    accepted_pairs: set[str] = set()
    self_answers = answered = 0
    # per pattern: [questions answered, image answers right, image answers, pairs right, pair answers]
    tally: dict[str, list[int]] = {p: [0, 0, 0, 0, 0] for p in ("all", *patterns.KEYS)}
    for row in annotations.to_pylist():
        mine = [a for a in answers.get(row["question_id"], []) if a.verifier != row["writer"]]
        self_answers += len(answers.get(row["question_id"], [])) - len(mine)
        status, reason, how = schemas.OUTCOME_REJECTED, row["reason"], None
        if row["valid"] and row["pair_id"] not in pair_rows:
            reason = STALE_PAIR
        elif row["valid"] and len(mine) < params.verifiers:
            reason = AWAITING_VERIFICATION
        elif row["valid"]:
            answered += 1
            decision = decided.get(row["question_id"])
            truth = decision.answers if decision and decision.answers else (row["answer_a"], row["answer_b"])
            right = [(a.answer_a == truth[0]) + (a.answer_b == truth[1]) for a in mine]
            for key in ("all", row["pattern"]):
                t = tally[key]
                t[0] += 1
                t[1] += sum(right)
                t[2] += 2 * len(right)
                t[3] += sum(r == 2 for r in right)
                t[4] += len(right)
            agreed = all(a.answer_a == row["answer_a"] and a.answer_b == row["answer_b"] for a in mine)
            if not agreed:
                queue.append(adjudication.question_row(row, [a.verifier for a in mine], [a.answer_a for a in mine],
                                                       [a.answer_b for a in mine]))
            kind = decision.kind if decision else None
            if kind == adjudication.REJECT:
                reason = ADJUDICATED_REJECT
            elif kind == adjudication.CORRECT or (kind == adjudication.ACCEPT and not agreed):
                status, reason, how = schemas.OUTCOME_ACCEPTED, None, schemas.ADJUDICATED
            elif agreed:
                status, reason, how = schemas.OUTCOME_ACCEPTED, None, schemas.VERIFIED
            else:
                reason = AWAITING_ADJUDICATION
        if status == schemas.OUTCOME_ACCEPTED and row["pair_id"] in accepted_pairs:
            status, reason, how = schemas.OUTCOME_REJECTED, DUPLICATE_PAIR, None
        if status == schemas.OUTCOME_ACCEPTED:
            accepted_pairs.add(row["pair_id"])
            pair = pair_rows[row["pair_id"]]
            writer_answers = (row["answer_a"], row["answer_b"])
            changed = truth != writer_answers
            statements = (row["statement_a"], row["statement_b"])
            if decision is not None and decision.kind == adjudication.CORRECT:
                statements = decision.shipped_statements(statements)
            accepted.append({
                **{k: row[k] for k in ("pair_id", "pattern", "tags", "question", "option_a", "option_b", "writer")},
                "statement_a": statements[0], "statement_b": statements[1],
                "answer_a": truth[0], "answer_b": truth[1],
                "writer_answer_a": writer_answers[0] if changed else None,
                "writer_answer_b": writer_answers[1] if changed else None,
                "image_a": pair["image_a"], "image_b": pair["image_b"],
                "clip_sim": pair["clip_sim"], "dino_sim": pair["dino_sim"],
                "verification": how,
                "verifier_answers_a": [a.answer_a for a in mine],
                "verifier_answers_b": [a.answer_b for a in mine],
            })
        elif row["valid"]:
            reasons[reason] += 1
            if reason in PENDING_REASONS:
                status = schemas.OUTCOME_PENDING
        else:
            invalid_reasons[reason] += 1
        outcomes.append({
            "question_id": row["question_id"], "pair_id": row["pair_id"], "pattern": row["pattern"],
            "status": status, "reason": reason, "verification": how,
            "verifiers": [a.verifier for a in mine],
            "verifier_answers_a": [a.answer_a for a in mine], "verifier_answers_b": [a.answer_b for a in mine],
        })
    accepted_table = pa.Table.from_pylist(sorted(accepted, key=lambda r: r["pair_id"]), schema=schemas.ACCEPTED)
    outcomes_table = pa.Table.from_pylist(sorted(outcomes, key=lambda r: r["question_id"]), schema=schemas.OUTCOMES)
    per_pattern_accepted = Counter(r["pattern"] for r in accepted)

    def accuracy(t: list[int]) -> dict[str, Any]:
        return {"answered_questions": t[0], "per_question": _accuracy(t[1], t[2]), "per_pair": _accuracy(t[3], t[4])}

    valid = sum(annotations.column("valid").to_pylist())
    decided_reasons = (STALE_PAIR, *(r for r in OUTCOME_REASONS if r not in PENDING_REASONS))
    metrics = {
        "written": annotations.num_rows,
        "invalid": annotations.num_rows - valid,
        "invalid_by_reason": {r: invalid_reasons.get(r, 0) for r in INVALID_REASONS},
        "valid": valid,
        "answered_by_verifiers": answered,
        "accepted": len(accepted),
        "verified": sum(r["verification"] == schemas.VERIFIED for r in accepted),
        "accepted_adjudicated": sum(r["verification"] == schemas.ADJUDICATED for r in accepted),
        "answers_corrected": sum(r["writer_answer_a"] is not None for r in accepted),
        "decisions_unused": len(unused_decisions(decided, outcomes_table)),
        "rejected": sum(reasons.get(r, 0) for r in decided_reasons),
        "rejected_by_reason": {r: reasons.get(r, 0) for r in decided_reasons},
        "pending": sum(reasons.get(r, 0) for r in PENDING_REASONS),
        "pending_by_reason": {r: reasons.get(r, 0) for r in PENDING_REASONS},
        "self_verifications_ignored": self_answers,
        "human_accuracy": accuracy(tally["all"]),
        "per_pattern": {p: {"accepted": per_pattern_accepted.get(p, 0), **accuracy(tally[p])} for p in patterns.KEYS},
    }
    return accepted_table, outcomes_table, sorted(queue, key=lambda r: r["question_id"]), metrics


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: `python -m annotation.accept --annotations A --pairs P --verification V --decisions D ...`."""
    parser = argparse.ArgumentParser(prog="clipblind accept", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--annotations", required=True)
    parser.add_argument("--pairs", required=True)
    parser.add_argument("--verification", required=True, help="verification snapshot from `clipblind pull verification`")
    parser.add_argument("--decisions", required=True, help="the lead's adjudication file")
    parser.add_argument("--accepted", required=True, help="output accepted table")
    parser.add_argument("--outcomes", required=True, help="output question outcomes table")
    parser.add_argument("--queue", required=True, help="output adjudication queue CSV")
    parser.add_argument("--metrics", required=True)
    parser.add_argument("--headline", help="output headline metrics JSON (what `dvc metrics show` lists: report.HEADLINES)")
    args = parser.parse_args(argv)
    params = command_params(parser, args.params, STAGE, AcceptParams)
    annotations = schemas.read_table(args.annotations, "annotations")
    decided, problems = adjudication.decisions(adjudication.read(args.decisions),
                                               {r["question_id"]: r for r in annotations.to_pylist()})
    for problem in problems:
        print(f"[{STAGE}] ignored: {problem}")
    accepted, outcomes, queue, metrics = accept(
        annotations, schemas.read_table(args.pairs, "pairs"), read_snapshot(args.verification), decided, params,
    )
    metrics["unreadable_decisions"] = len(problems)
    for qid in unused_decisions(decided, outcomes):
        print(f"[{STAGE}] not applied: {args.decisions} decides question {qid}, which no verifier has answered "
              "(unknown, invalid, stale or awaiting verification)")
    schemas.write_table(accepted, args.accepted, "accepted")
    schemas.write_table(outcomes, args.outcomes, "question_outcomes")
    write_bytes(args.queue, adjudication.encode(queue))
    write_metrics(args.metrics, metrics)
    write_headline(args.headline, STAGE, metrics)
    waiting = metrics["pending_by_reason"][AWAITING_ADJUDICATION]
    summary(STAGE, f"{metrics['written']} written, {metrics['valid']} valid → {metrics['accepted']} accepted "
                   f"({metrics['verified']} verified, {metrics['accepted_adjudicated']} adjudicated), "
                   f"{metrics['rejected']} rejected, {metrics['pending']} pending; {waiting} awaiting adjudication ({args.queue}: "
                   "`clipblind adjudicate`) → " + str(args.accepted))
    return 0


if __name__ == "__main__":
    from pipeline.core.errors import run_command

    raise SystemExit(run_command(main, "accept"))
