"""The journey: corpus → `dvc repro` → Label Studio in a real browser → release → readers, twice.

One test walks the path a benchmark maker walks, in a temp copy of this repository, with real
stage outputs only (nothing in the chain is a hand-made table): the sample corpus stage (made
smaller through its `--scenes` option), `dvc repro`, `clipblind labelstudio start`, `add-user`,
`clipblind draft` against a scripted model, `push`, a writer (who keeps one draft, edits one and discards
one) and a verifier in Chromium, `pull`, `clipblind feedback`, `push-verification`, `adjudicate`, the
release read by `sha256sum -c`, `datasets.load_dataset` offline, MMVP's own reading and scoring
logic (tests/helpers/mmvp_oracle.py) and `clipblind evaluate` against a scripted model; then a second
round (a question validation returned fixed by its writer from the "Returned by validation" tab, two more
pairs written, all three verified, one released answer corrected by the lead with
`clipblind adjudicate --correct`) that changes the release, which stays unreleased until the
version is bumped and the changelog names the changes, and `clipblind tag`. `dvc exp run` is tried after each round.

The journey walks a copy of the working tree, or of the git revision named by
CLIPBLIND_JOURNEY_REV. Run with `-s` to see the wall time of every step; artifacts/journey/ keeps it (timings.md)
and the screenshots.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml

from annotation import draft as drafting
from annotation import feedback
from annotation.labelstudio.roles import SERVERS, VERIFICATION, WRITING
from annotation.labelstudio.roles import server as server_of
from annotation.snapshot import DRAFT_DISCARDED, DRAFT_EDITED, DRAFT_OUTCOMES, DRAFT_UNCHANGED, FEEDBACK_FIELD
from annotation.tables import FORMULA_LIKE, SAME_ANSWER
from annotation.validate import MESSAGES, SHARED_COUNTS
from pipeline.core import patterns
from pipeline.core.patterns import ANSWERS
from pipeline.diagnostics import records, report
from pipeline.images.display import display_name
from pipeline.release import folder as release
from tests.helpers import mmvp_oracle
from tests.helpers.annotation_world import chromium, new_page
from tests.helpers.journey_world import (
    ARTIFACTS,
    Question,
    ScriptedVlm,
    Timings,
    Verifier,
    Workspace,
    Writer,
    copy_repository,
    free_port,
    pixels_sha256,
)

pytestmark = [pytest.mark.slow, pytest.mark.server, pytest.mark.browser]

SCENES = 16  # the sample corpus: 16 scenes × 9 variants (the shipped stage makes 40)
WRITER = ("writer@example.org", "writer-pass-1")
VERIFIER = ("verifier@example.org", "verifier-pass-1")
MARKUP = "<b>bold</b> & <i>"  # must reach the release byte-exact
FORMULA = "-5 or +5: which way does the arrow turn?"  # a spreadsheet would evaluate it: validate refuses it
# mine.dino_threshold of each `dvc exp run`: each different, so each mines again (DVC's run cache would skip it)
EXPERIMENT_DINO = {"after round 1": "0.92", "on the unreleased build": "0.91", "after the bump": "0.93"}
RELEASE = "data/release"
SHUFFLE_GRIDS, SHUFFLE_K = (2, 4), 2  # diagnose.shuffle for the journey: 7 model calls per question
SOURCE_ENV = "CLIPBLIND_JOURNEY_REV"  # a git revision to walk instead of the working tree (e.g. HEAD)


def nine_questions(shown: list[str]) -> list[Question]:
    """One question per pattern, the pattern picked by the name the labeling config shows."""
    questions = []
    for k, name in enumerate(shown):
        key = patterns.lookup(name).key
        first, second = ANSWERS if k % 2 == 0 else ANSWERS[::-1]
        text = f"Which {key.replace('_', ' ')} detail does the {MARKUP} sign show?" if k == 0 else \
            f"Which {key.replace('_', ' ')} does this picture have?"
        questions.append(Question(
            pattern=name, question=text, option_a=f"{MARKUP} left" if k == 0 else f"{key} one",
            option_b=f"{key} two", answer_a=first, answer_b=second,
            statement_a=f"The {key} of the first picture.", statement_b=f"The {key} of the second picture.",
        ))
    return questions


def draft_reply(q: Question) -> str:
    """The scripted model's draft of `q`, as a model writes it: JSON inside a code fence."""
    fields = {"pattern": q.pattern, "question": q.question, "option_a": q.option_a, "option_b": q.option_b,
              "answer_a": q.answer_a, "answer_b": q.answer_b, "statement_a": q.statement_a, "statement_b": q.statement_b}
    return "```json\n" + json.dumps(fields) + "\n```"


def run_draft(ws: Workspace, tasks: list[dict[str, Any]], script: dict[str, str]) -> None:
    """`clipblind draft` against an OpenAI-compatible model replying `script[pair_id]` to the picture of that pair
    (anything else: no JSON), set in params.yaml's draft.vlm by a hand edit."""
    height = yaml.safe_load(ws.path("params.yaml").read_text())["draft"]["panel_height"]
    display = ws.path("data/display")
    prompt = drafting.prompt().split("\nOptions:", 1)[0]
    replies = {}
    for task in tasks:
        if task["data"]["pair_id"] in script:
            a, b = ((display / display_name(task["data"][f"{m}_id"])).read_bytes() for m in ("image_a", "image_b"))
            replies[(prompt, _sha256(drafting.side_by_side(a, b, height)))] = script[task["data"]["pair_id"]]
    assert len(replies) == len(script)
    vlm = ScriptedVlm(replies)
    try:
        ws.set_param("draft", "vlm", f'{{backend: openai, url: "{vlm.url}", model: scripted, max_new_tokens: 512, '
                                     'api_key_env: JOURNEY_NO_KEY, timeout: 120}')
        ws.clipblind("draft (scripted VLM)", "draft")
    finally:
        vlm.close()
    assert len(vlm.asked) == len(tasks), "one picture per pair"


