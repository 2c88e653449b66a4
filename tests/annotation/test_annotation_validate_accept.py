"""validate → accept → adjudication, on hand-made snapshots: every reason, injection payloads, determinism."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import yaml

from annotation import accept, adjudication, results, validate
from annotation import push_verification as verify
from annotation.pull import encode
from annotation.tables import INVALID_REASONS
from pipeline import cli
from pipeline.core import patterns, schemas
from tests.helpers.params import demo_params

PAYLOADS = [
    "<script>alert(1)</script>",
    '<img src=x onerror="alert(1)">',
    "\"><svg onload=alert(1)>",
    "=cmd|' /C calc'!A0",
    "+SUM(1,2)",
    "-2+3",
    "@SUM(A1:A2)",
    "=HYPERLINK(\"http://example.org\",\"x\")",
    "\tleading tab",
    "'=already quoted",
]


def _pairs(*ids: str) -> pa.Table:
    return pa.table({
        "pair_id": list(ids), "image_a": [f"a{i}" for i in ids], "image_b": [f"b{i}" for i in ids],
        "clip_sim": pa.array([0.97] * len(ids), pa.float32()), "dino_sim": pa.array([0.4] * len(ids), pa.float32()),
    }, schema=schemas.PAIRS)


def label_studio_result(**fields: Any) -> list[dict[str, Any]]:
    """Label Studio result regions: a list value is a choice control, a string a text area."""
    out = []
    for name, value in fields.items():
        if isinstance(value, list):
            out.append({"from_name": name, "to_name": "image_a", "type": "choices", "value": {"choices": value}})
        else:
            out.append({"from_name": name, "to_name": "image_a", "type": "textarea", "value": {"text": [value]}})
    return out


ACCEPT, REJECT = adjudication.Decision(adjudication.ACCEPT), adjudication.Decision(adjudication.REJECT)
QUANTITY = patterns.by_key("quantity")
TEXT = patterns.by_key("text")
# Label Studio stores the pattern choice as the writing config shows it: the paper's name.
GOOD = {"pattern": [QUANTITY.paper], "question": "How many dots?", "option_a": "Two", "option_b": "Three",
        "answer_a": ["(a)"], "answer_b": ["(b)"]}


def label_studio_fields(fields: dict[str, Any]) -> dict[str, list[str]]:
    """The control → values mapping validate reads from one annotation with `fields`."""
    return results.fields(label_studio_result(**fields))


def writing_snapshot(cases: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A writing snapshot as `clipblind pull` writes it: one task per pair id, one annotation with `fields`."""
    tasks = []
    for n, (pair, fields) in enumerate(sorted(cases.items()), start=1):
        tasks.append({"task_id": n, "stale": False,
                      "data": {"pair_id": pair, "image_a": f"/data/local-files/?d=display/a{pair}.jpg",
                               "image_b": f"/data/local-files/?d=display/b{pair}.jpg",
                               "image_a_id": f"a{pair}", "image_b_id": f"b{pair}"},
                      "annotations": [{"id": 100 + n, "annotator": "writer@example.org", "lead_time": 30.0,
                                       "created_at": "t", "updated_at": "t", "result": label_studio_result(**fields)}]})
    return {"version": 1, "project": "writing", "tasks": tasks}


REASON_CASES = {
    "pair_rejected": {"reject": ["Reject pair"], "reject_reason": "same photo"},
    "stale_pair": GOOD,
    "missing_question": {**GOOD, "question": "  "},
    "missing_option": {**GOOD, "option_b": ""},
    "identical_options": {**GOOD, "option_b": " two "},
    "unknown_pattern": {**GOOD, "pattern": ["Vibes"]},
    "answer_not_an_option": {**GOOD, "answer_b": []},
    "same_answer": {**GOOD, "answer_b": ["(a)"]},
    "formula_like": {**GOOD, "option_a": "-2 dots"},
}


