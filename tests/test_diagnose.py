"""The diagnose stage on the release world: real ingest, the items package releases, the tiny random encoders
of the embed stage and a scripted VLM behind the local OpenAI-compatible server; then package ships its tables.

The scripted model ignores images (it always answers (a)), so its figures are known by hand: question
accuracy 1/2, no pair right, no gain, every error bias-aligned, no flip under shuffling; every pair is a
failure, so each lands in "hidden in plain sight" exactly when the encoder separates it.
"""

from __future__ import annotations

import json
import threading
from http.server import ThreadingHTTPServer

import pyarrow.parquet as pq
import pytest
import yaml

from pipeline import diagnose, package
from pipeline.diagnostics import records
from pipeline.diagnostics.trials import calls_per_question
from pipeline.params import ShuffleParams
from pipeline.release import folder as release
from tests.conftest import TINY_CLIP_TEXT_CONFIG
from tests.helpers.openai_server import chat_handler
from tests.helpers.params import section
from tests.helpers.release_world import build_inputs, package_args, world_pairs

GRIDS, K = [2, 4], 2


@pytest.fixture(scope="module")
def world(sample_corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("diagnose")
    inputs = build_inputs(sample_corpus, root / "inputs")
    asked: list[bytes | None] = []

    def always_a(body, prompt, image):
        asked.append(image)
        return "(a)"

    server = ThreadingHTTPServer(("127.0.0.1", 0), chat_handler(always_a))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        params = yaml.safe_load(inputs["params"].read_text())
        params["evaluate"]["vlm"] = [{"backend": "openai", "url": f"http://127.0.0.1:{server.server_address[1]}/v1",
                                      "model": "always-a", "max_new_tokens": 8, "api_key_env": "DIAGNOSE_NO_KEY",
                                      "timeout": 60.0}]
        params["diagnose"]["shuffle"].update(grids=GRIDS, permutations=K)
        params["embed"]["clip"]["config"] = TINY_CLIP_TEXT_CONFIG  # the statement test reads real text
        inputs["params"].write_text(yaml.safe_dump(params))
        out = root / "diagnostics"
        args = ["--params", str(inputs["params"]), "--accepted", str(inputs["accepted"]), "--images", str(inputs["images"]),
                "--source", str(inputs["manifest"]), "--out", str(out), "--report", str(root / "diagnose.md"),
                "--metrics", str(root / "diagnose.json"), "--cache", str(root / "cache")]
        assert diagnose.main(args) == 0
        first_calls = len(asked)
        assert diagnose.main(args) == 0  # a rerun asks nothing: every reply is cached
        assert len(asked) == first_calls
    finally:
        server.shutdown()
        server.server_close()
    assert package.main(package_args(inputs, root / "release", root / "package.json", "--diagnostics", str(out))) == 0
    return {"inputs": inputs, "out": out, "root": root, "calls": first_calls,
            "metrics": json.loads((root / "diagnose.json").read_text())}


def _rows(world, config):
    return records.from_table(config, pq.read_table(world["out"] / f"{config}.parquet"))


def test_an_image_ignoring_model_gets_the_hand_computed_figures(world):
    pairs = [p for p in world_pairs(world["inputs"]) if not p["withheld"]]  # a withheld image cannot be shown
    model = world["metrics"]["summary"]["models"]["openai:" + next(iter(world["metrics"]["models"])).split(":", 1)[1]]
    assert model["questions"] == 2 * len(pairs) and model["pairs"] == len(pairs)
    assert (model["accuracy"], model["pair_accuracy"], model["gain"], model["leakage"]) == (0.5, 0.0, 0.0, 0.0)
    assert (model["prior_share"], model["bias_aligned_error_rate"]) == (1.0, 1.0)
    assert [s["flip_rate"] for s in model["pixel_shuffle"]] == [0.0] * len(GRIDS)
    assert model["global_cue_pairs"] == 0
    per_question = calls_per_question(ShuffleParams(**{**section("diagnose.shuffle"), "grids": GRIDS, "permutations": K}),
                                      token=False)
    assert model["calls"] == per_question * model["questions"] and model["calls_per_question"] == per_question
    # the two questions of a pair share their prompt: with no image, and with blank images of one size, the second
    # is answered from the cache, so the endpoint saw two calls fewer per pair
    assert world["calls"] == model["calls"] - 2 * len(pairs)


def test_every_pair_is_a_failure_hidden_exactly_where_the_encoder_separates_it(world):
    verdicts = {(v.encoder, v.pair_id): v.separates for v in _rows(world, "encoders")}
    encoders = {e for e, _ in verdicts}
    assert len(encoders) == 2  # the embed stage's CLIP and DINOv2
    for q in _rows(world, "models"):
        assert set(q.bucket_encoders) == encoders
        for encoder, cell in zip(q.bucket_encoders, q.buckets):
            expected = records.HIDDEN_IN_PLAIN_SIGHT if verdicts[(encoder, q.pair_id)] else records.ENCODER_BLIND
            assert cell == expected, (q.item_id, encoder)


def test_the_tables_are_about_the_released_items_and_ship_in_the_release(world):
    released = {r["item_id"]: r for r in pq.read_table(world["root"] / "release" / release.PARQUET_PATH).to_pylist()}
    audit = _rows(world, "diagnostics")
    assert {r.item_id for r in audit} == set(released)  # the text audit covers every released question
    for r in audit:
        assert r.options_swapped == released[r.item_id]["options_swapped"]
    manifest = json.loads((world["root"] / "release" / "manifest.json").read_text())
    for config in records.CONFIGS:
        shipped = pq.read_table(world["root"] / "release" / config / "test-00000-of-00001.parquet")
        assert shipped.equals(pq.read_table(world["out"] / f"{config}.parquet")), config
        assert manifest["configs"][config]["rows"] == shipped.num_rows > 0, config


def test_the_report_and_metrics_name_the_cost(world):
    text = (world["root"] / "diagnose.md").read_text()
    assert "Why models fail" in text and "| always-a" not in text  # models are named in full
    (name, figures), = world["metrics"]["models"].items()
    assert name.startswith("openai:") and name.endswith(":always-a")
    assert figures["calls_per_question"] == 3 + len(GRIDS) * K
    assert world["metrics"]["pairs"] == len(world_pairs(world["inputs"]))


def test_a_model_that_is_down_stops_the_stage_with_what_to_do(world, tmp_path, capsys):
    from pipeline.core.errors import run_command
    from tests.helpers.journey_world import free_port

    params = yaml.safe_load(world["inputs"]["params"].read_text())
    params["evaluate"]["vlm"][0]["url"] = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    inputs = world["inputs"]
    code = run_command(diagnose.main, "diagnose", [
        "--params", str(path), "--accepted", str(inputs["accepted"]), "--images", str(inputs["images"]),
        "--source", str(inputs["manifest"]), "--out", str(tmp_path / "out"), "--metrics", str(tmp_path / "m.json"),
        "--cache", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    [line] = [line for line in err.splitlines() if line.startswith("clipblind diagnose:")]
    assert line.startswith("clipblind diagnose: openai:http://127.0.0.1:") and "did not answer" in line
    assert "The 0 replies so far are kept in" in err and "rerun" in err
    assert not (tmp_path / "out").exists()  # nothing half-written
