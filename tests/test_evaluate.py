"""Scoring: hand-computed arithmetic, tiny random open_clip and VLMs on a built release, an OpenAI-compatible server."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline import cli, evaluate
from pipeline.core import patterns
from pipeline.core.report import RANDOM_WEIGHTS_MARK
from pipeline.params import VlmParams
from pipeline.vlm import scoring
from pipeline.vlm.backends import CachedBackend, OpenAIBackend, TransformersBackend, build_prompt
from tests.conftest import TINY_CLIP_TEXT_CONFIG
from tests.helpers.params import demo_params, section
from tests.helpers.release_world import build_release
from tests.helpers.tiny_vlm import build_tiny_vlm

TINY_CLIP = demo_params("embed.clip", model="tiny-clip-text", weights="random", image_size=32,
                          config=TINY_CLIP_TEXT_CONFIG, seed=0)
STATE = patterns.by_key("state").paper  # evaluate reports patterns by the paper's names


@pytest.fixture(scope="module")
def built(sample_corpus, tmp_path_factory):
    return build_release(sample_corpus, tmp_path_factory.mktemp("evaluate"))


@pytest.fixture(scope="module")
def tiny_vlm_dir(tmp_path_factory):
    return build_tiny_vlm(tmp_path_factory.mktemp("tiny-vlm"))


@pytest.mark.parametrize("reply,expected", [
    ("(a)", "(a)"), ("The answer is (B).", "(b)"), ("b) Right", "(b)"), ("A. Left", "(a)"), ("a", "(a)"),
    ("Right", "(b)"), ("It points left.", "(a)"), ("(a) or (b)", None), ("left or right", None), ("maybe", None),
    ("Answer: b", "(b)"), ("bright", None),
])
def test_answer_extraction_letter_first_then_option_text(reply, expected):
    assert scoring.extract_answer(reply, ("Left", "Right")) == expected


BLUE_RED = ("Blue", "Red")


@pytest.mark.parametrize("reply,expected", [
    ("A red square.", "(b)"),  # a leading article is not the letter (a)
    ("a blue square", "(a)"),
    ("An apple", None),
    ("A", "(a)"), ("a.", "(a)"), ("A)", "(a)"), ("A, blue", "(a)"), ("b", "(b)"), ("B red", "(b)"),
    ("(b)", "(b)"), ("( B )", "(b)"), ("a) Blue", "(a)"), ("A. Blue", "(a)"),
    ("Answer: a", "(a)"), ("The answer is B.", "(b)"), ("Option A", "(a)"), ("Answer: A red square", "(b)"),
    ("I think it's (b) Red", "(b)"), ("I'd say the answer is (a).", "(a)"), ("Blue (a)", "(a)"),
    ("A. Red", None), ("(a) Red", None), ("b) blue!", None),  # the letter and the option text disagree
    ("(a) Blue (b) Red", None), ("A or B", None),
    ("Red.", "(b)"), ("RED", "(b)"), ("bright red", "(b)"), ("It is blue.", "(a)"),
    ("Blue and red", None), ("Bluish", None), ("", None), ("Neither", None),
    # after "option"/"choice" both letters read alike (no article there)
    ("Option A is correct", "(a)"), ("Option B is correct", "(b)"), ("Choice a is right", "(a)"),
    ("The answer is a red one", "(b)"),
])
def test_answer_extraction_reply_shapes(reply, expected):
    assert scoring.extract_answer(reply, BLUE_RED) == expected


@pytest.mark.parametrize("options,reply,expected", [
    (("Red", "Red and blue"), "Red and blue", "(b)"),  # the longer option is matched first
    (("Red", "Red and blue"), "Red.", "(a)"),
    (("Red", "Red and blue"), "(a) Red and blue", None),
    (("Red", "Red and blue"), "(b) Red and blue", "(b)"),
    (("Yes", "No"), "(a) Yes, there is no dog", "(a)"),  # only the text right after the letter is checked
    (("Yes", "No"), "No.", "(b)"),
    (("Open", "Closed"), "(a) It is not closed", "(a)"),
])
def test_answer_extraction_with_overlapping_options(options, reply, expected):
    assert scoring.extract_answer(reply, options) == expected


def test_question_and_pair_accuracy_by_hand():
    Q = scoring.QuestionResult
    results = [
        Q("p1", "a", "Color", "(a)", "(a)"), Q("p1", "b", "Color", "(b)", "(b)"),  # both right: pair 1
        Q("p2", "a", "Color", "(b)", "(b)"), Q("p2", "b", "Color", "(a)", "(b)"),  # one right, one wrong: pair 0
        Q("p3", "a", "State", "(a)", None), Q("p3", "b", "State", "(b)", "(b)"),  # unanswered counts wrong
    ]
    scores = scoring.score_questions(results)
    assert scores["question_accuracy"] == round(4 / 6, 4)
    assert scores["pair_accuracy"] == round(1 / 3, 4)
    assert scores["chance"] == {"question": 0.5, "pair": 0.25}
    assert scores["counts"] == {"pairs": 3, "pairs_right": 1, "questions": 6, "questions_right": 4, "unanswered": 1}
    assert scores["per_pattern"]["Color"]["pair_accuracy"] == 0.5
    assert scores["per_pattern"]["Color"]["question_accuracy"] == 0.75
    assert scores["per_pattern"]["State"]["pair_accuracy"] == 0.0


def test_clip_pair_scoring_by_hand():
    P = scoring.PairSimilarity
    pairs = [  # sim[i][j]: image i against statement j
        P("p1", "Color", ((0.9, 0.1), (0.2, 0.8))),  # every direction right
        # statement 1 prefers image 2 (0.95 > 0.9), statement 2 prefers image 2 (0.3 > 0.1):
        # one statement right, one wrong → pair 0; image 2 prefers statement 1 → image→text 0 too
        P("p2", "Color", ((0.9, 0.1), (0.95, 0.3))),
        # statement 1 prefers image 2 (0.6 > 0.5) → MMVP-VLM 0; each image prefers its statement → image→text 1
        P("p3", "State", ((0.5, 0.4), (0.6, 0.7))),
    ]
    scores = scoring.score_clip(pairs, {"Text": 2})
    assert scores["pair_accuracy"] == round(1 / 3, 4)  # MMVP-VLM (statement→image): p1 only
    assert scores["pair_accuracy_image_to_text"] == round(2 / 3, 4)  # p1, p3
    assert scores["pair_accuracy_both"] == round(1 / 3, 4)
    assert scores["chance"]["pair"] == 0.25
    assert scores["pairs_without_statements"] == 2
    assert scores["per_pattern"]["Text"] == {
        "pair_accuracy": None, "pair_accuracy_image_to_text": None, "pair_accuracy_both": None,
        "pairs_without_statements": 2,
    }
    assert scores["per_pattern"]["Color"]["pair_accuracy"] == 0.5
    assert scores["per_pattern"]["State"]["pair_accuracy_image_to_text"] == 1.0


@pytest.mark.slow
def test_tiny_open_clip_on_a_release(built):
    pairs = evaluate.load_pairs(built)
    scorer = evaluate.ClipScorer(TINY_CLIP)
    result = evaluate.evaluate_clip(pairs, scorer)
    # 4 pairs: Quantity has no statements, Orientation has a withheld image, Color and State are scored
    assert result["pairs"] == 2 and result["pairs_without_statements"] == 1 and result["pairs_missing_images"] == 1
    assert result["random_init"] is True
    # recompute one pair's outcome from the model directly
    pair = next(p for p in pairs if p.pattern == STATE)
    sim = scorer.images(pair.images) @ scorer.texts([f"a photo of {s}" for s in pair.statements]).T
    outcome = scoring.clip_pair_outcome(sim.tolist())
    assert result["per_pattern"][STATE]["text_to_image_right"] == int(outcome["text_to_image"])
    assert result["per_pattern"][STATE]["image_to_text_right"] == int(outcome["image_to_text"])


def test_tiny_vlm_scores_a_release_and_resumes_from_its_cache(built, tiny_vlm_dir, tmp_path):
    backend = TransformersBackend(VlmParams(backend="transformers", model=str(tiny_vlm_dir), max_new_tokens=6))
    pairs = evaluate.load_pairs(built)
    cache = tmp_path / "cache.jsonl"
    first = CachedBackend(backend, cache)
    result = evaluate.evaluate_vlm(pairs, first)
    assert result["counts"]["pairs"] == 3 and result["pairs_missing_images"] == 1  # the withheld image's pair
    assert first.calls == 6
    # the arithmetic matches the replies the model gave
    right = 0
    for pair in pairs:
        if not all(i is not None for i in pair.images):
            continue
        for member in (0, 1):
            reply = backend.ask(build_prompt(pair.question, *pair.options), pair.images[member])
            right += scoring.extract_answer(reply, pair.options) == pair.answers[member]
    assert result["counts"]["questions_right"] == right
    # interrupted after two answers: a rerun asks only the other four
    lines = cache.read_text().splitlines()
    cache.write_text("\n".join(lines[:2]) + "\n" + lines[2][:10])  # the third line cut short
    resumed = CachedBackend(backend, cache)
    assert evaluate.evaluate_vlm(pairs, resumed) == result and resumed.calls == 4
    again = CachedBackend(backend, cache)
    assert evaluate.evaluate_vlm(pairs, again) == result and again.calls == 0


def test_reply_cache_has_one_location_for_the_command_dvc_and_readme(built, tiny_vlm_dir, tmp_path, monkeypatch):
    from tests.conftest import REPO

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"evaluate": {"clip": [], "vlm": [
        {"backend": "transformers", "model": str(tiny_vlm_dir), "max_new_tokens": 6}], "diagnostics": False}}))
    monkeypatch.chdir(tmp_path)
    assert evaluate.main([str(built), "--params", str(params), "--results", str(tmp_path / "r.json")]) == 0
    caches = sorted(p.relative_to(tmp_path) for p in tmp_path.glob(".cache/**/*.jsonl"))
    assert [c.parent for c in caches] == [Path(evaluate.CACHE_DIR)]  # the command's default
    command = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["evaluate"]["cmd"].split()
    assert command[command.index("--cache") + 1] == evaluate.CACHE_DIR
    assert f"`{evaluate.CACHE_DIR}/" in (REPO / "README.md").read_text()


@pytest.mark.slow
def test_openai_backend_against_a_local_server(built, tiny_vlm_dir, tmp_path):
    port_file, log = tmp_path / "port", tmp_path / "requests.jsonl"
    repo = Path(__file__).resolve().parents[1]
    server = subprocess.Popen([sys.executable, "-m", "tests.helpers.openai_server", str(tiny_vlm_dir), str(port_file), str(log)],
                              cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)})
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists() and time.monotonic() < deadline and server.poll() is None:
            time.sleep(0.1)
        assert port_file.exists(), "server did not start"
        params = VlmParams(backend="openai", model="tiny", url=f"http://127.0.0.1:{port_file.read_text()}/v1", max_new_tokens=8,
                           api_key_env="OPENAI_API_KEY", timeout=120.0)
        remote = OpenAIBackend(params)
        pairs = evaluate.load_pairs(built)
        result = evaluate.evaluate_vlm(pairs, remote)
        local = evaluate.evaluate_vlm(pairs, TransformersBackend(VlmParams(backend="transformers", model=str(tiny_vlm_dir), max_new_tokens=8)))
        assert result["counts"] == local["counts"]  # same model, same prompt, same greedy decoding
        requests = [json.loads(line) for line in log.read_text().splitlines()]
        sent = [hashlib.sha256(pair.images[m]).hexdigest() for pair in pairs if all(i is not None for i in pair.images) for m in (0, 1)]
        assert [r["image_sha256"] for r in requests] == sent  # every request carried its image's bytes
        assert {r["temperature"] for r in requests} == {0}
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_evaluate_command_on_release_and_mmvp_folders(built, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"evaluate": {"clip": [{**section("embed.clip"),
        "kind": "open_clip", "model": "tiny-clip-text", "weights": "random", "image_size": 32,
        "config": TINY_CLIP_TEXT_CONFIG, "seed": 0}], "vlm": [], "diagnostics": True}, "diagnose": section("diagnose")}))
    outputs = {}
    for name, folder in (("release", built), ("mmvp_vlm", built / "mmvp_vlm")):
        results, table, chart = tmp_path / f"{name}.json", tmp_path / f"{name}.md", tmp_path / f"{name}.svg"
        assert evaluate.main([str(folder), "--params", str(params), "--results", str(results), "--table", str(table),
                              "--chart", str(chart)]) == 0
        outputs[name] = json.loads(results.read_text())
        assert outputs[name]["benchmark"]["format"] == name
        assert table.read_text().startswith("| model | kind |") and chart.read_text().startswith("<svg")
    model = "open_clip:tiny-clip-text:random"
    # MMVP-VLM's layout holds only pairs with statements and images present: same scored pairs, same numbers
    from_release, from_vlm = outputs["release"]["models"][model], outputs["mmvp_vlm"]["models"][model]
    assert from_vlm["pairs"] == from_release["pairs"] == 2
    assert from_vlm["pair_accuracy"] == from_release["pair_accuracy"]
    mmvp_pairs = evaluate.load_pairs(built / "mmvp")
    assert len(mmvp_pairs) == 4 and {p.pattern for p in mmvp_pairs} == {evaluate.UNLABELLED}
    assert all(p.answers[0] != p.answers[1] for p in mmvp_pairs)
    assert sum(1 for p in mmvp_pairs if None in p.images) == 1  # the withheld image


@pytest.mark.slow
def test_clip_weights_from_a_local_checkpoint_file_offline(built, tmp_path, monkeypatch):
    import torch

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import open_clip

    random_scorer = evaluate.ClipScorer(TINY_CLIP)  # also registers the tiny config with open_clip
    checkpoint = tmp_path / "tiny-clip.pt"
    # a checkpoint as open_clip writes it (the scorer's own model may have fused, CPU-packed layers)
    torch.manual_seed(TINY_CLIP.seed)
    torch.save(open_clip.create_model("tiny-clip-text", pretrained=None).state_dict(), checkpoint)
    other_seed = demo_params("embed.clip", model="tiny-clip-text", weights=str(checkpoint), image_size=32,
                               config=TINY_CLIP_TEXT_CONFIG, seed=123)
    loaded = evaluate.ClipScorer(other_seed)
    assert loaded.name == f"open_clip:tiny-clip-text:{checkpoint}" and not loaded.random_init
    pairs = evaluate.load_pairs(built)
    pair = next(p for p in pairs if p.pattern == STATE)
    texts = [f"a photo of {s}" for s in pair.statements]
    # the checkpoint's weights, not seed 123's: the same vectors as the model that was saved
    assert np.allclose(loaded.images(pair.images), random_scorer.images(pair.images), atol=1e-6)
    assert np.allclose(loaded.texts(texts), random_scorer.texts(texts), atol=1e-6)
    reseeded = evaluate.ClipScorer(demo_params("embed.clip", model="tiny-clip-text", weights="random",
                                                 image_size=32, config=TINY_CLIP_TEXT_CONFIG, seed=123))
    assert not np.allclose(reseeded.images(pair.images), random_scorer.images(pair.images), atol=1e-3)
    from_file = evaluate.evaluate_clip(pairs, loaded)
    from_memory = evaluate.evaluate_clip(pairs, random_scorer)
    assert from_file["random_init"] is False
    assert {k: v for k, v in from_file.items() if k != "random_init"} == {k: v for k, v in from_memory.items() if k != "random_init"}


def test_table_and_chart_list_patterns_in_the_pattern_order():
    Q = scoring.QuestionResult
    # every pattern scored, fed in reverse order, with MMVP's unlabelled rows first
    names = [evaluate.UNLABELLED, *reversed(patterns.PAPER_NAMES)]
    questions = [Q(f"p{i}", m, name, "(a)", "(a)") for i, name in enumerate(names) for m in ("a", "b")]
    results = {"models": {"m": {"kind": "vlm", **scoring.score_questions(questions)}}}
    expected = [*patterns.PAPER_NAMES, evaluate.UNLABELLED]  # the nine as pipeline.core.patterns orders them, then the rest
    header = evaluate.markdown_table(results).splitlines()[0].strip("| ").split(" | ")
    assert header[4:] == expected
    assert _chart_texts(evaluate.svg_chart(results), "pattern") == expected


README_FOLDERS = {"data/release": "", "/path/to/MMVP": "mmvp", "/path/to/MMVP_VLM": "mmvp_vlm"}


def readme_evaluate_commands() -> list[list[str]]:
    """Every `clipblind evaluate ...` line of README's 'Score a model' section, as argv (comments dropped)."""
    from tests.conftest import REPO

    text = (REPO / "README.md").read_text()
    section = text[text.index("\n## Score a model\n"):]
    section = section[:section.index("\n## ", 1)]
    return [shlex.split(line, comments=True) for line in section.splitlines() if line.startswith("clipblind ")]