def test_every_rejection_reason_is_detected_and_counted() -> None:
    cases = {f"p-{reason}": fields for reason, fields in REASON_CASES.items()} | {"p-good": GOOD}
    pairs = _pairs(*[p for p in cases if p != "p-stale_pair"])
    table = validate.validate(writing_snapshot(cases), pairs, demo_params("validate"))
    got = {r["pair_id"]: r["reason"] for r in table.to_pylist()}
    assert got == {f"p-{reason}": reason for reason in INVALID_REASONS} | {"p-good": None}
    assert all(r["detail"] for r in table.to_pylist() if r["reason"])
    metrics = validate.metrics_of(table)
    assert metrics["valid"] == 1 and metrics["invalid"] == len(INVALID_REASONS)
    assert metrics["valid"] + metrics["invalid"] == metrics["written"]
    assert set(metrics["invalid_by_reason"].values()) == {1}
    assert metrics["valid_per_pattern"][QUANTITY.key] == 1
    assert {r["pattern"] for r in table.to_pylist() if r["valid"]} == {QUANTITY.key}  # tables store the key


def test_secondary_tag_outside_the_nine_is_an_unknown_pattern() -> None:
    table = validate.validate(writing_snapshot({"p": {**GOOD, "tags": [TEXT.paper, "Sparkle"]}}), _pairs("p"), demo_params("validate"))
    assert table.column("reason").to_pylist() == ["unknown_pattern"]
    assert "Sparkle" in table.column("detail")[0].as_py() and patterns.PAPER_NAMES[0] in table.column("detail")[0].as_py()
    first = patterns.PATTERNS[0]
    ok = validate.validate(writing_snapshot({"p": {**GOOD, "tags": [first.paper, QUANTITY.paper]}}), _pairs("p"),
                           demo_params("validate"))
    assert ok.column("valid").to_pylist() == [True]
    assert ok.column("tags").to_pylist() == [sorted([first.key, QUANTITY.key])]


def verification_snapshot(answers: dict[str, list[tuple[str, str, str]]]) -> dict[str, Any]:
    """A verification snapshot: question_id → (verifier, answer for image A, answer for image B) per verifier."""
    tasks = []
    for n, (qid, given) in enumerate(sorted(answers.items()), start=1):
        tasks.append({"task_id": n, "stale": False, "data": {"question_id": qid},
                      "annotations": [{"id": 500 + 10 * n + i, "annotator": who, "lead_time": 5.0, "created_at": "t",
                                       "updated_at": "t", "result": label_studio_result(verify_a=[a], verify_b=[b])}
                                      for i, (who, a, b) in enumerate(given)]})
    return {"version": 1, "project": "verification", "tasks": tasks}


def test_accept_verifies_queues_mismatches_and_applies_decisions() -> None:
    cases = {p: {**GOOD, "pattern": [pattern.paper]} for p, pattern in
             (("p1", QUANTITY), ("p2", TEXT), ("p3", TEXT), ("p4", TEXT), ("p5", TEXT))}
    cases["p6"] = REASON_CASES["same_answer"]
    pairs = _pairs(*cases)
    table = validate.validate(writing_snapshot(cases), pairs, demo_params("validate"))
    qid = {r["pair_id"]: r["question_id"] for r in table.to_pylist()}
    verification = verification_snapshot({
        qid["p1"]: [("v@example.org", "(a)", "(b)")],  # agrees
        qid["p2"]: [("v@example.org", "(a)", "unanswerable")],  # disagrees → adjudication
        qid["p3"]: [("writer@example.org", "(a)", "(b)")],  # only the writer answered: ignored
        qid["p4"]: [("v@example.org", "(b)", "(a)")],  # disagrees, lead rejects
    })
    decided = {qid["p2"]: ACCEPT, qid["p4"]: REJECT}
    accepted, outcomes, queue, metrics = accept.accept(table, pairs, verification, {}, demo_params("accept"))
    assert accepted.column("pair_id").to_pylist() == ["p1"]
    assert [r["question_id"] for r in queue] == sorted([qid["p2"], qid["p4"]])
    # undecided questions are pending, never rejected: accepted + rejected + pending == valid
    assert metrics["pending_by_reason"] == {"awaiting_verification": 2, "awaiting_adjudication": 2}  # p3 (self only), p5
    assert (metrics["accepted"], metrics["rejected"], metrics["pending"], metrics["valid"]) == (1, 0, 4, 5)
    assert metrics["invalid"] == 1 and metrics["written"] == 6 and metrics["verified"] == 1
    assert {k: metrics[k] for k in validate.SHARED_COUNTS} == {k: validate.metrics_of(table)[k] for k in validate.SHARED_COUNTS}
    assert metrics["answered_by_verifiers"] == metrics["human_accuracy"]["answered_questions"] == \
        metrics["valid"] - metrics["rejected_by_reason"]["stale_pair"] - metrics["pending_by_reason"]["awaiting_verification"]
    assert metrics["self_verifications_ignored"] == 1
    assert metrics["human_accuracy"] == {"answered_questions": 3, "per_question": 0.5, "per_pair": round(1 / 3, 4)}
    assert metrics["per_pattern"][TEXT.key]["per_question"] == 0.25
    accepted, outcomes, queue, metrics = accept.accept(table, pairs, verification, decided, demo_params("accept"))
    rows = {r["pair_id"]: r for r in accepted.to_pylist()}
    assert sorted(rows) == ["p1", "p2"]
    assert rows["p2"]["verification"] == "adjudicated" and rows["p2"]["verifier_answers_b"] == ["unanswerable"]
    assert rows["p1"]["verification"] == "verified" and (rows["p1"]["answer_a"], rows["p1"]["answer_b"]) == ("(a)", "(b)")
    assert metrics["rejected_by_reason"]["adjudicated_reject"] == 1
    assert metrics["accepted"] + metrics["rejected"] + metrics["pending"] == metrics["valid"] == 5
    assert (metrics["verified"], metrics["accepted_adjudicated"], metrics["pending"]) == (1, 1, 2)
    by_q = {r["question_id"]: r for r in outcomes.to_pylist()}
    assert by_q[qid["p6"]]["reason"] == "same_answer"
    # two verifiers wanted: one answer is no longer enough
    _, _, _, two = accept.accept(table, pairs, verification, decided, demo_params("accept", verifiers=2))
    assert two["accepted"] == 0


