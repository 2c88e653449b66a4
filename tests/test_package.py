"""The package stage on a real ingest of generated images: every layout, loaded back the way users load it."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import pyarrow as pa
import pytest
from PIL import Image

from pipeline import cli, package
from pipeline.core import patterns, schemas
from pipeline.images import display
from pipeline.images.decode import decode
from pipeline.params import PackageParams
from pipeline.release import folder as release
from pipeline.release import mmvp
from tests.helpers.params import demo_params
from tests.helpers.release_world import WITHHELD_LICENSE, WORLD_PATTERN_KEYS, build_inputs, package_args


@pytest.fixture(scope="module")
def world(sample_corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("release")
    inputs = build_inputs(sample_corpus, root / "inputs")
    out = root / "release"
    assert package.main(package_args(inputs, out, root / "package.json")) == 0
    return {"inputs": inputs, "release": out, "metrics": json.loads((root / "package.json").read_text()), "root": root}


OTHER_LETTER = {"(a)": "(b)", "(b)": "(a)"}


def _accepted(world):
    return {r["pair_id"]: r for r in schemas.read_table(world["inputs"]["accepted"], "accepted").to_pylist()}


def test_bad_rows_are_counted_with_reasons_and_cost_no_other_pair(world):
    m = world["metrics"]
    assert m["inputs"] == 7 and m["packaged"] == 4 and m["rejected"] == 3
    assert m["packaged"] + m["rejected"] == m["inputs"]
    assert m["rejected_by_reason"] == {"bad_answers": 1, "missing_image": 1, "unknown_pattern": 1}
    assert all(r["detail"] for r in m["rejects"])
    assert m["random_init_encoders"] == ["clip", "dino"]


def test_release_loads_offline_with_load_dataset(world, monkeypatch):
    import datasets

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(world["root"] / "hf-cache"))
    ds = datasets.load_dataset(str(world["release"]), split="test")
    assert ds.features == release.features()
    rows = list(ds)  # decoded: images as PIL images
    accepted = _accepted(world)
    assert len(rows) == 8 and len({r["pair_id"] for r in rows}) == 4
    images = {r["image_id"]: r for r in schemas.read_table(world["inputs"]["images"], "images").to_pylist()}
    corpus_root = world["inputs"]["manifest"].parent
    for row in rows:
        source = accepted[row["pair_id"]]
        member = row["member"]
        assert row["item_id"] == f"{row['pair_id']}-{member}"
        assert row["source_sha256"] == source[f"image_{member}"]
        # the written options, reversed for answer balance where the item says so, with the letters flipped
        letter = OTHER_LETTER if row["options_swapped"] else {a: a for a in patterns.ANSWERS}
        written = [source["option_a"], source["option_b"]]
        assert row["options"] == (written[::-1] if row["options_swapped"] else written)
        assert row["answer"] == letter[source[f"answer_{member}"]]
        assert row["question"] == source["question"].strip()
        assert row["verifier_answers"] == [letter.get(v, v) for v in source[f"verifier_answers_{member}"]]
        meta = images[row["source_sha256"]]
        if meta["source_license"] == WITHHELD_LICENSE:
            assert row["image"] is None and not row["redistributed"] and row["image_sha256"] is None
            continue
        # the released image is the canonical decode, encoded exactly as the annotators' display copy
        original = (corpus_root / meta["source_path"]).read_bytes()
        expected = display.display_bytes(original, demo_params("export", display_max_side=128, jpeg_quality=90), 10_000_000)
        assert isinstance(row["image"], Image.Image)
        assert row["image"].convert("RGB").tobytes() == decode(expected).image.tobytes()
        assert ds.with_format("arrow")[rows.index(row)]["image"][0]["bytes"].as_py() == expected
        assert row["image_sha256"] == hashlib.sha256(expected).hexdigest()  # the released bytes' own hash
    # answer position balanced: the first image's answer is (a) in two of the four pairs, recorded per item
    firsts = [r for r in rows if r["member"] == "a"]
    assert sorted(r["answer"] for r in firsts) == ["(a)", "(a)", "(b)", "(b)"]
    assert {r["options_swapped"] for r in firsts} == {True, False}
    released = {r["pair_id"]: (r["pattern"], r["pattern_key"]) for r in rows}
    assert sorted(released.values()) == sorted((p.paper, p.key) for p in map(patterns.by_key, WORLD_PATTERN_KEYS))
    assert {r["statement"] is None for r in rows if r["pattern_key"] == "quantity"} == {True}


def test_mmvp_layout_reads_like_mmvps_scripts(world):
    folder = world["release"] / mmvp.MMVP_DIR
    with open(folder / "Questions.csv", newline="") as handle:
        lines = list(csv.reader(handle))
    assert lines[0] == ["Index", "Question", "Options", "Correct Answer"]
    body = lines[1:]
    assert len(body) == 8
    items = {i["mmvp_index"]: i for i in release.read_items(world["release"])}
    for position, (index, _question, options, answer) in enumerate(body):
        # MMVP's evaluation uses the row position (+1) as the image number
        assert int(index) == position + 1
        assert options.startswith("(a) ") and " (b) " in options
        item = items[position + 1]
        assert answer == item["answer"] and mmvp.parse_options(options) == tuple(item["options"])
        image = folder / "MMVP Images" / f"{position + 1}.jpg"
        assert image.exists() == item["redistributed"]
        if item["redistributed"]:
            assert image.read_bytes() == item["image"]
    for first, second in zip(body[0::2], body[1::2]):  # pairs are consecutive rows
        assert first[1] == second[1] and first[2] == second[2] and first[3] != second[3]
    # MMVP's evaluate_mllm.py reads the CSV with pandas and takes image `index + 1` for row `index`
    import pandas

    for index, row in pandas.read_csv(folder / "Questions.csv").iterrows():
        assert row["Correct Answer"] == items[index + 1]["answer"]
        assert row["Question"] + " " + row["Options"] == f"{body[index][1]} {body[index][2]}"
    # every cell holds the text exactly as accepted
    assert sorted({q for _, q, _, _ in body}) == sorted(r["question"] for r in _accepted(world).values()
                                                        if r["pair_id"] in {i["pair_id"] for i in items.values()})

    vlm = mmvp.read_vlm(world["release"] / mmvp.VLM_DIR)
    assert [r.question_id for r in vlm] == list(range(1, 7))  # 3 pairs with statements
    # in blocks of one pattern, in the order of MMVP's evaluate_vlm.py, as its script reads them
    order = [patterns.by_key(k).vlm_type for k in ("orientation", "state", "color")]
    assert [r.type for r in vlm] == [t for t in order for _ in range(2)]
    by_id = {i["vlm_question_id"]: i for i in items.values() if i["vlm_question_id"]}
    for row in vlm:
        item = by_id[row.question_id]
        assert row.type == patterns.by_key(item["pattern_key"]).vlm_type and row.statement == item["statement"]
        assert item["member"] == ("a" if row.question_id % 2 else "b")  # odd id = the pair's first image
        path = world["release"] / mmvp.VLM_DIR / "MLLM_VLM Images" / row.type / f"{row.question_id}.jpg"
        assert path.exists() == item["redistributed"]
    for first, second in zip(vlm[0::2], vlm[1::2]):
        assert by_id[first.question_id]["pair_id"] == by_id[second.question_id]["pair_id"]


def test_webdataset_shards_read_back_to_the_same_records(world):
    import webdataset as wds

    shards = sorted(str(p) for p in (world["release"] / "webdataset").glob("*.tar"))
    assert len(shards) == 3  # 8 items, shard_size 3
    read = {}
    for sample in wds.WebDataset(shards, shardshuffle=False, empty_check=False):
        record = json.loads(sample["json"])
        read[sample["__key__"]] = (record, sample.get("jpg"))
    items = {i["item_id"]: i for i in release.read_items(world["release"])}
    assert set(read) == set(items)
    for key, (record, jpg) in read.items():
        assert record == release.record_json(items[key])
        assert jpg == items[key]["image"]


def test_building_twice_gives_byte_identical_files(world, tmp_path):
    again = tmp_path / "again"
    assert package.main(package_args(world["inputs"], again, tmp_path / "m.json")) == 0
    first = {p.relative_to(world["release"]): p.read_bytes() for p in world["release"].rglob("*") if p.is_file()}
    second = {p.relative_to(again): p.read_bytes() for p in again.rglob("*") if p.is_file()}
    assert first.keys() == second.keys() and len(first) > 20
    assert [str(k) for k in first if first[k] != second[k]] == []


def _record(world, tmp_path):
    """A record of released versions holding the world's release as released 1.0.0."""
    record = tmp_path / "RELEASED.json"
    assert release.record_release(record, world["release"])
    return record


