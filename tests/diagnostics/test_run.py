"""The whole diagnostics run on scripted parts whose behaviour is known: a stub vision tower with planted
features (known encoder verdicts), scripted VLMs (known answers), so the 2x2, the summary, the tables
and the reports are checked against figures computed by hand."""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET
from collections.abc import Sequence

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.core.patterns import lookup
from pipeline.diagnostics import records, report
from pipeline.diagnostics.features import Features
from pipeline.diagnostics.run import SUMMARY, diagnose, write_diagnostics
from pipeline.params import DiagnoseParams, EncoderDiagnosticsParams, ShuffleParams, TextBiasParams
from pipeline.vlm.pairs import EvalPair
from tests.helpers.params import section

SIZE = 32


def png(colour: tuple[int, int, int]) -> bytes:
    """A colour with a ramp across it, so permuted tiles make other bytes."""
    pixels = np.zeros((SIZE, SIZE, 3), np.uint8) + np.array(colour, np.uint8)
    pixels[..., 1] = np.arange(SIZE, dtype=np.uint8)[None, :] * 3 + np.arange(SIZE, dtype=np.uint8)[:, None]
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


# Four pairs of one pattern; each image a distinct red-blue colour (green is a ramp), so the stub encoder and the
# scripted model know it.
COLOURS = [((200, 0, 0), (0, 0, 200)), ((0, 0, 0), (200, 0, 100)), ((60, 0, 120), (120, 0, 60)),
           ((90, 90, 90), (10, 10, 10))]
PAIRS = [EvalPair(f"p{k}", lookup("color").paper, f"Which colour is it, {k}?", ("first", "second"), ("(a)", "(b)"),
                  (png(a), png(b))) for k, (a, b) in enumerate(COLOURS)]
SEPARATED = {"p0", "p1"}  # the planted tower tells these pairs apart (its patch tokens differ), not the others


class PlantedTower:
    """An encoder without a text tower whose patch tokens differ within a pair only for the pairs in SEPARATED."""

    name = "planted-tower"
    random_init = False

    def __init__(self) -> None:
        self.by_image = {}
        for pair in PAIRS:
            for member, image in enumerate(pair.images):
                apart = pair.pair_id in SEPARATED
                token = np.array([1.0, 0.0, 0.0]) if member == 0 or not apart else np.array([0.0, 1.0, 0.0])
                self.by_image[image] = token

    def features(self, images: Sequence[bytes]) -> Features:
        tokens = np.stack([np.stack([self.by_image[i]] * 4) for i in images]).astype(np.float32)
        pooled = np.stack([self.by_image[i] for i in images]).astype(np.float32)
        return Features(pooled, tokens, tokens)

    def texts(self, texts: Sequence[str]) -> None:
        return None


class ScriptedVlm:
    """Right on the real images of pairs p0 and p2 (both members), otherwise answers (a); with no image (a)."""

    name = "scripted"

    def __init__(self) -> None:
        self.truth = {image: answer for p in PAIRS if p.pair_id in {"p0", "p2"} for image, answer in zip(p.images, p.answers)}

    def ask(self, prompt: str, image: bytes | None) -> str:
        return self.truth.get(image, "(a)") if image is not None else "(a)"


def params() -> DiagnoseParams:
    # probe_min_train_pairs above the pattern's pairs: the patch rule decides, so the verdicts are the planted ones
    encoders = {**section("diagnose.encoders"), "probe_min_train_pairs": 10, "separable_min": 0.5}
    return DiagnoseParams(shuffle=ShuffleParams(**{**section("diagnose.shuffle"), "grids": (2, 4), "permutations": 2}),
                          encoders=EncoderDiagnosticsParams(**encoders),
                          text_bias=TextBiasParams(**{**section("diagnose.text_bias"), "folds": 2}))


@pytest.fixture(scope="module")
def run():
    return diagnose(PAIRS, [ScriptedVlm()], [PlantedTower()], params())