def test_every_readme_evaluate_command_runs_as_written(built, tmp_path, monkeypatch, capsys):
    commands = readme_evaluate_commands()
    assert len(commands) >= 3 and all(argv[:2] == ["clipblind", "evaluate"] for argv in commands)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"evaluate": {"clip": [{**section("embed.clip"),
        "kind": "open_clip", "model": "tiny-clip-text", "weights": "random", "image_size": 32,
        "config": TINY_CLIP_TEXT_CONFIG, "seed": 0}], "vlm": [], "diagnostics": True}, "diagnose": section("diagnose")}))
    monkeypatch.chdir(tmp_path)  # README's relative outputs land here
    for argv in commands:
        folder = argv[2]
        assert folder in README_FOLDERS, f"README evaluates {folder!r}: add it to README_FOLDERS"
        run = [str(built / README_FOLDERS[folder]) if a == folder else a for a in argv[2:]]
        assert cli.main(["evaluate", *run]) == 0, argv
        printed = capsys.readouterr().out
        if "--results" in argv:
            outputs = [Path(argv[argv.index(flag) + 1]) for flag in ("--results", "--table", "--chart")]
        else:  # no flags: results, table, charts and the diagnostics tables side by side under evaluate/<folder name>/
            out = Path(evaluate.DEFAULT_OUT) / Path(run[0]).name
            outputs = [out / name for name in evaluate.DEFAULT_FILES]
            assert str(out) in printed
        assert all((p / "diagnostics.parquet" if p.is_dir() else p).is_file() and p.stat().st_size for p in outputs), \
            (argv, outputs)
        assert json.loads(outputs[0].read_text())["benchmark"]["folder"] == run[0]