def test_verification_tasks_never_carry_the_writers_answers() -> None:
    table = validate.validate(writing_snapshot({"p": GOOD, "q": REASON_CASES["same_answer"]}), _pairs("p", "q"),
                              demo_params("validate"))
    tasks = verify.verification_tasks(table)
    assert [t["data"]["pair_id"] for t in tasks] == ["p"]
    assert set(tasks[0]["data"]) == {"question_id", "pair_id", "question", "option_a", "option_b", "image_a", "image_b"}


def test_injection_payloads_survive_exactly_in_tables_and_are_inert_in_the_csv(tmp_path: Path) -> None:
    cases = {f"p{i:02d}": {**GOOD, "question": payload, "option_a": payload, "option_b": f"{payload} (b)",
                           "statement_a": payload}
             for i, payload in enumerate(PAYLOADS)}
    pairs = _pairs(*cases)
    table = validate.validate(writing_snapshot(cases), pairs, demo_params("validate"))
    formulas = [adjudication.formula_like(p.strip()) for p in PAYLOADS]
    assert 0 < sum(formulas) < len(PAYLOADS)
    # text a spreadsheet would evaluate goes back to the writer; the rest is kept
    assert table.column("reason").to_pylist() == ["formula_like" if f else None for f in formulas]
    schemas.write_table(table, tmp_path / "annotations.parquet", "annotations")
    back = schemas.read_table(tmp_path / "annotations.parquet", "annotations")
    assert back.column("question").to_pylist() == [p.strip() for p in PAYLOADS]  # never silently changed (but stripped)
    qids = back.column("question_id").to_pylist()
    verification = verification_snapshot({q: [("v@example.org", "(b)", "(b)")] for q in qids})
    _, _, queue, _ = accept.accept(back, pairs, verification, {}, demo_params("accept"))
    kept = [p.strip() for p, f in zip(PAYLOADS, formulas) if not f]
    assert sorted(r["question"] for r in queue) == sorted(kept)
    # the adjudication file is for spreadsheets: any cell (a writer's name, a note) is guarded
    queue += [{**queue[0], "question_id": f"q-{i}", "writer": p, "note": p} for i, p in enumerate(PAYLOADS)]
    path = tmp_path / "adjudication.csv"
    path.write_bytes(adjudication.encode(queue))
    # as a spreadsheet sees it: no cell starts like a formula
    for row in csv.reader(io.StringIO(path.read_text())):
        for cell in row:
            assert not adjudication.formula_like(cell), cell
    assert adjudication.read(path) == sorted(({c: str(r.get(c) or "") for c in adjudication.COLUMNS} for r in queue),
                                             key=lambda r: r["question_id"])
    # the lead's decisions (typed in a spreadsheet) are applied; text comes back exact
    rows = adjudication.read(path)
    for row in rows:
        row["decision"] = "accept"
    path.write_bytes(adjudication.encode(rows))
    decided, problems = adjudication.decisions(adjudication.read(path))
    assert problems == [] and len(decided) == len(queue)
    accepted, _, _, _ = accept.accept(back, pairs, verification, decided, demo_params("accept"))
    assert sorted(accepted.column("question").to_pylist()) == sorted(kept)


