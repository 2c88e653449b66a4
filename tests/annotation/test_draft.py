"""Question drafts: a scripted VLM drafts for the tasks of a real pipeline run; invalid drafts stay out; a rerun
asks nothing; drafts reach a real Label Studio as pre-annotations, and what writers do with them in Chromium is
pulled as unchanged / edited / discarded."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from annotation import draft, pull, push, results, snapshot
from annotation.labelstudio import roles, server
from annotation.labelstudio.client import Client
from annotation.labelstudio.roles import WRITING
from annotation.tables import IDENTICAL_OPTIONS, SAME_ANSWER, UNKNOWN_PATTERN
from pipeline.core import patterns
from pipeline.images.display import display_name
from pipeline.params import ValidateParams
from tests.helpers.annotation_world import (
    ARTIFACTS,
    choose,
    chromium,
    labelstudio_section,
    login,
    new_page,
    open_task,
    run_pipeline,
    submit,
    wait_for_images,
)
from tests.helpers.journey_world import ScriptedVlm
from tests.helpers.params import merged, section

RULES = ValidateParams(options_ignore_case=True)
QUANTITY, COLOR = patterns.by_key("quantity").paper, patterns.by_key("color").paper


def _reply(question: str, answers: tuple[str, str] = ("(a)", "(b)"), options: tuple[str, str] = ("Two", "Three"),
           pattern: str = QUANTITY) -> dict[str, str]:
    return {"pattern": pattern, "question": question, "option_a": options[0], "option_b": options[1],
            "answer_a": answers[0], "answer_b": answers[1], "statement_a": "There are two dots.",
            "statement_b": "There are three dots."}


def test_a_reply_is_read_inside_code_fences_with_letters_and_pattern_spellings_made_the_forms() -> None:
    fenced = "Sure!\n```json\n" + json.dumps({**_reply("How many dots?"), "answer_a": "A", "answer_b": "(B)",
                                               "pattern": "quantity"}) + "\n```\nHope this helps."
    parsed, reason, _ = draft.check_reply(fenced, RULES)
    assert reason is None and parsed is not None
    assert (parsed["pattern"], parsed["answer_a"], parsed["answer_b"]) == (QUANTITY, "(a)", "(b)")
    assert set(parsed) == set(draft.FIELDS)


@pytest.mark.parametrize("reply, reason", [
    ("I think the left one has two dots.", draft.NOT_JSON),
    ("```json\n{\"question\": \"How many\", \n```", draft.NOT_JSON),
    ("[1, 2]", draft.NOT_JSON),
    (json.dumps(_reply("How many dots?", answers=("(a)", "(a)"))), SAME_ANSWER),
    (json.dumps(_reply("How many dots?", options=("Two", " two"))), IDENTICAL_OPTIONS),
    (json.dumps(_reply("How many dots?", pattern="Counting")), UNKNOWN_PATTERN),
    (json.dumps(_reply("")), "missing_question"),
])
def test_a_reply_that_is_no_valid_question_is_no_draft_and_says_why(reply: str, reason: str) -> None:
    parsed, found, detail = draft.check_reply(reply, RULES)
    assert parsed is None and found == reason and detail
    assert found in draft.REJECT_REASONS


def test_the_picture_shows_both_images_side_by_side_under_labels() -> None:
    import io

    from PIL import Image

    def solid(color: str, size: tuple[int, int]) -> bytes:
        out = io.BytesIO()
        Image.new("RGB", size, color).save(out, format="PNG")
        return out.getvalue()

    picture = Image.open(io.BytesIO(draft.side_by_side(solid("red", (200, 100)), solid("blue", (100, 200)), 100)))
    assert picture.height > 100 and picture.width > 200 + 50  # a label strip above, both panels beside each other
    row = picture.height - 50
    left = picture.getpixel((picture.width // 4, row))
    right = picture.getpixel((picture.width - 30, row))
    assert left[0] > 200 and left[2] < 50 and right[2] > 200 and right[0] < 50  # A (red) left, B (blue) right
    assert "Quantity and Count" in draft.prompt() and all(name in draft.prompt() for name in patterns.PAPER_NAMES)


@pytest.fixture(scope="module")
def drafted(tmp_path_factory: pytest.TempPathFactory, sample_corpus: Path) -> Iterator[dict[str, Any]]:
    """A real pipeline run, a scripted OpenAI-compatible VLM, and `clipblind draft` run once on the tasks."""
    root = tmp_path_factory.mktemp("draft")
    params_file, tasks = run_pipeline(sample_corpus, root)
    assert len(tasks) >= 5
    display = root / "data" / "display"
    shown = {}
    for task in tasks:
        images = [(display / display_name(task["data"][f"{m}_id"])).read_bytes() for m in ("image_a", "image_b")]
        shown[task["data"]["pair_id"]] = hashlib.sha256(draft.side_by_side(*images, 96)).hexdigest()
    pairs = [t["data"]["pair_id"] for t in tasks]
    script = {pairs[0]: "```json\n" + json.dumps(_reply("How many dots are there?")) + "\n```",
              pairs[1]: json.dumps(_reply("How many dots are below the door?", answers=("(b)", "(b)"))),
              pairs[2]: "Image A shows two dots.",
              pairs[3]: json.dumps(_reply("What colour is the door?", options=("Red", "red"), pattern=COLOR))}
    for k, pair in enumerate(pairs[4:]):
        script[pair] = json.dumps(_reply(f"What colour is door {k}?", ("(b)", "(a)"), ("Red", "Blue"), COLOR))
    vlm = ScriptedVlm({(draft.prompt(), shown[pair]): reply for pair, reply in script.items()})
    params = yaml.safe_load(params_file.read_text())
    params["draft"] = merged(section("draft"), {"panel_height": 96, "vlm": {
        "backend": "openai", "url": vlm.url, "model": "scripted", "max_new_tokens": 512, "timeout": 30,
        "api_key_env": "CLIPBLIND_TEST_NO_KEY"}})
    params_file.write_text(yaml.safe_dump(params))
    out, metrics = root / "data" / "drafts.json", root / "metrics" / "draft.json"
    args = ["--params", str(params_file), "--tasks", str(root / "data" / "tasks.json"), "--display", str(display),
            "--out", str(out), "--metrics", str(metrics), "--cache", str(root / "cache")]
    try:
        assert draft.main(args) == 0
        yield {"root": root, "params_file": params_file, "tasks": tasks, "pairs": pairs, "vlm": vlm, "args": args,
               "out": out, "metrics": metrics, "display": display}
    finally:
        vlm.close()


def test_draft_keeps_valid_drafts_counts_the_rest_and_a_rerun_asks_nothing(drafted: dict[str, Any]) -> None:
    pairs, vlm = drafted["pairs"], drafted["vlm"]
    assert len(vlm.asked) == len(pairs)  # one picture per pair, each asked once
    model, drafts = draft.read_drafts(drafted["out"])
    assert model == f"openai:{vlm.url}:scripted"
    assert sorted(drafts) == sorted([pairs[0], *pairs[4:]])  # same answers, no JSON, identical options: no draft
    assert drafts[pairs[0]]["question"] == "How many dots are there?" and drafts[pairs[0]]["answer_b"] == "(b)"
    metrics = json.loads(drafted["metrics"].read_text())
    assert metrics["accepted"] + metrics["rejected"] == metrics["inputs"] == len(pairs)
    assert {k: v for k, v in metrics["rejected_by_reason"].items() if v} == {
        draft.NOT_JSON: 1, SAME_ANSWER: 1, IDENTICAL_OPTIONS: 1}
    assert metrics["drafts_per_pattern"]["quantity"] == 1 and metrics["drafts_per_pattern"]["color"] == len(pairs) - 4
    assert metrics["calls"] == len(pairs)
    first = drafted["out"].read_bytes()
    assert draft.main(drafted["args"]) == 0
    assert len(vlm.asked) == len(pairs)  # answered from the cache: no model call
    assert json.loads(drafted["metrics"].read_text())["calls"] == 0
    assert drafted["out"].read_bytes() == first


def test_an_interrupted_run_resumes_where_it_stopped(drafted: dict[str, Any], tmp_path: Path) -> None:
    cache = Path(drafted["args"][drafted["args"].index("--cache") + 1])
    [cache_file] = cache.glob("*.jsonl")
    lines = cache_file.read_text().splitlines()
    # killed while writing the third reply: two whole lines and half a line are left
    cache_file.write_text("\n".join(lines[:2]) + "\n" + lines[2][: len(lines[2]) // 2])
    before = len(drafted["vlm"].asked)
    assert draft.main(drafted["args"]) == 0
    assert len(drafted["vlm"].asked) - before == len(lines) - 2
    assert json.loads(drafted["metrics"].read_text())["accepted"] == len(drafted["pairs"]) - 3


def test_a_draft_edited_into_an_invalid_question_is_refused_by_name() -> None:
    good = json.loads(json.dumps(_reply("How many dots?")))
    kept, refused = draft.still_valid({"p1": good, "p2": {**good, "option_b": "TWO"}}, RULES)
    assert list(kept) == ["p1"]
    assert len(refused) == 1 and "'p2'" in refused[0] and IDENTICAL_OPTIONS in refused[0]


def test_a_drafts_file_of_another_shape_is_refused_with_the_fix(tmp_path: Path) -> None:
    bad = tmp_path / "drafts.json"
    bad.write_text(json.dumps({"version": 1, "model": "m", "drafts": {"p1": {"question": "Which?"}}}))
    with pytest.raises(draft.DraftError, match="'p1'.*clipblind draft"):
        draft.read_drafts(bad)


def test_a_draft_becomes_a_prediction_filling_every_writing_field() -> None:
    pred = push.prediction({**_reply("How many dots?"), "answer_b": "(b)"}, "m1")
    values = results.fields(pred["result"])
    assert pred["model_version"] == "m1"
    assert {name: values[name] for name in draft.FIELDS} == {name: [v] for name, v in _reply("How many dots?").items()}
    to_name = {r["from_name"]: r["to_name"] for r in pred["result"]}
    assert to_name["answer_b"] == "image_b" and to_name["statement_b"] == "image_b" and to_name["question"] == "image_a"
    from label_studio_sdk.label_interface import LabelInterface

    assert LabelInterface(push.writing_config()).validate_prediction(pred, return_errors=True) == []


def test_draft_outcomes_are_defined_on_the_results() -> None:
    drafted = push.prediction(_reply("How many dots?"), "m")["result"]

    def edit(**changed: str) -> list[dict[str, Any]]:
        return push.prediction({**_reply("How many dots?"), **changed}, "m")["result"]

    assert snapshot.draft_outcome(drafted, edit()) == snapshot.DRAFT_UNCHANGED
    assert snapshot.draft_outcome(drafted, edit(question="how many  DOTS?")) == snapshot.DRAFT_EDITED
    assert snapshot.draft_outcome(drafted, edit(option_b="Four")) == snapshot.DRAFT_EDITED
    assert snapshot.draft_outcome(drafted, edit(statement_a="")) == snapshot.DRAFT_EDITED
    assert snapshot.draft_outcome(drafted, edit(question="Which door is open?")) == snapshot.DRAFT_DISCARDED
    rejected = drafted + [{"from_name": "reject", "to_name": "image_a", "type": "choices",
                           "value": {"choices": ["Reject pair"]}}]
    assert snapshot.draft_outcome(drafted, rejected) == snapshot.DRAFT_DISCARDED


# ---- on the real servers, in the browser ----------------------------------------------------------------------------

WRITER = ("drafts-writer@example.org", "drafts-writer-pass-1")


@contextmanager
def servers(root: Path, params_file: Path) -> Iterator[Any]:
    """Both Label Studio servers for the params in `params_file` (its labelstudio section set here), stopped by PID."""
    params = yaml.safe_load(params_file.read_text())
    params["labelstudio"] = labelstudio_section(root)
    params_file.write_text(yaml.safe_dump(params))
    ls = server.load_params(params_file)
    started = server.start(ls, root / "data" / "display")
    try:
        yield ls
    finally:
        pids = {role: pid for role, (pid, _) in started.items()}
        assert server.stop(ls) == pids


@pytest.fixture(scope="module")
def served(drafted: dict[str, Any]) -> Iterator[dict[str, Any]]:
    with servers(drafted["root"], drafted["params_file"]) as ls:
        yield {**drafted, "ls": ls, "client": Client.from_params(ls, WRITING), "url": roles.server(ls, WRITING).url}


def _push(world: dict[str, Any], drafts: Path) -> dict[str, Any]:
    root = world["root"]
    metrics = root / "metrics" / "push.json"
    assert push.main(["--params", str(world["params_file"]), "--tasks", str(root / "data" / "tasks.json"),
                      "--display", str(world["display"]), "--drafts", str(drafts), "--metrics", str(metrics)]) == 0
    return dict(json.loads(metrics.read_text()))


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.browser
def test_drafts_arrive_filled_in_and_the_writers_choices_are_pulled_as_outcomes(served: dict[str, Any]) -> None:
    client, ls, pairs, url, root = served["client"], served["ls"], served["pairs"], served["url"], served["root"]
    model, drafts = draft.read_drafts(served["out"])
    metrics = _push(served, served["out"])
    assert (metrics["imported"], metrics["drafted"], metrics["drafts_left_out"]) == (len(pairs), len(drafts), 0)
    project = client.project_by_title(ls.writing_project)
    assert project["show_collab_predictions"] is True and project["model_version"] == model
    tasks = {t["data"]["pair_id"]: t for t in client.tasks(project["id"])}
    assert {p for p, t in tasks.items() if t["total_predictions"]} == set(drafts)  # invalid drafts were never pushed
    assert all(t["data"]["feedback"] == "" for t in tasks.values())
    predictions = client.request("GET", "/api/predictions/", params={"project": project["id"]})
    by_task = {p["task"]: results.fields(p["result"]) for p in predictions}
    first = drafts[pairs[0]]
    assert by_task[tasks[pairs[0]]["id"]] == {name: [value] for name, value in first.items()}
    assert _push(served, served["out"])["drafted"] == 0  # pushing again adds no second draft

    server.add_user(ls, *WRITER, "writer")
    edited, unchanged, discarded = pairs[0], pairs[4], pairs[5]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with chromium() as browser:
        page = new_page(browser)
        login(page, url, *WRITER)
        for pair in (edited, unchanged, discarded):
            open_task(page, url, project["id"], tasks[pair]["id"], "#field-question")
            wait_for_images(page)
            # the form opens filled in with the draft: the writer sees every field before touching anything
            page.wait_for_function("t => document.body.innerText.includes(t)",
                                   arg=drafts[pair]["question"], timeout=30_000)
            shown = page.inner_text("body")
            assert all(drafts[pair][name] in shown for name in ("option_a", "option_b", "statement_a", "statement_b"))
            for panel, name in (("field-pattern", "pattern"), ("field-answer-a", "answer_a"),
                                ("field-answer-b", "answer_b")):
                assert page.locator(f'#{panel} input[name="{drafts[pair][name]}"]').is_checked()
            if pair == edited:
                page.screenshot(path=str(ARTIFACTS / "drafted.png"), full_page=True)
                choose(page, "field-pattern", patterns.by_key("spatial").paper)
            if pair == discarded:
                choose(page, "field-reject", "Reject pair")
            submit(page)
    # a task without a draft, written by hand
    undrafted = tasks[pairs[1]]["id"]
    client.request("POST", f"/api/tasks/{undrafted}/annotations/", json={"lead_time": 40.0, "result": [
        {"from_name": "question", "to_name": "image_a", "type": "textarea", "value": {"text": ["Which door is open?"]}}]})

    out, pulled = root / "labels" / "writing.json", root / "metrics" / "pull_writing.json"
    args = ["writing", "--params", str(served["params_file"]), "--out", str(out), "--metrics", str(pulled)]
    assert pull.main(args) == 0
    first_bytes = out.read_bytes()
    assert pull.main(args) == 0 and out.read_bytes() == first_bytes
    snap = snapshot.read_snapshot(out)
    kept = {t["data"]["pair_id"]: t for t in snap["tasks"]}
    assert set(kept) == {edited, unchanged, discarded, pairs[1]}
    assert "draft" not in kept[pairs[1]] and "feedback" not in kept[pairs[1]]["data"]
    assert kept[edited]["draft"]["model_version"] == model
    assert results.fields(kept[edited]["draft"]["result"]) == {k: [v] for k, v in drafts[edited].items()}
    outcome = {pair: snapshot.draft_outcome(kept[pair]["draft"]["result"], kept[pair]["annotations"][0]["result"])
               for pair in (edited, unchanged, discarded)}
    assert outcome == {edited: snapshot.DRAFT_EDITED, unchanged: snapshot.DRAFT_UNCHANGED,
                       discarded: snapshot.DRAFT_DISCARDED}
    written = results.fields(kept[edited]["annotations"][0]["result"])
    assert written["pattern"] == [patterns.by_key("spatial").paper] and written["question"] == [drafts[edited]["question"]]

    counts = json.loads(pulled.read_text())["drafts"]
    assert counts["drafted_tasks"] == len(drafts)
    assert (counts["unchanged"], counts["edited"], counts["discarded"]) == (1, 1, 1)
    assert counts["unchanged"] + counts["edited"] + counts["discarded"] == counts["annotated"] == 3
    per_pattern = counts["per_pattern"]
    assert per_pattern["quantity"] == {"unchanged": 0, "edited": 1, "discarded": 0}  # the draft's pattern, not the edit
    assert per_pattern["color"] == {"unchanged": 1, "edited": 0, "discarded": 1}
    assert sum(sum(c.values()) for c in per_pattern.values()) == counts["annotated"]
    seconds = counts["seconds_per_task"]
    assert seconds["with_draft"]["annotations"] == 3 and seconds["with_draft"]["mean"] > 0
    assert seconds["without_draft"] == {"annotations": 1, "mean": 40.0, "median": 40.0}


@pytest.mark.slow
@pytest.mark.server
def test_a_task_pushed_before_its_draft_gets_it_while_nobody_has_annotated_it(served: dict[str, Any]) -> None:
    client, ls, pairs = served["client"], served["ls"], served["pairs"]
    model, drafts = draft.read_drafts(served["out"])
    late_pair = pairs[6]
    project = client.project_by_title(ls.writing_project)
    task = next(t for t in client.tasks(project["id"]) if t["data"]["pair_id"] == late_pair)
    for pred in client.request("GET", "/api/predictions/", params={"task": task["id"]}):
        client.request("DELETE", f"/api/predictions/{pred['id']}/")
    # a drafts file edited by hand into an invalid question: push refuses that draft, the task stays without one
    edited = served["root"] / "data" / "drafts-edited.json"
    edited.write_bytes(draft.encode(model, {**drafts, late_pair: {**drafts[late_pair], "answer_b": "(b)",
                                                                  "answer_a": "(b)"}}))
    refused = _push(served, edited)
    assert (refused["drafted"], refused["drafts_invalid"]) == (0, 1)
    assert client.request("GET", "/api/predictions/", params={"task": task["id"]}) == []
    assert _push(served, served["out"])["drafted"] == 1
    [pred] = client.request("GET", "/api/predictions/", params={"task": task["id"]})
    assert results.fields(pred["result"]) == {k: [v] for k, v in drafts[late_pair].items()}
    assert pred["model_version"] == model