def test_rebuilding_in_place_compares_with_the_last_release(world, tmp_path, capsys):
    import shutil

    import pyarrow as pa

    out = tmp_path / "release"
    shutil.copytree(world["release"], out)
    record = ["--released", str(_record(world, tmp_path))]
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert package.main(package_args(world["inputs"], out, tmp_path / "m.json", *record)) == 0  # same inputs: same bytes
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    rows = schemas.read_table(world["inputs"]["accepted"], "accepted").to_pylist()
    rows[0]["question"] += " (reworded)"
    accepted = tmp_path / "accepted.parquet"
    schemas.write_table(pa.Table.from_pylist(rows, schema=schemas.ACCEPTED), accepted, "accepted")
    # iterating works: the build is marked unreleased, with the change and what to do listed
    assert package.main(package_args(dict(world["inputs"], accepted=accepted), out, tmp_path / "m.json", *record)) == 0
    assert "set package.version in params.yaml to 1.1.0" in capsys.readouterr().err
    manifest = release.read_manifest(out)
    assert manifest["version"] == "1.1.0-dev" and manifest["release"]["status"] == release.UNRELEASED
    assert manifest["changes"]["changed_items"] == {f"{rows[0]['pair_id']}-a": ["question"],
                                                    f"{rows[0]['pair_id']}-b": ["question"]}
    assert release.verify(out).ok
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["status"] == release.UNRELEASED and metrics["pending_changes"]["changed_items"] == 2


