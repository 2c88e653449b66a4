"""The annotators' workbench, measured in a real Chromium against a real Label Studio: both images whole at
three window sizes, the form beside them, no hotkey fired from a text box, feedback shown, statements labelled.

Images are 4:3 and 3:4, large (1024 px, as export writes them) and small (240 px, smaller than any frame:
Label Studio scales those up to the frame, which is where its zoom toolbar used to push them over the edge),
so a crop on either axis shows. Screenshots and measured boxes:
artifacts/annotation/workbench/<project>_<width>x<height>_<pair>.png and .json.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image, ImageDraw

from annotation import push, push_verification
from annotation.feedback import RETURNED_TAB
from annotation.labelstudio import roles, server
from annotation.labelstudio.client import Client
from annotation.snapshot import FEEDBACK_FIELD
from tests.helpers.annotation_world import (
    ARTIFACTS,
    URL_PREFIX,
    choose,
    chromium,
    crops,
    image_boxes,
    labelstudio_section,
    login,
    open_task,
    wait_for_images,
)

pytestmark = [pytest.mark.slow, pytest.mark.server, pytest.mark.browser]

# Each project's annotator: an account of that project's server.
ANNOTATORS = {"writer": ("writer@example.org", "writer-pass-1"), "verifier": ("verifier@example.org", "verifier-pass-1")}
ACCOUNT = {roles.WRITING: "writer", roles.VERIFICATION: "verifier"}
SHOTS = ARTIFACTS / "workbench"
SIZES = ((1280, 800), (1440, 900), (1920, 1080))
# pair -> (image A size, image B size)
PAIRS = {"large": ((1024, 768), (768, 1024)), "small": ((240, 180), (180, 240))}
FEEDBACK = ("Same answer for both images: the correct option must differ between image A and image B. "
            "Rewrite the question or the options so that one image answers (a) and the other (b). ") * 3
# The first control an annotator fills in each project.
FIRST_FIELD = {roles.WRITING: "textarea[name=question]", roles.VERIFICATION: "#field-verify-a input"}


def _image(path: Path, size: tuple[int, int]) -> None:
    """A white image with a red frame and a word in each corner: any crop cuts a frame edge or a word."""
    im = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(im)
    draw.rectangle([0, 0, size[0] - 1, size[1] - 1], outline="red", width=max(2, size[0] // 100))
    font = max(10, size[0] // 16)
    for x, y, word in ((0.04, 0.04, "OPEN"), (0.7, 0.04, "STOP"), (0.04, 0.88, "EXIT"), (0.7, 0.88, "PUSH")):
        draw.text((x * size[0], y * size[1]), word, fill="black", font_size=font)
    im.save(path, quality=90)


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Both servers running, each project with one task per pair and an annotator; stopped by PID at the end."""
    root = tmp_path_factory.mktemp("workbench")
    display = root / "data" / "display"
    display.mkdir(parents=True)
    writing, verification = [], []
    for pair, (size_a, size_b) in PAIRS.items():
        _image(display / f"{pair}_a.jpg", size_a)
        _image(display / f"{pair}_b.jpg", size_b)
        images = {"image_a": f"{URL_PREFIX}{pair}_a.jpg", "image_b": f"{URL_PREFIX}{pair}_b.jpg"}
        writing.append({"data": {"pair_id": pair, **images, "clip_sim": 0.97, "dino_sim": 0.61}})
        verification.append({"data": {"question_id": f"{pair}-q", "pair_id": pair, **images,
                                      "question": "Is the door open or closed?", "option_a": "Open",
                                      "option_b": "Closed"}})
    params_file = root / "params.yaml"
    params_file.write_text(yaml.safe_dump({"labelstudio": labelstudio_section(root)}))
    ls = server.load_params(params_file)
    started = server.start(ls, display)
    assert all(new for _, new in started.values())
    pids = {role: pid for role, (pid, _) in started.items()}
    try:
        lead = {role: Client.from_params(ls, role) for role in roles.SERVERS}
        projects = {
            roles.WRITING: push.push(lead[roles.WRITING], ls, writing, display)["project_id"],
            # as push-verification pushes them (its tasks come from validate's table; here written directly)
            roles.VERIFICATION: push.sync(lead[roles.VERIFICATION], ls.verification_project,
                                          push_verification.VERIFICATION_CONFIG.read_text(),
                                          push_verification.VERIFICATION_GUIDELINES.read_text(),
                                          {"maximum_annotations": 1}, verification, display,
                                          key="question_id")["project_id"],
        }
        # each project's instructions are its own: verifiers are never told the two answers must differ
        shown = {role: lead[role].project_by_title(title)["expert_instruction"]
                 for role, title in ((roles.WRITING, ls.writing_project), (roles.VERIFICATION, ls.verification_project))}
        assert "They must differ" in shown[roles.WRITING] and "must differ" not in shown[roles.VERIFICATION]
        assert "for each image alone" in shown[roles.VERIFICATION]
        tasks = {role: {t["data"]["pair_id"]: t for t in lead[role].tasks(projects[role])} for role in roles.SERVERS}
        returned = tasks[roles.WRITING]["small"]  # sent back by validation, as `clipblind feedback` does it
        lead[roles.WRITING].request("PATCH", f"/api/tasks/{returned['id']}/",
                                    json={"data": {**returned["data"], FEEDBACK_FIELD: FEEDBACK}})
        for account, (email, password) in ANNOTATORS.items():
            server.add_user(ls, email, password, account)
        with chromium() as browser:
            yield {"ls": ls, "projects": projects, "browser": browser,
                   "tasks": {role: {pair: t["id"] for pair, t in by_pair.items()} for role, by_pair in tasks.items()}}
    finally:
        assert server.stop(ls) == pids