def test_adjudicate_merge_keeps_decisions_and_flags_bad_ones(tmp_path: Path) -> None:
    queue = [{c: "" for c in adjudication.COLUMNS} | {"question_id": q} for q in ("q1", "q2")]
    path = tmp_path / "labels" / "adjudication.csv"
    path.parent.mkdir()
    path.write_bytes(adjudication.encode([queue[0] | {"decision": "reject", "note": "ambiguous"},
                                          queue[0] | {"question_id": "q0", "decision": "accept"}]))
    (tmp_path / "queue.csv").write_bytes(adjudication.encode(queue))
    assert adjudication.main(["--queue", str(tmp_path / "queue.csv"), "--file", str(path)]) == 0
    merged = {r["question_id"]: r for r in adjudication.read(path)}
    assert sorted(merged) == ["q0", "q1", "q2"]
    assert (merged["q1"]["decision"], merged["q1"]["note"], merged["q2"]["decision"]) == ("reject", "ambiguous", "")
    bad = list(merged.values())
    bad[2]["decision"] = "maybe"
    decided, problems = adjudication.decisions(bad)
    assert decided == {"q0": ACCEPT, "q1": REJECT} and "maybe" in problems[0] and "q2" in problems[0]


def _lead_world(good: dict[str, Any] = GOOD) -> tuple[pa.Table, pa.Table, dict[str, Any], dict[str, str]]:
    """Four valid questions: p1 verified, p2 disputed (verifier swapped the answers), p3 verified, p4 never verified."""
    cases = {p: good for p in ("p1", "p2", "p3", "p4")} | {"p5": REASON_CASES["same_answer"]}
    pairs = _pairs(*cases)
    table = validate.validate(writing_snapshot(cases), pairs, demo_params("validate"))
    qid = {r["pair_id"]: r["question_id"] for r in table.to_pylist()}
    verification = verification_snapshot({
        qid["p1"]: [("v@example.org", "(a)", "(b)")],
        qid["p2"]: [("v@example.org", "(b)", "(a)")],
        qid["p3"]: [("v@example.org", "(a)", "(b)")],
    })
    return table, pairs, verification, qid


def test_the_lead_corrects_the_answers_of_a_disputed_and_of_a_verified_question() -> None:
    table, pairs, verification, qid = _lead_world()
    swapped = adjudication.Decision(adjudication.CORRECT, ("(b)", "(a)"))
    decided = {qid["p1"]: swapped, qid["p2"]: swapped, qid["p4"]: swapped}
    accepted, outcomes, queue, metrics = accept.accept(table, pairs, verification, decided, demo_params("accept"))
    rows = {r["pair_id"]: r for r in accepted.to_pylist()}
    assert sorted(rows) == ["p1", "p2", "p3"]  # p4 was never verified: the correction waits with it
    for pair in ("p1", "p2"):
        row = rows[pair]
        assert (row["answer_a"], row["answer_b"]) == ("(b)", "(a)"), pair
        assert (row["writer_answer_a"], row["writer_answer_b"]) == ("(a)", "(b)"), pair  # the correction is visible
        assert row["verification"] == "adjudicated", pair
    assert (rows["p3"]["answer_a"], rows["p3"]["writer_answer_a"], rows["p3"]["verification"]) == ("(a)", None, "verified")
    assert queue and [r["question_id"] for r in queue] == [qid["p2"]]  # still disputed, decided by the lead
    assert (metrics["accepted"], metrics["verified"], metrics["accepted_adjudicated"]) == (3, 1, 2)
    assert metrics["answers_corrected"] == 2
    assert metrics["decisions_unused"] == 1 and metrics["pending_by_reason"]["awaiting_verification"] == 1
    # verifiers are scored against the answers that ship: on p2 the verifier was right, on p1 wrong
    assert metrics["human_accuracy"] == {"answered_questions": 3, "per_question": round(4 / 6, 4), "per_pair": round(2 / 3, 4)}
    assert {r["question_id"]: r["verification"] for r in outcomes.to_pylist() if r["status"] == "accepted"} == \
        {qid["p1"]: "adjudicated", qid["p2"]: "adjudicated", qid["p3"]: "verified"}
    assert {*schemas.ACCEPT_FUNNEL_COUNTS, *schemas.ACCEPT_FIGURES} <= set(metrics)  # what package copies to the card
    # the outcomes table says what the metrics say: a question still awaiting verification is pending
    assert {r["question_id"]: (r["status"], r["reason"]) for r in outcomes.to_pylist()}[qid["p4"]] == \
        ("pending", "awaiting_verification")
    # reject applies to a verified question too: a question found wrong after release can be withdrawn
    _, _, _, rejected = accept.accept(table, pairs, verification, {qid["p1"]: REJECT}, demo_params("accept"))
    assert (rejected["accepted"], rejected["rejected_by_reason"]["adjudicated_reject"]) == (1, 1)