def _chart_texts(chart: str, css_class: str) -> list[str]:
    import xml.etree.ElementTree as ET

    root = ET.fromstring(chart)
    return [" ".join(t.itertext()) for t in root.iter("{http://www.w3.org/2000/svg}text") if t.get("class") == css_class]


RANDOM_CLIP = {"kind": "clip", "random_init": True, "pair_accuracy": None, "pairs_missing_images": 0,
               "pairs_without_statements": 0, "per_pattern": {}}


@pytest.mark.parametrize("results,why", [
    ({"benchmark": {"format": "release", "pairs": 3}, "models": {}},
     "no model scored: evaluate.clip and evaluate.vlm are empty in params"),
    ({"benchmark": {"format": "release", "pairs": 0}, "models": {"open_clip:ViT-B-32:random": RANDOM_CLIP}},
     "no model scored: the benchmark holds no pairs yet (the release awaits its first accepted annotations)"),
    ({"benchmark": {"format": "mmvp_vlm", "pairs": 2},
      "models": {"c": {**RANDOM_CLIP, "pairs_without_statements": 2, "per_pattern": {STATE: {"pair_accuracy": None}}},
                 "v": {"kind": "vlm", "pair_accuracy": None, "pairs_missing_images": 2, "pairs_without_questions": 0,
                       "per_pattern": {}}}},
     "no model scored: c: 2 pairs without statements, 0 without both images; "
     "v: 0 pairs without questions, 2 without both images"),
])
def test_an_empty_chart_and_table_say_why_nothing_was_scored(results, why):
    assert evaluate.why_unscored(results) == why
    chart = evaluate.svg_chart(results)
    assert " ".join(_chart_texts(chart, "empty")).split() == why.split()  # wrapped, every word kept
    assert evaluate.markdown_table(results).rstrip().endswith(why)