def _reply(k: int, member: int, truth: str) -> str:
    """The scripted model: right on image a; on image b right for even k, else wrong or no answer."""
    if member == 1 and k % 2 == 1:
        return "I cannot tell." if k == 7 else ANSWERS[1 - ANSWERS.index(truth)]
    shape = ("{}", "Answer: {}", "The answer is {}.")[k % 3]
    return shape.format(truth)


def _letter(reply: str) -> str | None:
    """The one answer letter a scripted reply names (None: neither or both)."""
    named = [letter for letter in ANSWERS if letter in reply]
    return named[0] if len(named) == 1 else None


def _release_rows(ws: Workspace) -> list[dict[str, Any]]:
    return pq.read_table(ws.path(f"{RELEASE}/{release.PARQUET_PATH}")).to_pylist()


def _by_pair(rows: list[dict[str, Any]]) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """pair_id → its two release rows, in member order."""
    found: dict[str, list[dict[str, Any]]] = {}
    for row in sorted(rows, key=lambda r: release.MEMBERS.index(r["member"])):
        found.setdefault(row["pair_id"], []).append(row)
    return {pair_id: (a, b) for pair_id, (a, b) in found.items()}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def shown(q: Question, swapped: bool) -> tuple[list[str], tuple[str, str]]:
    """The options and the two answers the release shows for a written question: the written ones, or, where the
    release reversed the pair's options (its answer-position balance), the options reversed and both answers flipped."""
    if not swapped:
        return [q.option_a, q.option_b], (q.answer_a, q.answer_b)
    other = dict(zip(ANSWERS, ANSWERS[::-1]))
    return [q.option_b, q.option_a], (other[q.answer_a], other[q.answer_b])