BAD_CORRECTIONS = {
    "q-letter": ({"decision": "correct", "answer_a": "(c)", "answer_b": "(a)"}, ["answer_a", "'(c)'", "(a) or (b)"]),
    "q-same": ({"decision": "correct", "answer_a": "(b)", "answer_b": "(b)"}, ["both '(b)'", "must differ"]),
    "q-missing": ({"decision": "Correct", "answer_a": "(b)", "answer_b": ""}, ["answer_b ''", "(a) or (b)"]),
    "q-accept-with-answers": ({"decision": "accept", "answer_a": "(b)", "answer_b": "(a)"},
                              ["decision is 'accept'", "set decision to correct"]),
    "q-no-decision": ({"decision": "", "answer_a": "(b)", "answer_b": "(a)"}, ["decision is ''"]),
}


def test_bad_correction_rows_name_the_row_the_value_and_the_fix_and_cost_no_other_row(tmp_path: Path) -> None:
    blank = {c: "" for c in adjudication.COLUMNS}
    rows = [blank | {"question_id": q} | cells for q, (cells, _) in BAD_CORRECTIONS.items()]
    rows += [blank | {"question_id": "q-good", "decision": "correct", "answer_a": " (b)", "answer_b": "(a) "},
             blank | {"question_id": "q-ok", "decision": "reject"},
             blank | {"question_id": "q-twice", "decision": "accept"}, blank | {"question_id": "q-twice", "decision": "reject"}]
    path = tmp_path / "adjudication.csv"
    path.write_bytes(adjudication.encode(rows))
    back = adjudication.read(path)
    assert back == sorted(({c: r[c] for c in adjudication.COLUMNS} for r in rows), key=lambda r: r["question_id"])
    decided, problems = adjudication.decisions(back)
    assert decided == {"q-good": adjudication.Decision("correct", ("(b)", "(a)")), "q-ok": REJECT}
    assert len(problems) == len(BAD_CORRECTIONS) + 1
    by_question = {re.search(r"question (\S+)\)", p)[1]: p for p in problems}
    for number, row in enumerate(back, start=2):  # spreadsheet row numbers: the header is row 1
        qid = row["question_id"]
        if qid in BAD_CORRECTIONS:
            assert by_question[qid].startswith(f"row {number} (question {qid}):"), by_question[qid]
            for needle in BAD_CORRECTIONS[qid][1]:
                assert needle in by_question[qid], (needle, by_question[qid])
    assert "keep one row per question" in by_question["q-twice"]


def test_a_file_written_before_corrections_existed_still_reads(tmp_path: Path) -> None:
    old_columns = [c for c in adjudication.COLUMNS if c not in ("answer_a", "answer_b")]
    path = tmp_path / "adjudication.csv"
    path.write_text(",".join(old_columns) + "\n" + ",".join("q1" if c == "question_id" else "accept" if c == "decision"
                                                             else "" for c in old_columns) + "\n")
    assert adjudication.decisions(adjudication.read(path)) == ({"q1": ACCEPT}, [])


def _accept_main(tmp_path: Path, decisions: Path, good: dict[str, Any] = GOOD) -> dict[str, Any]:
    """validate's and accept's outputs on the lead world, through their command lines; accept's metrics."""
    table, pairs, verification, _ = _lead_world(good)
    schemas.write_table(table, tmp_path / "annotations.parquet", "annotations")
    schemas.write_table(pairs, tmp_path / "pairs.parquet", "pairs")
    (tmp_path / "verification.json").write_bytes(encode(verification))
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"accept": {"verifiers": 1}}))
    assert accept.main(["--params", str(params), "--annotations", str(tmp_path / "annotations.parquet"),
                        "--pairs", str(tmp_path / "pairs.parquet"), "--verification", str(tmp_path / "verification.json"),
                        "--decisions", str(decisions), "--accepted", str(tmp_path / "accepted.parquet"),
                        "--outcomes", str(tmp_path / "outcomes.parquet"), "--queue", str(tmp_path / "queue.csv"),
                        "--metrics", str(tmp_path / "accept.json")]) == 0
    return json.loads((tmp_path / "accept.json").read_text())


