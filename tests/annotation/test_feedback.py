"""Feedback to writers, on the real servers and in Chromium: a question with the same answer for both images is
rejected by validate, the reason lands in its writing task, the writer finds the task in the data manager, sees
the notice, fixes the answer and updates; pulled and validated again it is valid, and the notice is cleared. The
verification project never sees feedback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from annotation import feedback, push, push_verification, validate
from annotation.labelstudio import roles, server
from annotation.labelstudio.client import Client
from annotation.labelstudio.roles import VERIFICATION, WRITING
from annotation.snapshot import FEEDBACK_FIELD
from annotation.tables import PAIR_REJECTED, SAME_ANSWER
from pipeline.core import patterns, schemas
from tests.annotation.test_draft import servers
from tests.helpers.annotation_world import (
    ARTIFACTS,
    choose,
    chromium,
    login,
    new_page,
    open_task,
    pull_and_validate,
    run_pipeline,
    submit,
    wait_for_images,
)

WRITER = ("feedback-writer@example.org", "feedback-writer-pass-1")
QUANTITY = patterns.by_key("quantity").paper


def test_every_reject_reason_has_a_message_for_the_writer() -> None:
    from annotation.tables import INVALID_REASONS

    assert set(validate.MESSAGES) == set(INVALID_REASONS) and all(validate.MESSAGES.values())
    assert feedback.message(SAME_ANSWER, "both images have answer (a)") == (
        f"{validate.MESSAGES[SAME_ANSWER]} (both images have answer (a))")
    rows = [{"task_id": 1, "annotation_id": 2, "valid": False, "reason": SAME_ANSWER, "detail": "d"},
            {"task_id": 1, "annotation_id": 1, "valid": False, "reason": "missing_option", "detail": None},
            {"task_id": 2, "annotation_id": 3, "valid": False, "reason": PAIR_REJECTED, "detail": "no difference"},
            {"task_id": 3, "annotation_id": 4, "valid": True, "reason": None, "detail": None}]
    table = _table(rows)
    assert feedback.feedback_by_task(table) == {
        1: f"{validate.MESSAGES['missing_option']}\n{validate.MESSAGES[SAME_ANSWER]} (d)"}


def _table(rows: list[dict[str, Any]]) -> Any:
    empty = {f.name: None for f in schemas.ANNOTATIONS}
    defaults = {"question_id": "q", "pair_id": "p", "writer": "w", "image_a": "", "image_b": "", "image_a_url": "",
                "image_b_url": "", "pattern": "", "tags": [], "question": "", "option_a": "", "option_b": "",
                "answer_a": "", "answer_b": ""}
    import pyarrow as pa

    return pa.Table.from_pylist([{**empty, **defaults, **row} for row in rows], schema=schemas.ANNOTATIONS)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, sample_corpus: Path) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("feedback")
    params_file, tasks = run_pipeline(sample_corpus, root)
    with servers(root, params_file) as ls:
        display = root / "data" / "display"
        assert push.main(["--params", str(params_file), "--tasks", str(root / "data" / "tasks.json"),
                          "--display", str(display), "--drafts", str(root / "data" / "drafts.json"),
                          "--metrics", str(root / "metrics" / "push.json")]) == 0
        yield {"root": root, "params_file": params_file, "ls": ls, "tasks": tasks, "display": display,
               "client": Client.from_params(ls, WRITING), "url": roles.server(ls, WRITING).url}


def _pull_validate_feedback(world: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """pull → validate → feedback, as the lead runs them; return (validate's rows by pair, feedback's metrics)."""
    root, params_file = world["root"], world["params_file"]
    data, metrics = root / "data", root / "metrics"
    pull_and_validate(root, params_file)
    assert feedback.main(["--params", str(params_file), "--annotations", str(data / "annotations.parquet"),
                          "--metrics", str(metrics / "feedback.json")]) == 0
    rows = schemas.read_table(data / "annotations.parquet", "annotations").to_pylist()
    return {r["pair_id"]: r for r in rows}, json.loads((metrics / "feedback.json").read_text())


def _type(page: Any, name: str, text: str) -> None:
    """Type into a text control (a one-row control is an <input>, a taller one a <textarea>) and add the text."""
    field = page.locator(f"textarea[name={name}], input[name={name}]")
    field.click()
    field.type(text)
    field.locator("xpath=ancestor::form[1]").get_by_role("button", name="Add").click()


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.browser
def test_a_rejected_question_goes_back_to_its_writer_and_comes_back_valid(world: dict[str, Any]) -> None:
    client, ls, tasks, url, root = world["client"], world["ls"], world["tasks"], world["url"], world["root"]
    project = client.project_by_title(ls.writing_project)
    remote = {t["data"]["pair_id"]: t for t in client.tasks(project["id"])}
    assert all(t["data"][FEEDBACK_FIELD] == "" for t in remote.values())  # push gives every task an empty notice
    wrong, right = tasks[0]["data"]["pair_id"], tasks[1]["data"]["pair_id"]
    server.add_user(ls, *WRITER, "writer")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with chromium() as browser:
        page = new_page(browser)
        login(page, url, *WRITER)
        for pair, answer_b in ((wrong, "(a)"), (right, "(b)")):
            open_task(page, url, project["id"], remote[pair]["id"], "#field-question")
            wait_for_images(page)
            choose(page, "field-pattern", QUANTITY)
            for name, text in (("question", "How many dots are there?"), ("option_a", "Two"), ("option_b", "Three")):
                _type(page, name, text)
            choose(page, "field-answer-a", "(a)")
            choose(page, "field-answer-b", answer_b)
            submit(page)

        rows, metrics = _pull_validate_feedback(world)
        assert (rows[wrong]["valid"], rows[wrong]["reason"], rows[right]["valid"]) == (False, SAME_ANSWER, True)
        notice = feedback.message(SAME_ANSWER, rows[wrong]["detail"])
        returned_annotation = rows[wrong]["annotation_id"]
        assert (metrics["returned"], metrics["set"], metrics["cleared"]) == (1, 1, 0)
        assert metrics["unchanged"] == len(tasks) - 1 and metrics["inputs"] == 2
        after = {t["data"]["pair_id"]: t for t in client.tasks(project["id"])}
        assert {p: t["data"][FEEDBACK_FIELD] for p, t in after.items() if t["data"][FEEDBACK_FIELD]} == {wrong: notice}
        assert all(after[p]["data"][k] == v for p in after for k, v in remote[p]["data"].items() if k != FEEDBACK_FIELD)

        # the data manager's tab lists exactly the returned task, for every member of the project
        [tab] = [v for v in client.request("GET", "/api/dm/views/", params={"project": project["id"]})
                 if v["data"]["title"] == feedback.RETURNED_TAB]
        listed = client.request("GET", "/api/tasks/", params={"project": project["id"], "view": tab["id"]})
        assert [t["id"] for t in listed["tasks"]] == [remote[wrong]["id"]]

        # the verification project gets the valid question only, and no task there carries feedback
        assert push_verification.main(["--params", str(world["params_file"]), "--annotations",
                                       str(root / "data" / "annotations.parquet"), "--display", str(world["display"]),
                                       "--metrics", str(root / "metrics" / "verify_push.json")]) == 0
        verifying = Client.from_params(ls, VERIFICATION)
        verification = verifying.tasks(verifying.project_by_title(ls.verification_project)["id"])
        assert [t["data"]["pair_id"] for t in verification] == [right]
        assert all(FEEDBACK_FIELD not in t["data"] for t in verification)

        # the writer opens the task from that tab, reads the notice, fixes the answer and updates
        page.goto(f"{url}/projects/{project['id']}/data")
        page.get_by_text(feedback.RETURNED_TAB).first.click()
        page.wait_for_url(f"**tab={tab['id']}**", timeout=30_000)
        page.goto(f"{url}/projects/{project['id']}/data?tab={tab['id']}&task={remote[wrong]['id']}")
        page.wait_for_selector("#field-answer-b", timeout=90_000)
        wait_for_images(page)
        page.wait_for_function("t => document.body.innerText.includes(t)", arg=validate.MESSAGES[SAME_ANSWER],
                               timeout=30_000)
        assert page.locator("#field-feedback").is_visible()
        page.screenshot(path=str(ARTIFACTS / "feedback.png"), full_page=True)
        choose(page, "field-answer-b", "(b)")
        submit(page, "Update", "PATCH")

    rows, metrics = _pull_validate_feedback(world)
    assert rows[wrong]["valid"] is True and rows[wrong]["answer_b"] == "(b)"
    assert rows[wrong]["annotation_id"] == returned_annotation  # the writer's own annotation, updated
    assert (metrics["returned"], metrics["set"], metrics["cleared"]) == (0, 0, 1)
    assert all(t["data"][FEEDBACK_FIELD] == "" for t in client.tasks(project["id"]))
    listed = client.request("GET", "/api/tasks/", params={"project": project["id"], "view": tab["id"]})
    assert listed["tasks"] == []
    _, again = _pull_validate_feedback(world)  # nothing changed: nothing is written
    assert (again["set"], again["cleared"], again["unchanged"]) == (0, 0, len(tasks))
