"""The blind gate: each rule with a scripted backend whose answers are known, drop/keep through package."""

from __future__ import annotations

import hashlib
import json

import pytest
import yaml

from pipeline import gate, package
from pipeline.core import schemas
from pipeline.images.corpus import Corpus
from pipeline.release import folder as release
from pipeline.vlm import gate_rules
from tests.helpers.params import demo_params, source_params
from tests.helpers.release_world import COLOR, build_inputs, package_args


class Scripted:
    """A backend whose reply is a known function of the prompt's options and the image it is shown."""

    def __init__(self, policy: str, truth: dict[str, str]) -> None:
        self.name = f"scripted:{policy}"
        self.policy = policy
        self.truth = truth  # sha256 of shown image bytes → the option text true of it
        self.asked: list[tuple[str, str | None]] = []

    def ask(self, prompt: str, image: bytes | None) -> str:
        options_line = next(line for line in prompt.splitlines() if line.startswith("Options: "))
        first, second = options_line[len("Options: (a) "):].split(" (b) ")
        self.asked.append((prompt, hashlib.sha256(image).hexdigest() if image else None))
        if self.policy == "always_a":
            return "(a)"
        if self.policy == "text_biased_on_colour" and "red" not in prompt:
            return self._sees(first, image)
        if self.policy in ("text_biased", "text_biased_on_colour"):  # the alphabetically first option, whatever it sees
            return "(a)" if first < second else "(b)"
        if self.policy == "sees":
            return self._sees(first, image)
        raise AssertionError(self.policy)

    def _sees(self, first: str, image: bytes | None) -> str:
        seen = self.truth.get(hashlib.sha256(image).hexdigest()) if image else None
        if seen is None:
            return "I cannot tell."
        return "(a)" if seen == first else "(b)"