def test_adjudicate_correct_adds_a_row_for_an_accepted_question_that_accept_applies(tmp_path: Path, capsys) -> None:
    decisions = tmp_path / "labels" / "adjudication.csv"
    _, _, _, qid = _lead_world()
    assert _accept_main(tmp_path, decisions)["accepted"] == 2
    paths = ["--queue", str(tmp_path / "queue.csv"), "--file", str(decisions),
             "--annotations", str(tmp_path / "annotations.parquet"), "--outcomes", str(tmp_path / "outcomes.parquet")]
    assert adjudication.main(paths) == 0  # the disputed p2 is queued
    # a wrong answer found after release: the accepted pair p1, named by its pair id, as the release shows it
    assert adjudication.main([*paths, "--correct", "p1", "--answer-a", "(b)", "--answer-b", "(a)",
                              "--note", "-the flag is on the left"]) == 0
    rows = {r["question_id"]: r for r in adjudication.read(decisions)}
    assert sorted(rows) == sorted([qid["p1"], qid["p2"]])
    row = rows[qid["p1"]]
    assert (row["decision"], row["answer_a"], row["answer_b"]) == ("correct", "(b)", "(a)")
    assert row["note"] == "-the flag is on the left"  # guarded in the file, exact when read back
    assert (row["question"], row["writer_answer_a"], row["verifier_answers_a"]) == ("How many dots?", "(a)", "v@example.org: (a)")
    assert rows[qid["p2"]]["decision"] == ""
    # the disputed one, by its question id
    assert adjudication.main([*paths, "--correct", qid["p2"], "--answer-a", "(b)", "--answer-b", "(a)"]) == 0
    metrics = _accept_main(tmp_path, decisions)
    assert (metrics["accepted"], metrics["answers_corrected"], metrics["accepted_adjudicated"]) == (3, 2, 2)
    accepted = {r["pair_id"]: r for r in schemas.read_table(tmp_path / "accepted.parquet", "accepted").to_pylist()}
    assert (accepted["p1"]["answer_a"], accepted["p1"]["answer_b"], accepted["p1"]["writer_answer_a"]) == ("(b)", "(a)", "(a)")
    assert adjudication.main(paths) == 0  # a later merge keeps the lead's corrections
    assert {q: (r["decision"], r["answer_a"]) for q, r in ((r["question_id"], r) for r in adjudication.read(decisions))} == \
        {qid["p1"]: ("correct", "(b)"), qid["p2"]: ("correct", "(b)")}
    capsys.readouterr()
    # what cannot be corrected here is refused with the id and the way out; the file is left as it was
    before = decisions.read_bytes()
    for wanted, needle in (("nope", "neither a question id nor an accepted pair id"),
                           (qid["p4"], "only a question verifiers answered"), (qid["p5"], "goes back to its writer")):
        assert cli.main(["adjudicate", *paths, "--correct", wanted, "--answer-a", "(b)", "--answer-b", "(a)"]) == 1
        err = capsys.readouterr().err
        assert wanted in err and needle in err, err
    with pytest.raises(SystemExit):
        adjudication.main([*paths, "--correct", "p1", "--answer-a", "(b)", "--answer-b", "(b) "])
    with pytest.raises(SystemExit):
        adjudication.main([*paths, "--correct", "p1", "--answer-a", "(b)"])
    assert cli.main(["adjudicate", *paths, "--correct", "p1", "--answer-a", "(a)", "--answer-b", "(a)"]) == 1
    assert "must differ" in capsys.readouterr().err
    assert decisions.read_bytes() == before


WITH_STATEMENTS = {**GOOD, "statement_a": "There are two dots.", "statement_b": "There are three dots."}