def test_a_scored_chart_has_no_empty_note_and_marks_only_random_models():
    Q = scoring.QuestionResult
    real = {"kind": "vlm", **scoring.score_questions([Q("p", m, STATE, "(a)", "(a)") for m in ("a", "b")])}
    results = {"benchmark": {"format": "release", "pairs": 1}, "models": {"real-vlm": real}}
    chart = evaluate.svg_chart(results)
    assert evaluate.why_unscored(results) is None and _chart_texts(chart, "empty") == []
    assert _chart_texts(chart, "random-weights") == [] and RANDOM_WEIGHTS_MARK not in evaluate.markdown_table(results)
    results["models"]["open_clip:ViT-B-32:random"] = RANDOM_CLIP
    chart = evaluate.svg_chart(results)
    assert _chart_texts(chart, "random-weights") == [f"{RANDOM_WEIGHTS_MARK} (1 of 2 models)"]
    assert ">open_clip:ViT-B-32:random (random weights)</text>" in chart and ">real-vlm</text>" in chart
    assert f"**{RANDOM_WEIGHTS_MARK}**: open_clip:ViT-B-32:random" in evaluate.markdown_table(results)


def _every_pattern_scored() -> dict:
    Q = scoring.QuestionResult
    questions = [Q(f"p{i}", m, name, "(a)", "(a)" if i % 2 else "(b)") for i, name in enumerate(patterns.PAPER_NAMES)
                 for m in ("a", "b")]
    vlm = {"kind": "vlm", **scoring.score_questions(questions)}
    return {"benchmark": {"format": "release", "pairs": 9},
            "models": {"a-vlm-with-a-rather-long-name/v1.5": vlm, "open_clip:ViT-B-32:random": RANDOM_CLIP}}