def test_verify_detects_a_flipped_byte_in_every_file(world, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(world["release"], copy)
    assert release.verify(copy).ok
    assert subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=copy).returncode == 0
    files = sorted(p for p in copy.rglob("*") if p.is_file())
    for path in files:
        original = path.read_bytes()
        for offset in (0, len(original) // 2, len(original) - 1):
            flipped = bytearray(original)
            flipped[offset] ^= 0x01
            path.write_bytes(bytes(flipped))
            report = release.verify(copy)
            assert not report.ok, f"flip at {offset} in {path.relative_to(copy)} went unnoticed"
            rel = path.relative_to(copy).as_posix()
            if rel != "SHA256SUMS":
                assert report.changed == (rel,)
            path.write_bytes(original)
    assert release.verify(copy).ok
    (copy / "mmvp" / "MMVP Images" / "1.jpg").unlink()
    (copy / "stray.txt").write_text("x")
    report = release.verify(copy)
    assert report.missing == ("mmvp/MMVP Images/1.jpg",) and report.extra == ("stray.txt",)
    result = subprocess.run([sys.executable, "-m", "pipeline.commands.verify", str(copy)], capture_output=True, text=True)
    assert result.returncode == 1 and "missing: mmvp/MMVP Images/1.jpg" in result.stdout


def test_card_metadata_is_valid_and_tells_the_provenance(world):
    from huggingface_hub import DatasetCard

    card = DatasetCard.load(world["release"] / "README.md")
    data = card.data.to_dict()
    assert data["license"] == "other" and WITHHELD_LICENSE in data["license_details"]
    assert data["task_categories"][0] == "visual-question-answering"
    assert data["size_categories"] == ["n<1K"]
    assert data["configs"][0]["data_files"][0]["path"] == release.PARQUET_PATH
    names = [f["name"] for f in data["dataset_info"]["features"]]
    assert names == [name for name, _ in release.FEATURES_SPEC]
    text = card.text
    assert text.lstrip().startswith("> **WARNING: this release was mined with RANDOMLY INITIALISED encoders")
    for fact in ("tiny-clip", "libraries: open_clip 3.3.0, torch 2.14.1", "CLIP cosine > 0.9", "DINOv2 cosine < 0.99", "**exhaustive**", "| clip_candidates | 40 |",
                 "verifier accuracy against the\n  released answers: **0.75**", "### 1.0.0", "@misc{clipblind"):
        assert fact in text, fact
    manifest = release.read_manifest(world["release"])
    assert manifest["counts"]["pairs_per_pattern"]["color"] == 1
    for p in patterns.PATTERNS:  # the card names every pattern as the paper does, with its key and MMVP-VLM type
        assert f"| {p.paper} | `{p.key}` | {p.vlm_type} | {manifest['counts']['pairs_per_pattern'][p.key]} |" in text
    assert manifest["counts"]["verification"] == {"verifier_answers": 16, "verifier_accuracy": 0.75,
                                                  "verified_pairs": 3, "adjudicated_pairs": 1}
    assert manifest["provenance"]["search"] == "exhaustive" and manifest["gate"] is None


def test_a_version_without_a_changelog_section_is_built_unreleased(world, tmp_path, capsys):
    params = world["inputs"]["params"].read_text().replace("version: 1.0.0", "version: 1.1.0")
    inputs = dict(world["inputs"], params=tmp_path / "params.yaml")
    inputs["params"].write_text(params)
    assert package.main(package_args(inputs, tmp_path / "out", tmp_path / "m.json")) == 0
    assert "add a '## 1.1.0' section" in capsys.readouterr().err
    manifest = release.read_manifest(tmp_path / "out")
    assert manifest["version"] == "1.1.0-dev" and manifest["release"]["status"] == release.UNRELEASED
    assert "UNRELEASED BUILD 1.1.0-dev" in (tmp_path / "out" / "README.md").read_text()


def test_a_corrected_answer_must_be_a_changelog_line(world, tmp_path, capsys):
    import pyarrow as pa

    rows = schemas.read_table(world["inputs"]["accepted"], "accepted").to_pylist()
    fixed = next(r for r in rows if r["pattern"] == "state")
    fixed["answer_a"], fixed["answer_b"] = fixed["answer_b"], fixed["answer_a"]
    inputs = dict(world["inputs"], accepted=tmp_path / "accepted.parquet", params=tmp_path / "params.yaml",
                  changelog=tmp_path / "CHANGELOG.md")
    schemas.write_table(pa.Table.from_pylist(rows, schema=schemas.ACCEPTED), inputs["accepted"], "accepted")
    previous = ["--released", str(_record(world, tmp_path))]
    # same version, changed answers: built as the next version's -dev, which says to bump
    inputs["params"].write_text(world["inputs"]["params"].read_text())
    inputs["changelog"].write_text(world["inputs"]["changelog"].read_text())
    assert package.main(package_args(inputs, tmp_path / "out", tmp_path / "m.json", *previous)) == 0
    assert "set package.version in params.yaml to 1.1.0" in capsys.readouterr().err
    assert release.read_manifest(tmp_path / "out")["version"] == "1.1.0-dev"
    # new version whose changelog does not name the pair: still unreleased, naming the pair to add
    inputs["params"].write_text(world["inputs"]["params"].read_text().replace("version: 1.0.0", "version: 1.0.1"))
    inputs["changelog"].write_text("# Changelog\n\n## 1.0.1\n\n- Fixes.\n\n" + world["inputs"]["changelog"].read_text()[13:])
    assert package.main(package_args(inputs, tmp_path / "out", tmp_path / "m.json", *previous)) == 0
    assert fixed["pair_id"] in capsys.readouterr().err
    assert release.read_manifest(tmp_path / "out")["version"] == "1.0.1-dev"
    # named: releasable, and the manifest records the change
    inputs["changelog"].write_text(f"# Changelog\n\n## 1.0.1\n\n- Corrected the answers of pair {fixed['pair_id']}.\n\n"
                                   + world["inputs"]["changelog"].read_text()[13:])
    assert package.main(package_args(inputs, tmp_path / "out", tmp_path / "m.json", *previous)) == 0
    manifest = release.read_manifest(tmp_path / "out")
    assert manifest["version"] == "1.0.1" and manifest["release"] == {"status": release.RELEASABLE, "todo": []}
    changes = manifest["changes"]
    assert changes["previous_version"] == "1.0.0"
    # the pair keeps its place in the answer balance (the first image's released letter), so swapped written answers
    # come out as the options reversed: each image's right option text is the other one, as corrected
    assert changes["changed_items"] == {f"{fixed['pair_id']}-a": ["options"], f"{fixed['pair_id']}-b": ["options"]}
    before = {i["item_id"]: i for i in release.read_items(world["release"])}
    after = {i["item_id"]: i for i in release.read_items(tmp_path / "out")}
    assert after.keys() == before.keys()
    for item_id, item in after.items():
        old = before[item_id]
        if item["pair_id"] != fixed["pair_id"]:
            assert item == old
            continue
        assert item["answer"] == old["answer"] and item["options"] == old["options"][::-1]
        assert item["options_swapped"] != old["options_swapped"]
        right = item["options"][patterns.ANSWERS.index(item["answer"])]
        assert right != old["options"][patterns.ANSWERS.index(old["answer"])]
        assert right == [fixed["option_a"], fixed["option_b"]][patterns.ANSWERS.index(fixed[f"answer_{item['member']}"])]


def test_remove_yields_a_new_version_naming_the_removed_items(world, tmp_path):
    items = release.read_items(world["release"])
    target = next(i for i in items if i["pattern_key"] == "color")
    out = tmp_path / "v1.1.0"
    before = release.file_sha256(world["release"] / "SHA256SUMS")
    from pipeline.commands import remove

    # a takedown names the source image (its image id); the released bytes' hash names the same pair
    assert remove.resolve(items, [target["image_sha256"]]) == remove.resolve(items, [target["source_sha256"]])
    assert target["image_sha256"] != target["source_sha256"]
    assert remove.main([str(world["release"]), "--ids", target["source_sha256"], "--reason", "takedown request #1",
                        "--out", str(out)]) == 0
    assert release.file_sha256(world["release"] / "SHA256SUMS") == before  # the old version is untouched
    manifest = release.read_manifest(out)
    assert manifest["version"] == "1.1.0" and manifest["counts"]["pairs"] == 3
    assert manifest["changes"]["removed_pairs"] == [target["pair_id"]]
    changelog = (out / "CHANGELOG.md").read_text()
    section = changelog.split("## 1.1.0", 1)[1].split("## 1.0.0")[0]
    assert "takedown request #1" in section and target["pair_id"] in section
    assert f"{target['pair_id']}-a" in section and f"{target['pair_id']}-b" in section
    assert release.verify(out).ok
    left = release.read_items(out)
    assert target["pair_id"] not in {i["pair_id"] for i in left}
    assert [i["mmvp_index"] for i in left] == list(range(1, 7))
    assert cli.main(["remove", str(world["release"]), "--ids", "nope", "--reason", "x", "--out", str(tmp_path / "bad")]) == 1
    assert not (tmp_path / "bad").exists()


def test_fetch_script_puts_withheld_images_in_place_after_checking_sha256(world, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(world["release"], copy)
    env = {**os.environ, "PYTHONPATH": str(package.Path(package.__file__).resolve().parents[1])}
    root = world["inputs"]["manifest"].parent
    ok = subprocess.run([sys.executable, str(copy / "fetch_images.py"), "--root", f"generated={root}"],
                        capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    withheld = next(i for i in release.read_items(copy) if not i["redistributed"])
    image = copy / "mmvp" / "MMVP Images" / f"{withheld['mmvp_index']}.jpg"
    original = (root / withheld["source_path"]).read_bytes()
    assert image.read_bytes() == display.display_bytes(original, demo_params("export", display_max_side=128, jpeg_quality=90), 10_000_000)
    report = release.verify(copy)
    assert report.ok and len(report.fetched) == 3  # MMVP image, MMVP-VLM image, original bytes
    # a source whose bytes differ from the released sha256 is refused
    fake = tmp_path / "fake"
    (fake / withheld["source_path"]).parent.mkdir(parents=True)
    (fake / withheld["source_path"]).write_bytes(b"other bytes")
    bad = subprocess.run([sys.executable, str(world["release"] / "fetch_images.py"), "--root", f"generated={fake}"],
                         capture_output=True, text=True, env=env)
    assert bad.returncode == 1 and "other bytes than the released sha256" in bad.stdout


def test_before_any_annotation_the_release_says_it_is_awaiting_them(world, tmp_path, capsys):
    empty = tmp_path / "accepted.parquet"
    schemas.write_table(schemas.empty("accepted"), empty, "accepted")
    out = tmp_path / "out"
    assert package.main(package_args(dict(world["inputs"], accepted=empty), out, tmp_path / "m.json")) == 0
    assert "no accepted annotations yet" in capsys.readouterr().out
    assert release.is_awaiting(out)
    assert not (out / release.PARQUET_PATH).exists()  # nothing that could be loaded as a benchmark
    assert release.verify(out).ok
    assert json.loads((tmp_path / "m.json").read_text())["status"] == release.AWAITING


def test_accepted_pairs_that_all_fail_packaging_are_refused_with_a_clear_message(world, tmp_path, capsys):
    table = schemas.read_table(world["inputs"]["accepted"], "accepted")
    blank = table.set_column(table.schema.get_field_index("question"), "question", pa.array([""] * table.num_rows))
    bad = tmp_path / "accepted.parquet"
    schemas.write_table(blank, bad, "accepted")
    assert cli.main(["package", *package_args(dict(world["inputs"], accepted=bad), tmp_path / "out", tmp_path / "m.json")]) == 1
    assert f"no pairs to release ({table.num_rows} accepted, {table.num_rows} rejected)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("recall, expected", [(0.992, "99.2 % of the pairs an exhaustive search finds"),
                                              (None, "approximate; recall not measured")])
def test_card_states_the_recall_of_a_partitioned_search(world, recall, expected):
    from pipeline.release import card

    manifest = release.read_manifest(world["release"])
    manifest["provenance"] = {**manifest["provenance"], "search": "partitioned", "search_recall": recall}
    text = card.renderer()(manifest, (world["release"] / release.CHANGELOG).read_text())
    assert "**partitioned**" in text and expected in text
    assert "every pair of images above the CLIP threshold was found" not in text


# ---------------------------------------------------------------- the chain validate → accept → package


def _pattern_choices() -> list[str]:
    """The pattern values Label Studio stores: the Choice values of the writing config push sends."""
    import xml.etree.ElementTree as ET

    from annotation import push

    root = ET.fromstring(push.writing_config())
    choices = next(c for c in root.iter("Choices") if c.get("name") == "pattern")
    return [c.get("value") for c in choices.iter("Choice")]


def _annotated(world, tmp_path, per_pattern: dict[str, int], extra: dict[str, dict] | None = None) -> Path:
    """An accepted table made by validate and accept from snapshots as Label Studio gives them.

    `per_pattern` maps a pattern choice (as the writing config offers it) to how many pairs get it;
    every pair has statements, every verifier agrees. `extra` adds writing-annotation fields for
    a few more pairs. Returns the accepted table's path.
    """
    import itertools

    from annotation import accept, validate
    from tests.annotation.test_annotation_validate_accept import verification_snapshot, writing_snapshot

    ids = sorted(r["image_id"] for r in schemas.read_table(world["inputs"]["images"], "images").to_pylist())
    combos = itertools.combinations(ids, 2)
    cases: dict[str, dict] = {}
    wanted = [choice for choice, n in per_pattern.items() for _ in range(n)] + list(extra or {})
    for n, choice in enumerate(wanted):
        a, b = next(combos)
        fields = {"pattern": [choice], "question": f'Q{n}: is the "sign" <b>red</b>, or blue? é',
                  "option_a": f"Red {n}", "option_b": f"Blue, {n}", "answer_a": ["(a)"], "answer_b": ["(b)"],
                  "statement_a": f"a red sign number {n}", "statement_b": f"a blue sign number {n}"}
        if extra and choice in extra:
            fields.update(extra[choice])
        cases[schemas.pair_id(a, b)] = fields
        cases[schemas.pair_id(a, b)]["_images"] = (a, b)
    pairs = pa.Table.from_pylist(
        [{"pair_id": p, "image_a": f["_images"][0], "image_b": f["_images"][1], "clip_sim": 0.97, "dino_sim": 0.4}
         for p, f in sorted(cases.items())], schema=schemas.PAIRS)
    for fields in cases.values():
        del fields["_images"]
    annotations = validate.validate(writing_snapshot(cases), pairs, demo_params("validate"))
    answers = {r["question_id"]: [("v@example.org", r["answer_a"], r["answer_b"])] for r in annotations.to_pylist()}
    accepted, _, _, _ = accept.accept(annotations, pairs, verification_snapshot(answers), {}, demo_params("accept"))
    path = tmp_path / "accepted.parquet"
    schemas.write_table(accepted, path, "accepted")
    return path


def _package(world, tmp_path, accepted: Path, **package_params) -> tuple[Path, dict]:
    import yaml

    params = yaml.safe_load(world["inputs"]["params"].read_text())
    params["package"].update(package_params)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    out = tmp_path / "release"
    inputs = dict(world["inputs"], accepted=accepted, params=params_file)
    assert package.main(package_args(inputs, out, tmp_path / "package.json")) == 0
    return out, json.loads((tmp_path / "package.json").read_text())


def test_every_pattern_validate_writes_reaches_the_release(world, tmp_path):
    choices = _pattern_choices()
    assert len(choices) == 9
    accepted = _annotated(world, tmp_path, {c: 1 for c in choices})
    assert schemas.read_table(accepted, "accepted").num_rows == 9
    out, metrics = _package(world, tmp_path, accepted)
    assert (metrics["packaged"], metrics["rejected"]) == (9, 0), metrics["rejects"]
    items = release.read_items(out)
    assert sorted({i["pattern"] for i in items}) == sorted(choices)


def _assert_mmvp_scripts_read_the_release(out: Path, pairs_per_category: int | None) -> list:
    """MMVP's own reading of both layouts gives every item's exact text, answer, image and category."""
    from tests.helpers import mmvp_oracle

    items = release.read_items(out)
    by_index = {i["mmvp_index"]: i for i in items}
    questions = mmvp_oracle.read_mmvp(out / mmvp.MMVP_DIR)
    assert len(questions) == len(items)
    for q in questions:
        item = by_index[q.question_id]
        assert q.prompt == f"{item['question']} (a) {item['options'][0]} (b) {item['options'][1]}"
        assert q.answer == item["answer"]
        assert Path(q.image_path).exists() == item["redistributed"]
        if item["redistributed"]:
            assert Path(q.image_path).read_bytes() == item["image"]
    by_vlm = {i["vlm_question_id"]: i for i in items if i["vlm_question_id"] is not None}
    pairs = mmvp_oracle.read_mmvp_vlm(out / mmvp.VLM_DIR, pairs_per_category)
    assert 2 * len(pairs) == len(by_vlm)
    for pair in pairs:
        a, b = by_vlm[pair.qid_a], by_vlm[pair.qid_b]
        assert a["pair_id"] == b["pair_id"] and (a["member"], b["member"]) == ("a", "b")
        assert pair.truth == ("img1", "img2")
        assert (pair.statement_a, pair.statement_b) == (a["statement"], b["statement"])
        assert pair.category == mmvp_oracle.MMVP_CATEGORIES[_paper_names().index(a["pattern"])], (pair.category, a["pattern"])
        for path, item in ((pair.image_a, a), (pair.image_b, b)):
            assert Path(path).exists() == item["redistributed"]
            if item["redistributed"]:
                assert Path(path).read_bytes() == item["image"]
    return pairs


def _paper_names() -> list[str]:
    return _pattern_choices()


def test_mmvp_scripts_label_every_category_of_a_15_per_pattern_release(world, tmp_path):
    accepted = _annotated(world, tmp_path, {c: 15 for c in _pattern_choices()})
    out, metrics = _package(world, tmp_path, accepted)
    assert metrics["packaged"] == 135, metrics["rejected_by_reason"]
    pairs = _assert_mmvp_scripts_read_the_release(out, pairs_per_category=15)
    assert len(pairs) == 135


def test_released_files_hold_the_exact_text(world):
    from tests.helpers import mmvp_oracle

    items = release.read_items(world["release"])
    questions = {q.question_id: q for q in mmvp_oracle.read_mmvp(world["release"] / mmvp.MMVP_DIR)}
    for item in items:
        q = questions[item["mmvp_index"]]
        assert q.prompt == f"{item['question']} (a) {item['options'][0]} (b) {item['options'][1]}"
    by_vlm = {i["vlm_question_id"]: i for i in items if i["vlm_question_id"] is not None}
    for pair in mmvp_oracle.read_mmvp_vlm(world["release"] / mmvp.VLM_DIR):
        assert (pair.statement_a, pair.statement_b) == (by_vlm[pair.qid_a]["statement"], by_vlm[pair.qid_b]["statement"])


def test_a_balanced_mmvp_vlm_layout_holds_exactly_15_pairs_per_pattern(world, tmp_path):
    choices = _pattern_choices()
    per_pattern = {c: mmvp.VLM_PAIRS_PER_CATEGORY for c in choices}
    # one more pair with statements in the first pattern, one without statements in the last
    extra = {"extra-with": {"pattern": [choices[0]]}, "extra-without": {"pattern": [choices[-1]], "statement_a": "",
                                                                       "statement_b": ""}}
    accepted = _annotated(world, tmp_path, per_pattern, extra)
    out, metrics = _package(world, tmp_path, accepted, mmvp_vlm_pairs_per_pattern=mmvp.VLM_PAIRS_PER_CATEGORY)
    assert metrics["packaged"] == 9 * 15 + 2
    pairs = _assert_mmvp_scripts_read_the_release(out, pairs_per_category=mmvp.VLM_PAIRS_PER_CATEGORY)
    assert len(pairs) == 9 * 15
    items = release.read_items(out)
    first = sorted({i["pair_id"] for i in items if i["pattern"] == choices[0] and i["statement"]})
    in_vlm = {i["pair_id"] for i in items if i["vlm_question_id"] is not None}
    assert first[:15] == sorted(in_vlm & set(first)) and first[15] not in in_vlm  # the first 15 by pair_id
    manifest = release.read_manifest(out)
    assert manifest["layouts"]["mmvp_vlm_pairs_per_pattern"] == 15
    assert manifest["counts"]["mmvp_vlm_pairs_per_pattern"] == {p.key: 15 for p in patterns.PATTERNS}
    assert manifest["counts"]["pairs_with_statements"] == 9 * 15 + 1
    assert "exactly 15 pairs per pattern there" in (out / "README.md").read_text()


def test_a_balanced_layout_is_refused_when_a_pattern_has_too_few_pairs(world, tmp_path, capsys):
    import yaml

    params = yaml.safe_load(world["inputs"]["params"].read_text())
    params["package"]["mmvp_vlm_pairs_per_pattern"] = 15
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    inputs = dict(world["inputs"], params=tmp_path / "params.yaml")
    assert cli.main(["package", *package_args(inputs, tmp_path / "out", tmp_path / "m.json")]) == 1
    err = capsys.readouterr().err
    assert "mmvp_vlm_pairs_per_pattern is 15" in err and f"{patterns.by_key('color').paper} (1)" in err
    assert "set package.mmvp_vlm_pairs_per_pattern: 0" in err and not (tmp_path / "out").exists()
    params["package"]["mmvp_vlm_pairs_per_pattern"] = 10  # MMVP's script assumes 15: nothing else is offered
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(SystemExit) as refused:
        package.main(package_args(inputs, tmp_path / "out", tmp_path / "m.json"))
    assert refused.value.code == 2
    assert re.search(r"mmvp_vlm_pairs_per_pattern.*\[0, 15\]", capsys.readouterr().err)
    assert typing.get_args(typing.get_type_hints(PackageParams)["mmvp_vlm_pairs_per_pattern"]) == (
        0, mmvp.VLM_PAIRS_PER_CATEGORY)