@pytest.fixture(scope="module")
def world(sample_corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("gate")
    inputs = build_inputs(sample_corpus, root / "inputs")
    accepted = schemas.read_table(inputs["accepted"], "accepted")
    images = schemas.read_table(inputs["images"], "images")
    corpus = Corpus(source_params("manifest", name="generated"), inputs["manifest"])
    encode = gate_rules.image_encoder(demo_params("export", display_max_side=128, jpeg_quality=90), 10_000_000)
    location = dict(zip(images.column("image_id").to_pylist(), images.column("source_path").to_pylist()))
    truth = {}
    for row in accepted.to_pylist():
        for member in ("a", "b"):
            if row[f"image_{member}"] in location:
                shown = encode(corpus.read(location[row[f"image_{member}"]]))
                chosen = row[f"answer_{member}"]
                truth[hashlib.sha256(shown).hexdigest()] = row["option_a"] if chosen == "(a)" else row["option_b"]
    return {"root": root, "inputs": inputs, "accepted": accepted, "images": images, "read": corpus.read,
            "encode": encode, "truth": truth}


def _run(world, policy, **params):
    backend = Scripted(policy, world["truth"])
    table, metrics = gate.gate(world["accepted"], world["images"], world["read"], world["encode"], backend,
                               demo_params("gate", **params))
    return {r["item_id"]: r for r in table.to_pylist()}, metrics, backend


def test_a_text_biased_model_flags_exactly_the_items_whose_answer_it_prefers(world):
    rows, metrics, _ = _run(world, "text_biased")
    for pair in world["accepted"].to_pylist():
        preferred = "(a)" if pair["option_a"] < pair["option_b"] else "(b)"
        for member in ("a", "b"):
            row = rows[f"{pair['pair_id']}-{member}"]
            if not row["checked"]:
                continue
            favoured = pair[f"answer_{member}"] == preferred
            assert row["blind_right"] == (6 if favoured else 0)
            assert row["flags"] == (["blind_answerable"] if favoured else [])
    assert metrics["unchecked_pairs"] == {"bad_answers": 1, "missing_image": 1}
    assert metrics["flags"]["swap_insensitive"] == 0


def test_a_position_biased_model_is_flagged_swap_insensitive_and_not_blind(world):
    rows, metrics, _ = _run(world, "always_a")
    checked = [r for r in rows.values() if r["checked"]]
    assert checked and all(r["flags"] == ["swap_insensitive"] for r in checked)
    assert all(r["blind_right"] == 3 for r in checked)  # chance: right once per condition
    assert all(r["real_answers"] == ["(a)", "(a)"] for r in checked)


def test_a_model_that_needs_the_image_raises_no_flag(world):
    rows, metrics, backend = _run(world, "sees")
    checked = [r for r in rows.values() if r["checked"]]
    assert all(r["flags"] == [] and r["blind_right"] == 0 for r in checked)
    assert metrics["flagged_items"] == 0 and metrics["passed"] == metrics["inputs"] == 7
    # every condition was asked: no image, a blank image, the other image, the real image, both option orders
    per_item = 8
    assert len(backend.asked) == per_item * len(checked)
    assert sum(1 for _, image in backend.asked if image is None) == 2 * len(checked)


def test_blind_threshold_is_a_param(world):
    _, strict, _ = _run(world, "always_a", blind_min_right=6)
    _, loose, _ = _run(world, "always_a", blind_min_right=3)
    assert strict["flags"]["blind_answerable"] == 0 and loose["flags"]["blind_answerable"] == strict["items"] - 4


@pytest.mark.parametrize("policy", ["drop", "keep"])
def test_package_drops_or_keeps_flagged_pairs_and_reports_them(world, tmp_path, policy):
    by_item, metrics, _ = _run(world, "text_biased_on_colour", flagged=policy)
    rows = list(by_item.values())
    colour = next(p["pair_id"] for p in world["accepted"].to_pylist() if p["pattern"] == COLOR)
    assert {r["pair_id"] for r in rows if r["flags"]} == {colour} and metrics["flagged_items"] == 1
    gate_path = tmp_path / "gate.parquet"
    import pyarrow as pa

    schemas.write_table(pa.Table.from_pylist(rows, schema=gate.GATE), gate_path, "gate",
                        meta={"ran": True, "model": "scripted:text_biased_on_colour"})
    params = yaml.safe_load(world["inputs"]["params"].read_text())
    params["gate"] = {**params["gate"], "vlm": None, "flagged": policy}
    inputs = dict(world["inputs"], params=tmp_path / "params.yaml")
    inputs["params"].write_text(yaml.safe_dump(params))
    out = tmp_path / "release"
    assert package.main(package_args(inputs, out, tmp_path / "m.json", "--gate", str(gate_path))) == 0
    manifest = release.read_manifest(out)
    pkg = json.loads((tmp_path / "m.json").read_text())
    flagged_items = {r["item_id"] for r in rows if r["flags"]}
    items = release.read_items(out)
    assert manifest["gate"]["policy"] == ("dropped" if policy == "drop" else "kept")
    assert manifest["gate"]["model"] == "scripted:text_biased_on_colour"
    card = (out / "README.md").read_text()
    assert "`scripted:text_biased_on_colour`" in card and f"were **{manifest['gate']['policy']}**" in card
    if policy == "drop":
        assert colour not in {i["pair_id"] for i in items} and pkg["rejected_by_reason"]["gate_dropped"] == 1
        assert pkg["packaged"] == 3 and pkg["packaged"] + pkg["rejected"] == pkg["inputs"]
    else:
        kept = {i["item_id"]: i["gate_flags"] for i in items if i["gate_flags"]}
        assert set(kept) == flagged_items and all(v == ["blind_answerable"] for v in kept.values())
        assert pkg["packaged"] == 4 and manifest["counts"]["gate_flagged_items"] == 1


def test_gate_without_a_model_says_it_did_not_run(world, tmp_path):
    params = yaml.safe_load(world["inputs"]["params"].read_text())
    params["gate"] = {**params["gate"], "vlm": None, "flagged": "drop"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert gate.main(["--params", str(tmp_path / "params.yaml"), "--accepted", str(world["inputs"]["accepted"]),
                      "--images", str(world["inputs"]["images"]), "--source", str(world["inputs"]["manifest"]),
                      "--out", str(tmp_path / "gate.parquet"), "--metrics", str(tmp_path / "g.json")]) == 0
    assert gate_rules.load_decision(tmp_path / "gate.parquet", tmp_path / "params.yaml") is None
    metrics = json.loads((tmp_path / "g.json").read_text())
    assert metrics["ran"] is False and metrics["passed"] + metrics["dropped"] == metrics["inputs"]


@pytest.mark.slow
def test_gate_stage_runs_a_tiny_transformers_vlm_and_resumes(world, tmp_path):
    from tests.helpers.tiny_vlm import build_tiny_vlm

    model = build_tiny_vlm(tmp_path / "vlm")
    params = yaml.safe_load(world["inputs"]["params"].read_text())
    params["gate"] = {**params["gate"], "vlm": {"backend": "transformers", "model": str(model), "max_new_tokens": 4}, "flagged": "keep"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    args = ["--params", str(tmp_path / "params.yaml"), "--accepted", str(world["inputs"]["accepted"]),
            "--images", str(world["inputs"]["images"]), "--source", str(world["inputs"]["manifest"]),
            "--out", str(tmp_path / "gate.parquet"), "--metrics", str(tmp_path / "g.json"), "--cache", str(tmp_path / "cache")]
    assert gate.main(args) == 0
    first = (tmp_path / "gate.parquet").read_bytes()
    metrics = json.loads((tmp_path / "g.json").read_text())
    assert metrics["items"] == 14 and metrics["unchecked_pairs"] == {"bad_answers": 1, "missing_image": 1} and metrics["passed"] + metrics["dropped"] == metrics["inputs"] == 7
    cache = next((tmp_path / "cache").iterdir())
    lines = len(cache.read_text().splitlines())
    assert gate.main(args) == 0  # resumes from the cache: no new calls, same table
    assert len(cache.read_text().splitlines()) == lines
    assert (tmp_path / "gate.parquet").read_bytes() == first