@pytest.mark.browser
@pytest.mark.parametrize("case", ["demo: random model, no pairs yet", "nine patterns, two models"])
def test_the_chart_drawn_in_chromium_keeps_every_text_inside_and_apart(tmp_path, case):
    """Measured as Chromium draws it: the mark, the empty note, pattern names and legend lie inside the
    picture, none overlapping another."""
    from tests.helpers.annotation_world import chromium

    if case.startswith("demo"):
        results = {"benchmark": {"format": "release", "pairs": 0}, "models": {"open_clip:ViT-B-32:random": RANDOM_CLIP}}
    else:
        results = _every_pattern_scored()
    (tmp_path / "chart.svg").write_text(evaluate.svg_chart(results))
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1800, "height": 600})
        page.goto((tmp_path / "chart.svg").as_uri())
        boxes = page.evaluate("""() => {
            const svg = document.documentElement.getBoundingClientRect();
            return {svg: [svg.left, svg.top, svg.right, svg.bottom],
                    texts: [...document.querySelectorAll('text')].map(t => {
                        const b = t.getBoundingClientRect();
                        return [t.textContent, b.left, b.top, b.right, b.bottom]; })}; }""")
    x0, y0, x1, y1 = boxes["svg"]
    texts = boxes["texts"]
    assert any(t[0].startswith(RANDOM_WEIGHTS_MARK) for t in texts)
    assert any(t[0].startswith("no model scored") for t in texts) == case.startswith("demo")
    for text, left, top, right, bottom in texts:
        assert x0 <= left and right <= x1 and y0 <= top and bottom <= y1, (text, boxes["svg"])
    for i, a in enumerate(texts):
        for b in texts[i + 1:]:
            apart = a[3] <= b[1] or b[3] <= a[1] or a[4] <= b[2] or b[4] <= a[2]
            assert apart, (a, b)