def test_a_correction_that_changes_answers_says_what_the_statements_become(tmp_path: Path, capsys) -> None:
    decisions = tmp_path / "labels" / "adjudication.csv"
    _, _, _, qid = _lead_world(WITH_STATEMENTS)
    _accept_main(tmp_path, decisions, WITH_STATEMENTS)
    paths = ["--queue", str(tmp_path / "queue.csv"), "--file", str(decisions),
             "--annotations", str(tmp_path / "annotations.parquet"), "--outcomes", str(tmp_path / "outcomes.parquet")]
    swap = ["--correct", "p1", "--answer-a", "(b)", "--answer-b", "(a)"]
    capsys.readouterr()
    # the writer's statements were true of the images under the old answers: the lead must say what they become
    assert cli.main(["adjudicate", *paths, *swap]) == 1
    err = capsys.readouterr().err
    assert all(n in err for n in (qid["p1"], "--statement-a", "--drop-statements", "There are two dots.")), err
    assert cli.main(["adjudicate", *paths, *swap, "--statement-a", "=1+1", "--statement-b", "Three."]) == 1
    assert "'=1+1'" in (err := capsys.readouterr().err) and "spreadsheet formula" in err, err
    assert cli.main(["adjudicate", *paths, *swap, "--statement-a", "Three dots."]) == 1
    assert "give both" in capsys.readouterr().err
    assert cli.main(["adjudicate", *paths, *swap, "--statement-a", "A.", "--statement-b", "B.", "--drop-statements"]) == 1
    assert not decisions.exists() or qid["p1"] not in decisions.read_text()
    capsys.readouterr()
    assert adjudication.main([*paths, *swap, "--statement-a", "There are three dots.",
                              "--statement-b", "There are two dots."]) == 0
    out = capsys.readouterr().out
    # the console names the question, its pattern and the change; the disputed p2 still waits for a decision
    assert f"question {qid['p1']} (pair p1, {QUANTITY.key}): answers (a)/(b) → (b)/(a)" in out, out
    assert "1 of 2 questions" in out and "without a decision" in out, out
    assert adjudication.main([*paths, "--correct", qid["p2"], "--answer-a", "(b)", "--answer-b", "(a)",
                              "--drop-statements"]) == 0
    out = capsys.readouterr().out
    assert "statements dropped" in out and "without a decision" not in out, out  # nothing left undecided
    metrics = _accept_main(tmp_path, decisions, WITH_STATEMENTS)
    assert metrics["answers_corrected"] == 2 and metrics["unreadable_decisions"] == 0
    accepted = {r["pair_id"]: r for r in schemas.read_table(tmp_path / "accepted.parquet", "accepted").to_pylist()}
    assert (accepted["p1"]["statement_a"], accepted["p1"]["statement_b"]) == ("There are three dots.", "There are two dots.")
    assert (accepted["p2"]["statement_a"], accepted["p2"]["statement_b"]) == (None, None)
    assert (accepted["p3"]["statement_a"], accepted["p3"]["answer_a"]) == ("There are two dots.", "(a)")
    # the same rule in the file: a correct row with changed answers, statements, and neither is named and skipped
    rows = adjudication.read(decisions)
    for row in rows:
        if row["question_id"] == qid["p1"]:
            row.update(statement_a="", statement_b="")
    decided, problems = adjudication.decisions(rows)
    assert qid["p1"] not in decided and qid["p2"] in decided and len(problems) == 1
    assert problems[0].startswith(f"row {[r['question_id'] for r in rows].index(qid['p1']) + 2} (question {qid['p1']}):")
    assert "fill statement_a and statement_b, or set drop_statements to yes" in problems[0], problems[0]
    # the annotations say what the writer wrote even where the file's copy is missing (a file written before)
    blanked = [r | {"writer_statement_a": "", "writer_statement_b": ""} for r in rows]
    assert adjudication.decisions(blanked)[1] == []
    table = schemas.read_table(tmp_path / "annotations.parquet", "annotations")
    assert adjudication.decisions(blanked, {r["question_id"]: r for r in table.to_pylist()})[1] == problems
    path = tmp_path / "again.csv"
    path.write_bytes(adjudication.encode(rows))
    assert adjudication.read(path) == sorted(rows, key=lambda r: r["question_id"])