def _open(bench: dict[str, Any], project: str, pair: str, size: tuple[int, int]) -> Any:
    """The project's annotator, logged in at window `size`, looking at `pair`'s task (or, for pair "", the
    labeling stream's first task, its instructions closed) with both images loaded."""
    url = roles.server(bench["ls"], project).url
    page = bench["browser"].new_context(viewport={"width": size[0], "height": size[1]}).new_page()
    login(page, url, *ANNOTATORS[ACCOUNT[project]])
    if pair:
        open_task(page, url, bench["projects"][project], bench["tasks"][project][pair], FIRST_FIELD[project])
    else:
        page.goto(f"{url}/projects/{bench['projects'][project]}/data?labeling=1")
        page.wait_for_selector(FIRST_FIELD[project], timeout=90_000)
        page.keyboard.press("Escape")
    wait_for_images(page)
    page.wait_for_timeout(500)  # Label Studio sizes the images after they load
    return page


def _checked(page: Any) -> list[bool]:
    return list(page.evaluate("() => [...document.querySelectorAll('.lsf-choices input')].map(i => i.checked)"))


@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
@pytest.mark.parametrize("project", roles.SERVERS)
def test_both_images_are_shown_whole_side_by_side_with_the_form_beside(
    bench: dict[str, Any], project: str, size: tuple[int, int]
) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    for pair, (size_a, size_b) in PAIRS.items():
        page = _open(bench, project, pair, size)
        try:
            shot = SHOTS / f"{project}_{size[0]}x{size[1]}_{pair}.png"
            page.screenshot(path=str(shot))
            boxes = image_boxes(page)
            shot.with_suffix(".json").write_text(json.dumps(boxes, indent=1))  # the measured boxes, kept with it
            assert [b["natural"] for b in boxes] == [list(size_a), list(size_b)]
            assert crops(boxes) == [], f"{project} at {size}, pair {pair}: {boxes} (see {shot})"
            a, b = (box["drawn"] for box in boxes)
            assert a[0] + a[2] <= b[0] and abs(a[1] - b[1]) < 2  # side by side, tops aligned
            assert min(a[2], b[2]) >= 200  # and not shrunk to thumbnails
            field = page.locator(FIRST_FIELD[project]).first.bounding_box()
            if size == (1440, 900):
                # the first field is on screen without scrolling
                assert field is not None and 0 <= field["y"] and field["y"] + field["height"] <= size[1]
            # the unused side panels (regions, relations, info) are gone
            assert page.locator(".lsf-sidepanels__wrapper").evaluate_all(
                "els => els.every(e => e.getBoundingClientRect().width === 0)")
            assert shot.stat().st_size > 10_000
        finally:
            page.context.close()
    # the same in the labeling stream ("Label All Tasks"), where the task list is not shown
    page = _open(bench, project, "", size)
    try:
        boxes = image_boxes(page)
        assert crops(boxes) == [], f"{project} stream at {size}: {boxes}"
        page.screenshot(path=str(SHOTS / f"{project}_{size[0]}x{size[1]}_stream.png"))
    finally:
        page.context.close()


def test_typing_in_text_boxes_toggles_no_choice_and_answers_are_single_select(bench: dict[str, Any]) -> None:
    page = _open(bench, roles.WRITING, "large", (1440, 900))
    try:
        before = _checked(page)
        assert len(before) >= 20 and not any(before)
        typed = "ab1 2 3q we? 0 9 tz"
        for name in ("question", "option_a", "statement_a", "reject_reason"):
            area = page.locator(f"textarea[name={name}]")
            area.click()
            area.press_sequentially(typed)
            assert area.input_value() == typed  # every key reached the text box
            assert _checked(page) == before, f"typing in {name} toggled a choice"
        # answers: a second pick replaces the first
        choose(page, "field-answer-a", "(a)")
        choose(page, "field-answer-a", "(b)")
        assert page.locator('#field-answer-a input[name="(a)"]').is_checked() is False
        assert page.locator('#field-answer-a input[name="(b)"]').is_checked() is True
        choose(page, "field-pattern", page.locator("#field-pattern input").first.get_attribute("name"))
        choose(page, "field-pattern", page.locator("#field-pattern input").nth(1).get_attribute("name"))
        assert [i.is_checked() for i in page.locator("#field-pattern input").all()][:2] == [False, True]
        # no hotkey hints on the choices
        assert page.locator(".lsf-choices .lsf-hint:visible").count() == 0
    finally:
        page.context.close()


def test_feedback_notice_shows_only_when_set_and_wraps_and_statements_are_labelled(bench: dict[str, Any]) -> None:
    for pair in PAIRS:
        page = _open(bench, roles.WRITING, pair, (1280, 800))
        try:
            notice = page.locator("#field-feedback")
            if pair == "small":
                text = notice.inner_text().strip()
                assert text.startswith(f"{RETURNED_TAB}:") and FEEDBACK.strip()[:60] in text
                # wrapped inside the form column: no horizontal overflow, many lines
                box = notice.bounding_box()
                form = page.locator("#field-question").bounding_box()
                assert box is not None and form is not None and box["width"] <= form["width"] + 1
                assert notice.evaluate("e => e.scrollWidth <= e.clientWidth + 1")
                assert box["height"] > 60
                assert box["y"] < form["y"]  # at the top of the form
            else:
                assert not notice.is_visible()  # no feedback: no notice, not even its title
            statements = page.locator("#field-statements").inner_text()
            assert "Statement true of image A only" in statements and "Statement true of image B only" in statements
        finally:
            page.context.close()