def check_release(ws: Workspace, written: dict[str, Question], verification: dict[str, str], version: str) -> None:
    """The release holds every accepted pair exactly as written (options in the balanced order it records), and every
    reader agrees."""
    release_dir = ws.path(RELEASE)
    manifest = ws.json(f"{RELEASE}/manifest.json")
    assert manifest["version"] == version
    rows = _release_rows(ws)
    by_pair = _by_pair(rows)
    assert set(by_pair) == set(written), "every accepted pair, and nothing else, is released"
    # answer position: the first image's answer is (a) in half of the pairs (one more when odd), as the card says
    firsts = [a["answer"] for a, _ in by_pair.values()]
    assert firsts.count(ANSWERS[0]) == (len(firsts) + 1) // 2
    assert manifest["answer_balance"]["first_answer_a"] == firsts.count(ANSWERS[0])
    for pair_id, q in written.items():
        a, b = by_pair[pair_id]
        assert a["options_swapped"] == b["options_swapped"]
        options, answers = shown(q, a["options_swapped"])
        for row, answer, statement in ((a, answers[0], q.statement_a), (b, answers[1], q.statement_b)):
            assert row["question"] == q.question and list(row["options"]) == options
            assert row["answer"] == answer and row["statement"] == statement
            assert row["pattern"] == patterns.lookup(q.pattern).paper
            assert row["pattern_key"] == patterns.lookup(q.pattern).key
            assert row["verification"] == verification[pair_id]
    # every row's image_sha256 is the sha256 of the image bytes it ships
    for row in rows:
        assert row["image_sha256"] == _sha256(row["image"]["bytes"]), row["item_id"]
    # the real sha256sum accepts the checksums
    check = subprocess.run(["sha256sum", "--strict", "-c", "SHA256SUMS"], cwd=release_dir, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    # MMVP's reading of mmvp/: the question + options prompt, the answer and the image by row position
    mmvp_rows = mmvp_oracle.read_mmvp(release_dir / "mmvp")
    assert len(mmvp_rows) == len(rows)
    for row in rows:
        seen = mmvp_rows[row["mmvp_index"] - 1]
        assert seen.prompt == f"{row['question']} (a) {row['options'][0]} (b) {row['options'][1]}"
        assert seen.answer == row["answer"]
        assert Path(seen.image_path).read_bytes() == row["image"]["bytes"]
    for pair in by_pair.values():
        assert pair[1]["mmvp_index"] == pair[0]["mmvp_index"] + 1 and pair[0]["mmvp_index"] % 2 == 1


def check_mmvp_vlm(ws: Workspace, written: dict[str, Question]) -> None:
    """mmvp_vlm/ lists pairs category by category in evaluate_vlm.py's order (checked with its arithmetic
    reduced to num_pairs // 9 per category); the script as shipped (15 per category) labels a smaller
    release with its first category alone, as the card warns."""
    by_statement = {q.statement_a: (pair_id, q) for pair_id, q in written.items()}
    by_pair = _by_pair(_release_rows(ws))
    pairs = mmvp_oracle.read_mmvp_vlm(ws.path(f"{RELEASE}/mmvp_vlm"), pairs_per_category=None)
    assert len(pairs) == len(written)
    for pair in pairs:
        pair_id, q = by_statement[pair.statement_a]
        assert pair.category == patterns.lookup(q.pattern).mmvp_script, (pair_id, q.pattern, pair.category)
        assert pair.statement_b == q.statement_b and pair.truth == ("img1", "img2")
        assert Path(pair.image_a).read_bytes() == by_pair[pair_id][0]["image"]["bytes"]
        assert Path(pair.image_b).read_bytes() == by_pair[pair_id][1]["image"]["bytes"]
    # every other pair wrong (statement a given to image 2): its category scores 0, the others 100
    probabilities = {(p.qid_a, p.qid_b): (1.0, 0.0) if i % 2 == 0 else (0.0, 0.0) for i, p in enumerate(pairs)}
    expected = {c: 0.0 for c in mmvp_oracle.MMVP_CATEGORIES}
    for i, pair in enumerate(pairs[: len(pairs) // 9 * 9]):
        expected[pair.category] += (i % 2 == 0) * 100.0 / (len(pairs) // 9)
    assert mmvp_oracle.score_mmvp_vlm(pairs, probabilities) == pytest.approx(expected)
    if len(pairs) < mmvp_oracle.MMVP_PAIRS_PER_CATEGORY:
        shipped = mmvp_oracle.read_mmvp_vlm(ws.path(f"{RELEASE}/mmvp_vlm"))
        assert {p.category for p in shipped} == {mmvp_oracle.MMVP_CATEGORIES[0]}


def check_load_dataset(ws: Workspace, written: dict[str, Question]) -> None:
    """`datasets.load_dataset` on the folder, offline, returns every item as released."""
    script = (
        "import hashlib, json, sys\nfrom datasets import Image, load_dataset\n"
        "ds = load_dataset(sys.argv[1], split='test').cast_column('image', Image(decode=False))\n"
        "rows = [{k: r[k] for k in ('pair_id', 'member', 'question', 'options', 'answer', 'pattern', 'image_sha256', "
        "'options_swapped')} "
        "| {'bytes_sha256': hashlib.sha256(r['image']['bytes']).hexdigest()} for r in ds]\n"
        "open(sys.argv[2], 'w').write(json.dumps(rows))\n"
    )
    out = ws.path("..").resolve() / "loaded.json"
    ws.run("load_dataset offline", sys.executable, "-c", script, str(ws.path(RELEASE)), str(out))
    loaded = json.loads(out.read_text())
    assert len(loaded) == 2 * len(written)
    for item in loaded:
        q = written[item["pair_id"]]
        options, answers = shown(q, item["options_swapped"])
        assert item["question"] == q.question and item["options"] == options
        assert item["answer"] == answers[release.MEMBERS.index(item["member"])]
        assert item["pattern"] == patterns.lookup(q.pattern).paper
        assert item["bytes_sha256"] == item["image_sha256"]


def check_counts(ws: Workspace, verification: dict[str, str]) -> None:
    """The card's counts are the metrics files' counts (and the release's own)."""
    card = ws.path(f"{RELEASE}/README.md").read_text()
    ingest, mine, validate, accept, package = (ws.json(f"metrics/{name}.json")
                                               for name in ("ingest", "mine", "validate", "accept", "package"))
    funnel = {m[1]: m[2] for m in re.finditer(r"^\| (\w+) \| (\d+) \|$", card, re.M)}
    expected = {
        "corpus_files": ingest["inputs"], "images": ingest["accepted"], "pairs_mined": mine["pairs"],
        "questions_written": validate["written"], "questions_valid": validate["valid"],
        "questions_accepted": accept["accepted"], "questions_rejected": accept["rejected"],
        "questions_pending": accept["pending"], "pairs_packaged": package["packaged"],
    }
    assert {k: funnel.get(k) for k in expected} == {k: str(v) for k, v in expected.items()}
    assert {k: accept[k] for k in SHARED_COUNTS} == {k: validate[k] for k in SHARED_COUNTS}
    assert package["packaged"] == accept["accepted"] == len(verification)
    assert f"**{package['packaged']} pairs, {2 * package['packaged']} questions**" in card
    accuracy = accept["human_accuracy"]
    assert f"per question\n  **{accuracy['per_question']}**" in card
    assert f"per pair (both images right) **{accuracy['per_pair']}**" in card
    verified = sum(v == "verified" for v in verification.values())
    assert (accept["verified"], accept["accepted_adjudicated"]) == (verified, len(verification) - verified)
    assert f"{verified} verified, {len(verification) - verified} adjudicated" in card
    assert f"Pairs in this release verified: {verified}; adjudicated: {len(verification) - verified}." in card


def check_evaluate(ws: Workspace, tmp: Path, order: list[str]) -> None:
    """`clipblind evaluate` against a scripted model gives the scores computed here by hand."""
    rows = _release_rows(ws)
    by_pair = _by_pair(rows)
    replies: dict[tuple[str, str], str] = {}
    right: dict[tuple[str, int], bool] = {}
    for pair_id, members in by_pair.items():
        k = order.index(members[0]["pattern_key"])
        for m, row in enumerate(members):
            reply = _reply(k, m, row["answer"])
            replies[(row["question"], _sha256(row["image"]["bytes"]))] = reply
            right[(pair_id, m)] = _letter(reply) == row["answer"]
    vlm = ScriptedVlm(replies)
    try:
        params = tmp / "evaluate.yaml"
        params.write_text(json.dumps({"evaluate": {"clip": [], "vlm": [
            {"backend": "openai", "url": vlm.url, "model": "scripted", "api_key_env": "JOURNEY_NO_KEY",
             "max_new_tokens": 16, "timeout": 120.0}], "diagnostics": False}}))
        ws.clipblind("evaluate (scripted VLM)", "evaluate", RELEASE, "--params", str(params),
                     "--results", str(tmp / "scores.json"), "--cache", str(tmp / "vlm-cache"))
    finally:
        vlm.close()
    assert sorted(vlm.asked) == sorted(replies), "one request per released image, each with its own image"
    scores = next(iter(json.loads((tmp / "scores.json").read_text())["models"].values()))
    pairs_right = {p: right[(p, 0)] and right[(p, 1)] for p in by_pair}
    assert scores["question_accuracy"] == pytest.approx(round(sum(right.values()) / len(right), 4))
    assert scores["pair_accuracy"] == pytest.approx(round(sum(pairs_right.values()) / len(pairs_right), 4))
    assert scores["counts"]["unanswered"] == sum(_letter(reply) is None for reply in replies.values())
    # MMVP's own grader over mmvp/ (consecutive rows by position) gives the same pair accuracy
    graded = {row["mmvp_index"]: right[(pair_id, m)] for pair_id, members in by_pair.items()
              for m, row in enumerate(members)}
    assert scores["pair_accuracy"] == pytest.approx(round(mmvp_oracle.score_mmvp([graded[i] for i in sorted(graded)]), 4))
    per_pattern = {patterns.lookup(name).key: s for name, s in scores["per_pattern"].items()}
    for pair_id, members in by_pair.items():
        key = members[0]["pattern_key"]
        assert per_pattern[key]["pair_accuracy"] == float(pairs_right[pair_id]), key
        assert per_pattern[key]["question_accuracy"] == (right[(pair_id, 0)] + right[(pair_id, 1)]) / 2, key


def scripted_models(ws: Workspace, tasks: list[dict[str, Any]], written: dict[str, Question]) -> dict[str, ScriptedVlm]:
    """Two OpenAI-compatible models whose diagnostics are known by hand: `ignores-images` answers (a) to everything;
    `reads-images` answers the right option's text for each real image of a written pair (known by its pixels: the
    release ships the display copy's pixels without its JPEG comment) and (b) to anything else (no image, a blank
    one, shuffled tiles)."""
    display = ws.path("data/display")
    truth = {}
    for task in tasks:
        q = written.get(task["data"]["pair_id"])
        if q is not None:
            for member, answer in zip(("image_a", "image_b"), (q.answer_a, q.answer_b)):
                image = (display / display_name(task["data"][f"{member}_id"])).read_bytes()
                truth[(q.question, pixels_sha256(image))] = (q.option_a, q.option_b)[ANSWERS.index(answer)]
    return {"ignores-images": ScriptedVlm({}, fallback=ANSWERS[0]),
            "reads-images": ScriptedVlm(truth, fallback=ANSWERS[1], image_key=pixels_sha256)}


def model_params(models: dict[str, ScriptedVlm]) -> str:
    """params.yaml's evaluate.vlm for the scripted models, as a flow list."""
    return "[" + ", ".join(f'{{backend: openai, url: "{m.url}", model: {name}, max_new_tokens: 16, '
                           'api_key_env: JOURNEY_NO_KEY, timeout: 120}' for name, m in models.items()) + "]"


def check_diagnostics(ws: Workspace, models: dict[str, ScriptedVlm], written: dict[str, Question]) -> None:
    """The release's diagnostics configurations hold the scripted models' hand-computed figures, load with
    `load_dataset(name=...)` offline, and its croissant.json validates under mlcroissant with no network."""
    manifest = ws.json(f"{RELEASE}/manifest.json")
    tables = {c: pq.read_table(ws.path(f"{RELEASE}/{c}/test-00000-of-00001.parquet")) for c in records.CONFIGS}
    name = {short: f"openai:{m.url}:{short}" for short, m in models.items()}  # as the backend names itself
    questions, per_question = 2 * len(written), 3 + len(SHUFFLE_GRIDS) * SHUFFLE_K
    summary = manifest["diagnostics"]["models"]
    ignores, reads = summary[name["ignores-images"]], summary[name["reads-images"]]
    # ignores images: half right (each pair has one (a) answer), no pair, nothing gained from images, every right
    # answer also right without one, every error its no-image answer, nothing flips under shuffling
    assert (ignores["accuracy"], ignores["pair_accuracy"], ignores["no_image_accuracy"]) == (0.5, 0.0, 0.5)
    assert (ignores["gain"], ignores["leakage"], ignores["prior_share"], ignores["bias_aligned_error_rate"]) == (0.0, 0.0, 1.0, 1.0)
    assert [s["flip_rate"] for s in ignores["pixel_shuffle"]] == [0.0] * len(SHUFFLE_GRIDS)
    # reads images: all right; without the real image it says (b), right on the half whose answer is (b); shuffled
    # tiles flip the other half, and no pair stays right (its two answers differ): no global cue
    assert (reads["accuracy"], reads["pair_accuracy"], reads["no_image_accuracy"], reads["blank_accuracy"]) == (1.0, 1.0, 0.5, 0.5)
    assert (reads["gain"], reads["prior_share"], reads["bias_aligned_error_rate"]) == (0.5, 0.5, None)
    assert [(s["grid"], s["accuracy"], s["flip_rate"], s["pair_right_rate"]) for s in reads["pixel_shuffle"]] == \
        [(g, 0.5, 0.5, 0.0) for g in SHUFFLE_GRIDS]
    for figures in (ignores, reads):
        assert (figures["questions"], figures["calls_per_question"], figures["global_cue_pairs"]) == (questions, per_question, 0)
    # the 2x2: every pair in the cell its encoder's verdict and the model's pair result name
    separates = {(v["encoder"], v["pair_id"]): v["separates"] for v in tables["encoders"].to_pylist()}
    assert {p for _, p in separates} == set(written) and len({e for e, _ in separates}) == 2  # CLIP and DINOv2
    for q in tables["models"].to_pylist():
        right = q["model"] == name["reads-images"]
        assert q["pair_right"] == right and len(q["buckets"]) == 2
        for encoder, cell in zip(q["bucket_encoders"], q["buckets"]):
            assert cell == records.bucket(separates[(encoder, q["pair_id"])], right), (q["item_id"], encoder)
    for encoder, figures in ignores["encoders"].items():  # every pair a failure: hidden exactly where separated
        hidden = sum(separates[(encoder, p)] for p in written) / len(written)
        assert figures["hidden_share"] == pytest.approx(round(hidden, 4))
    assert tables["diagnostics"].num_rows == questions and tables["models"].num_rows == 2 * questions
    assert tables["predictions"].num_rows == 2 * questions * per_question
    card = ws.path(f"{RELEASE}/README.md").read_text()
    assert all(n in card for n in name.values())
    # every configuration loads as users load it, offline
    script = ("import json, sys\nfrom datasets import load_dataset\n"
              "json.dump({c: load_dataset(sys.argv[1], name=c, split='test').num_rows for c in sys.argv[3:]}, open(sys.argv[2], 'w'))\n")
    out = ws.path("..").resolve() / "configs.json"
    ws.run("load_dataset of each diagnostics config", sys.executable, "-c", script, str(ws.path(RELEASE)), str(out),
           *records.CONFIGS)
    assert json.loads(out.read_text()) == {c: t.num_rows for c, t in tables.items()}
    # croissant.json: valid under mlcroissant with every connection refused, its record sets readable
    script = ("import socket, sys\n"
              "def refuse(*a, **k): raise OSError('no network')\n"
              "socket.socket.connect = refuse; socket.create_connection = refuse\n"
              "import mlcroissant as mlc\n"
              "ds = mlc.Dataset(jsonld=sys.argv[1])\n"
              "print('records:', sum(1 for _ in ds.records(record_set=sys.argv[2])))\n")
    read = ws.run("mlcroissant validates croissant.json offline", sys.executable, "-c", script,
                  str(ws.path(f"{RELEASE}/{release.CROISSANT}")), "models")
    assert f"records: {2 * questions}" in read.splitlines(), read  # its one warning (no datePublished) is on purpose
    (ARTIFACTS / "diagnostics.md").write_text(report.markdown(manifest["diagnostics"]))


def experiment(ws: Workspace, when: str) -> None:
    """`dvc exp run -S mine.dino_threshold=…` succeeds, mines with it, and leaves the workspace as it was."""
    value = EXPERIMENT_DINO[when]
    out = ws.dvc(f"dvc exp run -S mine.dino_threshold ({when})", "exp", "run", "--temp", "-S",
                 f"mine.dino_threshold={value}")
    assert "Ran experiment" in out and f"DINOv2 < {float(value):.4f}" in out, out
    assert ws.git("status", "--porcelain") == ""


def tagged_record(ws: Workspace, name: str, version: str) -> None:
    """`clipblind tag` committed the release record itself: the tagged commit names the version, nothing is left to commit."""
    assert ws.git("status", "--porcelain") == ""
    assert ws.git("rev-parse", f"{name}^{{commit}}") == ws.git("rev-parse", "HEAD")
    record = json.loads(ws.git("show", f"{name}:{release.RELEASED_RECORD}"))
    assert version in [r["version"] for r in record["releases"]]


@pytest.fixture
def journey(tmp_path: Path) -> Iterator[tuple[Workspace, Timings]]:
    """The checkout; the Label Studio it starts is stopped by its PID file at the end, and the timings printed."""
    timings = Timings()
    root = tmp_path / "clipblind"
    root.mkdir()
    ws = Workspace(root, timings)
    for old in ARTIFACTS.glob("*.png"):  # screenshots of this run only
        old.unlink()
    with timings.step("copy repository, git init"):
        copy_repository(root, os.environ.get(SOURCE_ENV) or None)
        ws.edit("dvc.yaml", "--scenes 40", f"--scenes {SCENES}")
        ws.set_param("labelstudio", "port", str(free_port()))
        ws.set_param("labelstudio", "verification_port", str(free_port()))
        ws.git("init", "-q")
        ws.commit("clipblind checkout")
    try:
        yield ws, timings
    finally:
        if any((root / ".labelstudio" / role / "server.pid").exists() for role in SERVERS):
            ws.clipblind("labelstudio stop", "labelstudio", "stop")
        table = "journey wall time per step\n\n" + timings.table() + "\n"
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "timings.md").write_text(table)
        print("\n\n" + table)


def test_journey(journey: tuple[Workspace, Timings], tmp_path: Path) -> None:
    from annotation import adjudication
    from annotation.labelstudio import server
    from annotation.labelstudio.client import Client

    ws, timings = journey
    ws.dvc("dvc repro (corpus → tasks, release awaiting)", "repro")
    assert ws.json(f"{RELEASE}/manifest.json")["status"] == "awaiting_annotations"
    task_records = ws.json("data/tasks.json")
    tasks = [t["data"]["pair_id"] for t in task_records]
    assert len(tasks) >= 14, f"the corpus gave only {len(tasks)} pairs"
    ws.commit("mined")
    round1, extra = tasks[:12], tasks[12:14]

    # ---------------------------------------------------------------- drafts from a (scripted) VLM
    # round1[4]'s draft is the question the writer wants (kept unchanged), round1[5]'s has the answers swapped
    # (edited), round1[9]'s is about a pair the writer rejects (discarded); round1[1]'s gives both images the
    # same answer (never shown); every other pair gets a reply that is no JSON (no draft)
    planned = nine_questions(list(patterns.PAPER_NAMES))
    swapped = dataclasses.replace(planned[5], answer_a=planned[5].answer_b, answer_b=planned[5].answer_a)
    doomed = dataclasses.replace(planned[0], question="Which sign is brighter?", option_a="left one", option_b="right one")
    drafts = {round1[4]: planned[4], round1[5]: swapped, round1[9]: doomed}
    invalid_draft = dataclasses.replace(planned[1], answer_b=planned[1].answer_a)
    run_draft(ws, task_records, {**{p: draft_reply(q) for p, q in drafts.items()}, round1[1]: draft_reply(invalid_draft)})
    drafted = ws.json("metrics/draft.json")
    assert (drafted["inputs"], drafted["accepted"], drafted["calls"]) == (len(tasks), len(drafts), len(tasks))
    assert {k: v for k, v in drafted["rejected_by_reason"].items() if v} == \
        {SAME_ANSWER: 1, drafting.NOT_JSON: len(tasks) - len(drafts) - 1}
    assert sorted(drafting.read_drafts(ws.path("data/drafts.json"))[1]) == sorted(drafts)

    # ---------------------------------------------------------------- the annotation server
    ws.clipblind("labelstudio start", "labelstudio", "start")
    for (email, password), role in ((WRITER, "writer"), (VERIFIER, "verifier")):
        ws.clipblind(f"labelstudio add-user --role {role}", "labelstudio", "add-user", email, "--role", role,
                     "--password", password)
    ws.clipblind("push", "push")
    assert ws.json("metrics/push.json")["drafted"] == len(drafts)
    ls = dataclasses.replace(server.load_params(ws.path("params.yaml")), data_dir=str(ws.path(".labelstudio")))
    client = Client.from_params(ls, WRITING)  # the lead's API views, only to find task ids
    lead_verification = Client.from_params(ls, VERIFICATION)
    writing_url, verification_url = server_of(ls, WRITING).url, server_of(ls, VERIFICATION).url
    writing = client.project_by_title(ls.writing_project)["id"]
    remote = client.tasks(writing)
    task_of = {t["data"]["pair_id"]: t["id"] for t in remote}
    assert set(task_of) == set(tasks)
    assert {t["data"]["pair_id"] for t in remote if t["total_predictions"]} == set(drafts)  # the invalid one: none
    assert all(t["data"][FEEDBACK_FIELD] == "" for t in remote)

    written: dict[str, Question] = {}
    with chromium() as browser:
        with timings.step("writer in Chromium: 12 tasks"):
            writer = Writer(new_page(browser), writing_url, *WRITER)
            writer.open(writing, task_of[round1[0]])
            shown = writer.choice_names("field-pattern")
            assert shown == list(patterns.PAPER_NAMES), "the labeling config shows the nine paper names"
            order = [patterns.lookup(name).key for name in shown]
            assert nine_questions(shown) == planned
            for k, q in enumerate(planned):
                if round1[k] in drafts:  # kept as drafted, or its answers set right
                    writer.review(writing, task_of[round1[k]], drafts[round1[k]], q,
                                  shot="writer-draft" if k == 5 else None)
                else:
                    writer.write(writing, task_of[round1[k]], q, shot="writer-markup" if k == 0 else None)
                written[round1[k]] = q
            writer.reject(writing, task_of[round1[9]], "Same scene, nothing nameable differs", shot="writer-reject",
                          draft=doomed)
            same = dataclasses.replace(written[round1[1]], question="Is there a picture?", answer_b=written[round1[1]].answer_a)
            writer.write(writing, task_of[round1[10]], same)
            formula = dataclasses.replace(written[round1[2]], question=FORMULA)
            writer.write(writing, task_of[round1[11]], formula, shot="writer-formula")

        ws.clipblind("pull", "pull")
        counts = ws.json("metrics/pull_writing.json")["drafts"]
        kept, edited, discarded = round1[4], round1[5], round1[9]
        assert counts["drafted_tasks"] == len(drafts) == counts["annotated"]
        assert {o: counts[o] for o in DRAFT_OUTCOMES} == {DRAFT_UNCHANGED: 1, DRAFT_EDITED: 1, DRAFT_DISCARDED: 1}
        expected = {key: {o: 0 for o in DRAFT_OUTCOMES} for key in patterns.KEYS}
        for pair, outcome in ((kept, DRAFT_UNCHANGED), (edited, DRAFT_EDITED), (discarded, DRAFT_DISCARDED)):
            expected[patterns.lookup(drafts[pair].pattern).key][outcome] += 1  # counted under the draft's pattern
        assert counts["per_pattern"] == expected
        assert sum(sum(c.values()) for c in counts["per_pattern"].values()) == counts["annotated"]
        seconds = counts["seconds_per_task"]
        assert (seconds["with_draft"]["annotations"], seconds["without_draft"]["annotations"]) == (3, 9)
        ws.dvc("dvc repro validate", "repro", "validate")
        validated = ws.json("metrics/validate.json")
        assert (validated["written"], validated["valid"]) == (12, 9)
        assert {k: v for k, v in validated["invalid_by_reason"].items() if v} == \
            {"pair_rejected": 1, SAME_ANSWER: 1, FORMULA_LIKE: 1}
        ws.clipblind("push-verification", "push-verification")
        # validation's reasons go back to the writers' tasks (the rejected pair is no mistake: not returned)
        ws.clipblind("feedback", "feedback")
        returned = ws.json("metrics/feedback.json")
        assert (returned["returned"], returned["set"], returned["cleared"]) == (2, 2, 0)
        verdicts = {r["pair_id"]: r for r in pq.read_table(ws.path("data/annotations.parquet")).to_pylist()}
        same_pair, formula_pair = round1[10], round1[11]
        notices = {t["data"]["pair_id"]: t["data"][FEEDBACK_FIELD] for t in client.tasks(writing)
                   if t["data"][FEEDBACK_FIELD]}
        assert notices == {p: feedback.message(verdicts[p]["reason"], verdicts[p]["detail"]) for p in (same_pair, formula_pair)}
        assert (verdicts[same_pair]["reason"], verdicts[formula_pair]["reason"]) == (SAME_ANSWER, FORMULA_LIKE)
        [tab] = [v["id"] for v in client.request("GET", "/api/dm/views/", params={"project": writing})
                 if v["data"]["title"] == feedback.RETURNED_TAB]
        listed = client.request("GET", "/api/tasks/", params={"project": writing, "view": tab})
        assert sorted(t["id"] for t in listed["tasks"]) == sorted(task_of[p] for p in (same_pair, formula_pair))
        ws.commit("round 1: questions written")

        disputed = round1[3]  # the verifier swaps this pair's answers; the lead sides with the writer
        assert client.project_by_title(ls.verification_project) is None  # not on the writers' server
        verification_project = lead_verification.project_by_title(ls.verification_project)["id"]
        questions = {t["data"]["pair_id"]: t["id"] for t in lead_verification.tasks(verification_project)}
        assert set(questions) == set(written)
        with timings.step("verifier in Chromium: 9 tasks"):
            verifier = Verifier(new_page(browser), verification_url, *VERIFIER)
            for pair_id, q in written.items():
                answers = (q.answer_b, q.answer_a) if pair_id == disputed else (q.answer_a, q.answer_b)
                shown_question = verifier.answer(verification_project, questions[pair_id], *answers,
                                                 shot="verifier-markup" if q.question.count(MARKUP) else None)
                assert q.question in shown_question  # shown as text, markup and all
    ws.clipblind("pull verification", "pull", "verification")
    ws.dvc("dvc repro accept", "repro", "accept")
    accepted = ws.json("metrics/accept.json")
    assert (accepted["accepted"], accepted["verified"], accepted["pending_by_reason"]["awaiting_adjudication"]) == (8, 8, 1)

    ws.clipblind("adjudicate", "adjudicate")
    rows = adjudication.read(ws.path("labels/adjudication.csv"))
    assert [r["pair_id"] for r in rows] == [disputed]
    rows[0]["decision"] = "accept"
    ws.path("labels/adjudication.csv").write_bytes(adjudication.encode(rows))
    ws.commit("round 1: verified and adjudicated")
    # the lead scores two models for the first release: diagnose asks them (before package), evaluate again (cached)
    models = scripted_models(ws, task_records, written)
    try:
        scored = model_params(models)
        ws.set_param("evaluate", "vlm", scored)
        ws.edit("params.yaml", "    grids: [2, 4, 8]", f"    grids: {list(SHUFFLE_GRIDS)}")
        ws.edit("params.yaml", "    permutations: 5", f"    permutations: {SHUFFLE_K}")
        ws.dvc("dvc repro (round 1 release)", "repro")
        verification = {p: "adjudicated" if p == disputed else "verified" for p in written}

        check_release(ws, written, verification, "1.0.0")
        check_mmvp_vlm(ws, written)
        check_load_dataset(ws, written)
        check_counts(ws, verification)
        check_diagnostics(ws, models, written)
        plots = ws.dvc("dvc plots show", "plots", "show", "--json")
        assert "plots/evaluate/shuffle.svg" in plots and "plots/evaluate/buckets.svg" in plots, plots
        check_evaluate(ws, tmp_path, order)
        ws.commit("release 1.0.0")
        ws.clipblind("clipblind tag 1.0.0", "tag", RELEASE)
        tagged_record(ws, "clipblind-benchmark@v1.0.0", "1.0.0")
        experiment(ws, "after round 1")
    finally:
        for m in models.values():
            m.close()
    # the endpoints are gone: the next builds score no model (the release then ships no models/predictions)
    ws.edit("params.yaml", f"  vlm: {scored}", "  vlm: []")
    ws.commit("no models scored from here on")

    # ---------------------------------------------------------------- round 2: two more pairs, one correction
    more = {
        extra[0]: Question(patterns.by_key("color").paper, "What colour is the ball?", "Red", "Blue", *ANSWERS,
                           "A red ball.", "A blue ball."),
        extra[1]: Question(patterns.by_key("text").paper, "What does the sign say?", "STOP", "EXIT", *ANSWERS[::-1],
                           "A sign saying EXIT.", "A sign saying STOP."),
    }
    # the writer fixes the returned same-answer question: image B gets the answer round1[1] gave it
    fixed_same = dataclasses.replace(same, answer_b=written[round1[1]].answer_b)
    with chromium() as browser:
        with timings.step("writer in Chromium: 1 returned task fixed, 2 new"):
            writer = Writer(new_page(browser), writing_url, *WRITER)
            writer.fix_returned(writing, tab, feedback.RETURNED_TAB, task_of[same_pair], MESSAGES[SAME_ANSWER],
                                fixed_same.answer_b, shot="writer-feedback")
            for pair_id, q in more.items():
                writer.write(writing, task_of[pair_id], q)
        new = {**more, same_pair: fixed_same}  # what this round adds to the release
        written.update(new)
        ws.clipblind("pull (round 2)", "pull")
        ws.dvc("dvc repro validate (round 2)", "repro", "validate")
        validated = ws.json("metrics/validate.json")
        assert (validated["written"], validated["valid"]) == (14, 12)  # the fixed question is valid now
        assert {k: v for k, v in validated["invalid_by_reason"].items() if v} == {"pair_rejected": 1, FORMULA_LIKE: 1}
        ws.clipblind("push-verification (round 2)", "push-verification")
        ws.clipblind("feedback (round 2)", "feedback")
        returned = ws.json("metrics/feedback.json")
        assert (returned["returned"], returned["set"], returned["cleared"]) == (1, 0, 1)
        notices = {t["id"]: t["data"][FEEDBACK_FIELD] for t in client.tasks(writing) if t["data"][FEEDBACK_FIELD]}
        assert list(notices) == [task_of[formula_pair]]  # the fixed question's notice is cleared
        questions = {t["data"]["pair_id"]: t["id"] for t in lead_verification.tasks(verification_project)}
        assert set(questions) == set(written)
        with timings.step("verifier in Chromium: 3 tasks"):
            verifier = Verifier(new_page(browser), verification_url, *VERIFIER)
            for pair_id, q in new.items():
                verifier.answer(verification_project, questions[pair_id], q.answer_a, q.answer_b)
    ws.clipblind("pull verification (round 2)", "pull", "verification")
    ws.dvc("dvc repro accept (round 2)", "repro", "accept")
    ws.clipblind("adjudicate (round 2)", "adjudicate")
    assert [r["pair_id"] for r in adjudication.read(ws.path("labels/adjudication.csv")) if not r["decision"]] == []
    # the lead finds a wrong answer in the released 1.0.0 and corrects it in adjudication, by its pair id
    corrected = round1[5]
    old = written[corrected]
    swap = ["adjudicate", "--correct", corrected, "--answer-a", old.answer_b, "--answer-b", old.answer_a,
            "--note", "the answers were swapped"]
    # the writer's statements were true of the images under the old answers: the lead must say what they become
    refused = ws.clipblind("adjudicate --correct without statements (refused)", *swap, ok=False)
    assert "--statement-a" in refused and "--drop-statements" in refused and old.statement_a in refused
    fixed = dataclasses.replace(old, answer_a=old.answer_b, answer_b=old.answer_a,
                                statement_a=f"Corrected: {old.statement_b}", statement_b=f"Corrected: {old.statement_a}")
    out = ws.clipblind("adjudicate --correct (round 2)", *swap, "--statement-a", fixed.statement_a,
                       "--statement-b", fixed.statement_b)
    # one line names the question, its pair and pattern and the change; nothing else waits for a decision
    assert (f"(pair {corrected}, {patterns.lookup(old.pattern).key}): answers {old.answer_a}/{old.answer_b} → "
            f"{old.answer_b}/{old.answer_a}") in out, out
    assert "set to correct" in out and "without a decision" not in out, out
    row = next(r for r in adjudication.read(ws.path("labels/adjudication.csv")) if r["pair_id"] == corrected)
    assert (row["decision"], row["answer_a"], row["answer_b"]) == ("correct", old.answer_b, old.answer_a)
    assert (row["statement_a"], row["statement_b"]) == (fixed.statement_a, fixed.statement_b)
    assert (row["writer_answer_a"], row["writer_answer_b"], row["question"]) == (old.answer_a, old.answer_b, old.question)
    written[corrected] = fixed
    ws.commit("round 2: a returned question fixed, two new pairs, one answer corrected in adjudication")
    ws.dvc("dvc repro (round 2: unreleased build)", "repro")
    verification.update({p: "verified" for p in new} | {corrected: "adjudicated"})
    assert ws.json("metrics/accept.json")["answers_corrected"] == 1

    manifest = ws.json(f"{RELEASE}/manifest.json")
    assert (manifest["version"], manifest["release"]["status"]) == ("1.1.0-dev", "unreleased")
    changes = manifest["changes"]
    assert changes["previous_version"] == "1.0.0"
    assert sorted(changes["added_pairs"]) == sorted(new)
    # released pairs keep their answer letters across versions: the swapped answers show as reversed options
    assert changes["changed_items"] == {f"{corrected}-a": ["options", "statement"], f"{corrected}-b": ["options", "statement"]}
    check_release(ws, written, verification, "1.1.0-dev")
    check_counts(ws, verification)
    shipped = {c for c in records.CONFIGS if ws.path(f"{RELEASE}/{c}").is_dir()}
    assert shipped == {"diagnostics", "encoders"}, shipped  # no model scored: no models/predictions
    ws.commit("round 2 build")
    experiment(ws, "on the unreleased build")
    refused = ws.clipblind("clipblind tag refuses 1.1.0-dev", "tag", RELEASE, ok=False)
    assert "package.version" in refused and "CHANGELOG" in refused

    ws.set_param("package", "version", "1.1.0")
    added = ", ".join(sorted(new))
    ws.edit("data_cards/CHANGELOG.md", "## 1.0.0", f"## 1.1.0\n\n- Added pairs {added}.\n"
            f"- Corrected the answers of pair {corrected}.\n\n## 1.0.0")
    ws.dvc("dvc repro (1.1.0)", "repro")
    check_release(ws, written, verification, "1.1.0")
    # mmvp_vlm/ pairs the lead's statements with their images (12 pairs: read without MMVP's nine-way split)
    vlm = [v for v in mmvp_oracle.read_mmvp_vlm(ws.path(f"{RELEASE}/mmvp_vlm"), pairs_per_category=len(written))
           if v.statement_a == fixed.statement_a]
    assert len(vlm) == 1 and vlm[0].statement_b == fixed.statement_b
    images = _by_pair(_release_rows(ws))[corrected]
    assert [Path(vlm[0].image_a).read_bytes(), Path(vlm[0].image_b).read_bytes()] == [i["image"]["bytes"] for i in images]
    assert ws.json(f"{RELEASE}/manifest.json")["release"]["status"] == "releasable"
    check_counts(ws, verification)
    # the README's order: bump, changelog, dvc repro, commit, tag; tagging first would pin the old inputs
    refused = ws.clipblind("clipblind tag refuses uncommitted inputs", "tag", RELEASE, ok=False)
    assert "uncommitted changes to tracked files" in refused and "params.yaml" in refused, refused
    assert "data_cards/CHANGELOG.md" in refused and "dvc.lock" in refused, refused
    ws.commit("release 1.1.0")
    ws.clipblind("clipblind tag 1.1.0", "tag", RELEASE)
    tagged_record(ws, "clipblind-benchmark@v1.1.0", "1.1.0")
    assert ws.git("tag", "--list").split() == ["clipblind-benchmark@v1.0.0", "clipblind-benchmark@v1.1.0"]
    experiment(ws, "after the bump")
    shots = {"writer-markup", "writer-draft", "writer-reject", "writer-formula", "writer-feedback", "verifier-markup"}
    assert shots <= {p.stem for p in ARTIFACTS.glob("*.png")}