def test_stages_are_byte_identical_when_run_twice(tmp_path: Path) -> None:
    cases = {f"p{i}": GOOD for i in range(3)} | {"px": REASON_CASES["same_answer"]}
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"validate": {"options_ignore_case": True}, "accept": {"verifiers": 1}}))
    writing, verification = tmp_path / "writing.json", tmp_path / "verification.json"
    writing.write_bytes(encode(writing_snapshot(cases)))
    schemas.write_table(_pairs(*cases), tmp_path / "pairs.parquet", "pairs")
    outputs = []
    for run in ("1", "2"):
        out = tmp_path / run
        assert validate.main(["--params", str(params), "--snapshot", str(writing), "--pairs", str(tmp_path / "pairs.parquet"),
                              "--annotations", str(out / "annotations.parquet"), "--metrics", str(out / "v.json")]) == 0
        qids = schemas.read_table(out / "annotations.parquet", "annotations").column("question_id").to_pylist()
        verification.write_bytes(encode(verification_snapshot({q: [("v@example.org", "(a)", "(a)")] for q in qids})))
        assert accept.main(["--params", str(params), "--annotations", str(out / "annotations.parquet"),
                            "--pairs", str(tmp_path / "pairs.parquet"), "--verification", str(verification),
                            "--decisions", str(tmp_path / "none.csv"), "--accepted", str(out / "accepted.parquet"),
                            "--outcomes", str(out / "outcomes.parquet"), "--queue", str(out / "queue.csv"),
                            "--metrics", str(out / "a.json")]) == 0
        outputs.append({p.name: p.read_bytes() for p in sorted(out.iterdir())})
    assert outputs[0] == outputs[1]
    assert json.loads(outputs[0]["a.json"])["pending_by_reason"]["awaiting_adjudication"] == 3


FORMULA_LIKE = ["=1+1", "+1", "-5 or +5: which?", "@SUM(A1:A2)", "  =HYPERLINK(\"x\")", "\t=1", "\r=1", "\n-1"]
NOT_FORMULA = ["How many dots?", "Is it 5 - 3?", "e-mail or letter?", "x = y", "'quoted'", "Two (b)", "Über=größer"]


@pytest.mark.parametrize("field", ["question", "option_a", "option_b", "statement_a", "statement_b"])
def test_formula_like_text_is_rejected_so_that_the_writer_rephrases(field: str) -> None:
    cases = {f"p{i}": {**GOOD, "statement_a": "One dot.", "statement_b": "Two dots.", field: text}
             for i, text in enumerate(FORMULA_LIKE + NOT_FORMULA)}
    table = validate.validate(writing_snapshot(cases), _pairs(*cases), demo_params("validate"))
    rows = {r["pair_id"]: r for r in table.to_pylist()}
    for i, text in enumerate(FORMULA_LIKE):
        row = rows[f"p{i}"]
        assert row["reason"] == "formula_like", text
        assert field in row["detail"] and "rephrase" in row["detail"] and repr(text.strip())[:8] in row["detail"]
    for i, text in enumerate(NOT_FORMULA, start=len(FORMULA_LIKE)):
        assert rows[f"p{i}"]["valid"], (text, rows[f"p{i}"]["detail"])
    assert validate.metrics_of(table)["invalid_by_reason"]["formula_like"] == len(FORMULA_LIKE)


def test_validate_and_the_adjudication_guard_share_one_formula_rule() -> None:
    for text in FORMULA_LIKE + NOT_FORMULA + PAYLOADS:
        reason, _ = validate.check(label_studio_fields({**GOOD, "question": text}), True, demo_params("validate"))
        rejected = reason == "formula_like" and bool(text.strip())
        guarded = adjudication.guard(text.strip()) != text.strip() and not text.strip().startswith("'")
        assert rejected == guarded, text


def test_the_shipped_adjudication_file_has_the_header_adjudicate_writes_for_an_empty_queue() -> None:
    shipped = Path(__file__).resolve().parents[2] / "labels" / "adjudication.csv"
    assert shipped.read_bytes() == adjudication.encode([])


def test_readme_documents_every_validate_and_accept_count_once(tmp_path: Path) -> None:
    from tests.conftest import REPO

    rows = re.findall(r"^\| `(\w+)` \| (both|validate|accept) \|", (REPO / "README.md").read_text(), re.M)
    documented = {key: where for key, where in rows}
    assert len(documented) == len(rows), "a count is documented twice"
    accept_keys = set(_accept_main(tmp_path, tmp_path / "adjudication.csv"))
    table, *_ = _lead_world()
    validate_keys = set(validate.metrics_of(table))
    assert {k for k, w in documented.items() if w in ("both", "validate")} == validate_keys
    assert {k for k, w in documented.items() if w in ("both", "accept")} == accept_keys
    assert {k for k, w in documented.items() if w == "both"} == set(validate.SHARED_COUNTS)