def test_the_2x2_puts_every_pair_in_the_cell_its_parts_say(run):
    # p0: separated, right → seen and answered; p1: separated, wrong → hidden; p2: not separated, right →
    # answered without the encoder; p3: not separated, wrong → encoder-blind
    cells = {q.pair_id: dict(zip(q.bucket_encoders, q.buckets)) for q in records.from_table("models", run.tables["models"])}
    assert cells == {"p0": {"planted-tower": records.SEEN_AND_ANSWERED}, "p1": {"planted-tower": records.HIDDEN_IN_PLAIN_SIGHT},
                     "p2": {"planted-tower": records.ANSWERED_BLIND}, "p3": {"planted-tower": records.ENCODER_BLIND}}
    s = run.summary["models"]["scripted"]["encoders"]["planted-tower"]
    assert s["buckets"] == {records.SEEN_AND_ANSWERED: 1, records.HIDDEN_IN_PLAIN_SIGHT: 1, records.ANSWERED_BLIND: 1,
                            records.ENCODER_BLIND: 1}
    assert (s["hidden_share"], s["encoder_blind_share"]) == (0.5, 0.5)  # of the two failed pairs


def test_the_summary_holds_the_hand_computed_figures(run):
    m = run.summary["models"]["scripted"]
    # right on p0, p2 (4 questions) and on the (a) answers of p1, p3 (2 more): 6 of 8
    assert (m["accuracy"], m["pair_accuracy"], m["no_image_accuracy"]) == (0.75, 0.5, 0.5)
    assert m["gain"] == 0.25 and m["leakage"] == 0.0
    assert m["bias_aligned_error_rate"] == 1.0  # both wrong answers are (a), its no-image answer
    # shuffled tiles are not the real image: it answers (a), right on the four first images only
    assert [s["accuracy"] for s in m["pixel_shuffle"]] == [0.5, 0.5]
    assert m["global_cue_pairs"] == 0
    assert m["calls"] == 8 * (3 + 2 * 2) and m["calls_per_question"] == 7.0
    enc = run.summary["encoders"]["planted-tower"]
    assert (enc["pairs"], enc["separates"], enc["by_patch"], enc["by_probe"]) == (4, 2, 4, 0)
    assert run.summary["text_bias"]["questions"] == 8


def test_the_tables_have_their_schemas_and_round_trip(run, tmp_path):
    write_diagnostics(run, tmp_path)
    for name, schema in records.SCHEMAS.items():
        assert pq.read_table(tmp_path / f"{name}.parquet").schema.equals(schema), name
    assert len(records.from_table("predictions", pq.read_table(tmp_path / "predictions.parquet"))) == 8 * 7
    assert json.loads((tmp_path / SUMMARY).read_text()) == json.loads(json.dumps(run.summary))


def test_the_reports_show_the_figures(run):
    text = report.markdown(run.summary)
    row = next(line for line in text.splitlines() if line.startswith("| scripted | planted-tower |"))
    assert row.split(" | ")[2:7] == ["4", "1", "1", "1", "1"]
    assert "| 50.0 % | 50.0 % |" in row
    buckets = ET.fromstring(report.buckets_svg(run.summary))
    counts = [t.text for t in buckets.iter("{http://www.w3.org/2000/svg}text") if t.text in {"0", "1", "2"}]
    assert counts == ["1", "1", "1", "1"]
    shuffle = ET.fromstring(report.shuffle_svg(run.summary))
    lines = list(shuffle.iter("{http://www.w3.org/2000/svg}polyline"))
    assert len(lines) == 1  # one pattern
    ys = [float(p.split(",")[1]) for p in lines[0].get("points").split()]
    assert len(ys) == 3 and ys[0] < ys[1] == ys[2]  # 75 % unshuffled above 50 % at g=2 and g=4


def test_without_a_model_the_reports_say_why():
    empty = diagnose(PAIRS, [], [PlantedTower()], params())
    assert empty.tables["models"].num_rows == 0 and empty.tables["predictions"].num_rows == 0
    assert report.NO_MODEL in report.markdown(empty.summary)
    for svg in (report.shuffle_svg(empty.summary), report.buckets_svg(empty.summary)):
        assert report.NO_MODEL in svg
        ET.fromstring(svg)


def test_an_empty_benchmark_reports_nothing_to_audit():
    from pipeline.diagnostics.summary import summarise

    empty = diagnose([], [], [], params())
    assert empty.summary == summarise({})
    text = report.markdown(empty.summary)
    assert "No questions to audit yet." in text and "n/a %" not in text
