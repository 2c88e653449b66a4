"""The diagnostics in the release: each table a configuration of its own, checksummed, summed up in the card.

The world's release (a real ingest of generated images, four packaged pairs, one with a withheld image)
is packaged with the diagnose stage's folder of planted tables (tests/helpers/release_world.py), whose
summary is known by construction, and loaded back as users load it: `datasets.load_dataset(name=...)`
offline, `sha256sum -c`, `clipblind verify`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline import package
from pipeline.core import patterns
from pipeline.diagnostics import records
from pipeline.release import folder as release
from tests.helpers.release_world import (
    DIAG_MODEL,
    DIAG_RIGHT,
    DIAG_SEPARATES,
    TEXT_BIAS_FLAGGED,
    build_inputs,
    diagnostics_tables,
    package_args,
    world_pairs,
    write_diagnostics,
)


@pytest.fixture(scope="module")
def world(sample_corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("diagnostics_release")
    inputs = build_inputs(sample_corpus, root / "inputs")
    tables = diagnostics_tables(inputs)
    folder = write_diagnostics(tables, root / "diagnostics")
    out = root / "release"
    assert package.main(package_args(inputs, out, root / "package.json", "--diagnostics", str(folder))) == 0
    return {"inputs": inputs, "release": out, "tables": tables, "root": root,
            "metrics": json.loads((root / "package.json").read_text())}


def _card_meta(folder: Path) -> dict:
    return yaml.safe_load((folder / release.CARD).read_text().split("---\n")[1])


def _load(folder: Path, name: str, cache: Path):
    import datasets

    return datasets.load_dataset(str(folder), name=name, split=release.SPLIT, cache_dir=str(cache))


def test_every_config_loads_offline_with_load_dataset_and_equals_its_table(world, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = world["release"]
    meta = _card_meta(folder)
    assert [c["config_name"] for c in meta["configs"]] == [release.DEFAULT_CONFIG, *records.CONFIGS]
    for config in records.CONFIGS:
        path = folder / release.config_path(config)
        assert path == folder / config / "test-00000-of-00001.parquet"
        stored = pq.read_table(path)
        assert stored.schema.equals(records.SCHEMAS[config], check_metadata=False)  # exactly the record's schema
        # nullability too: a field is nullable exactly when the record's field may be None
        assert [f.nullable for f in stored.schema] == [f.nullable for f in records.SCHEMAS[config]]
        ds = _load(folder, config, world["root"] / "hf-cache")
        expected = world["tables"][config].to_pylist()
        assert ds.num_rows == len(expected) > 0
        assert list(ds) == expected
        # and back as the records the diagnostics modules fill
        assert records.from_table(config, ds.with_format("arrow")[:]) == records.from_table(config, world["tables"][config])
    items = _load(folder, release.DEFAULT_CONFIG, world["root"] / "hf-cache")
    assert items.num_rows == 8


def test_manifest_metrics_and_checksums_cover_the_configs(world):
    folder = world["release"]
    manifest = release.read_manifest(folder)
    rows = {config: world["tables"][config].num_rows for config in records.CONFIGS}
    assert {k: v["rows"] for k, v in manifest["configs"].items()} == {release.DEFAULT_CONFIG: 8, **rows}
    assert {k: v["path"] for k, v in manifest["configs"].items()} == {
        c: release.config_path(c) for c in (release.DEFAULT_CONFIG, *records.CONFIGS)}
    assert world["metrics"]["configs"] == {release.DEFAULT_CONFIG: 8, **rows}
    listed = {line.split("  ", 1)[1] for line in (folder / release.SUMS).read_text().splitlines()}
    assert {release.config_path(c) for c in records.CONFIGS} | {release.CROISSANT} <= listed
    assert subprocess.run(["sha256sum", "--quiet", "--strict", "-c", release.SUMS], cwd=folder).returncode == 0
    assert release.verify(folder).ok
    # the diagnostics read back from the release are the tables given
    back = release.read_diagnostics(folder)
    assert {c: t.to_pylist() for c, t in back.items()} == {c: t.to_pylist() for c, t in world["tables"].items()}


def test_verify_catches_a_changed_or_missing_diagnostics_file(world, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(world["release"], copy)
    target = copy / release.config_path("encoders")
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    report = release.verify(copy)
    assert report.changed == (release.config_path("encoders"),) and not report.ok
    (copy / release.config_path("models")).unlink()
    assert release.config_path("models") in release.verify(copy).missing
    assert subprocess.run(["sha256sum", "--quiet", "-c", release.SUMS], cwd=copy, capture_output=True).returncode != 0


def test_card_summarises_the_planted_diagnostics(world):
    card = (world["release"] / release.CARD).read_text()
    section = card.split("## Why models fail: diagnostics", 1)[1].split("## Limitations", 1)[0]
    pairs = [p for p in world_pairs(world["inputs"]) if not p["withheld"]]
    # text-only bias: one flagged question, named, with the threshold the params give
    threshold = yaml.safe_load(world["inputs"]["params"].read_text())["diagnose"]["text_bias"]["threshold"]
    flagged = records.item_id(pairs[0]["pair_id"], "a")
    assert f"**1** questions score above the threshold {threshold}" in section
    assert f"`{flagged}`" in section and TEXT_BIAS_FLAGGED > threshold
    # the 2x2 per encoder, counted by hand from the planted verdicts and answers
    for encoder, separates in DIAG_SEPARATES.items():
        cells = [records.bucket(s, all(right)) for s, right in zip(separates, DIAG_RIGHT)]
        failed = [c for c in cells if c in (records.HIDDEN_IN_PLAIN_SIGHT, records.ENCODER_BLIND)]
        hidden = round(failed.count(records.HIDDEN_IN_PLAIN_SIGHT) / len(failed), 4)
        blind = round(failed.count(records.ENCODER_BLIND) / len(failed), 4)
        row = f"| `{encoder}` | 3 | " + " | ".join(str(cells.count(b)) for b in records.BUCKETS) + f" | {hidden} | {blind} |"
        assert row in section, row
    assert "| `clip` | 3 | 1 | 1 | 0 | 1 | 0.5 | 0.5 |" in section  # the same, written out: P1 seen, P2 blind, P3 hidden
    assert "| `dino` | 3 | 1 | 2 | 0 | 0 | 1.0 | 0.0 |" in section
    # the model: 4 of 6 questions right, 1 of 3 pairs; (a) with no image: half right; one of two errors bias-aligned
    assert f"### Model `{DIAG_MODEL}`" in section
    assert "**0.6667** per\nquestion, **0.3333** per pair" in section
    assert f"(`{records.NO_IMAGE}`) 0.5" in section and "**0.1667**" in section and "**0.0**" in section
    assert "errors (share of wrong answers equal to the model's no-image answer): **0.5**" in section
    assert "Model calls: 12 (2.0 per question)" in section
    # shuffle sensitivity per pattern beside the no-image and blank accuracy, patterns by the paper's names
    header = (f"| pattern | questions | {records.IMAGE} | {records.NO_IMAGE} | {records.BLANK} | {records.PIXEL_SHUFFLE} g=2 "
              f"| {records.PIXEL_SHUFFLE} g=4 | global-cue pairs |")
    assert header in section
    for k, p in enumerate(pairs):
        accuracy = sum(DIAG_RIGHT[k]) / 2
        assert f"| {patterns.by_key(p['pattern']).paper} | 2 | {accuracy} | 0.5 | 0.0 | 1.0 | 0.5 | 0 |" in section
    assert "| all | 6 | 0.6667 | 0.5 | 0.0 | 1.0 | 0.5 | 0 |" in section
    # the configurations and their rows
    for config in records.CONFIGS:
        assert f"| `{config}` | {world['tables'][config].num_rows} |" in section


def test_card_reports_the_answer_balance_of_the_released_items(world):
    card = (world["release"] / release.CARD).read_text()
    items = release.read_items(world["release"])
    firsts = [i for i in items if i["member"] == "a"]
    a = sum(i["answer"] == patterns.ANSWERS[0] for i in firsts)
    swapped = sum(i["options_swapped"] for i in firsts)
    assert a == 2 and len(firsts) == 4
    assert f"`(a)` in **{a}** and `(b)` in **{len(firsts) - a}** of {len(firsts)} pairs; {swapped} pairs" in card
    assert release.read_manifest(world["release"])["answer_balance"] == {
        "pairs": 4, "first_answer_a": a, "first_answer_b": 4 - a, "swapped_pairs": swapped, "seed": 0}


def test_no_model_scored_writes_no_models_or_predictions_config(world, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    inputs = world["inputs"]
    tables = diagnostics_tables(inputs, models=False)
    assert tables["models"].num_rows == 0 and tables["predictions"].num_rows == 0
    folder = write_diagnostics(tables, tmp_path / "diagnostics")
    out = tmp_path / "release"
    assert package.main(package_args(inputs, out, tmp_path / "package.json", "--diagnostics", str(folder))) == 0
    assert not (out / "models").exists() and not (out / "predictions").exists()
    manifest = release.read_manifest(out)
    assert list(manifest["configs"]) == [release.DEFAULT_CONFIG, "diagnostics", "encoders"]
    assert [c["config_name"] for c in _card_meta(out)["configs"]] == [release.DEFAULT_CONFIG, "diagnostics", "encoders"]
    card = (out / release.CARD).read_text()
    assert "No model was scored for these diagnostics" in card and "### Model" not in card
    assert _load(out, "encoders", tmp_path / "hf-cache").num_rows == tables["encoders"].num_rows
    assert release.verify(out).ok


def test_no_diagnostics_folder_or_an_empty_one_and_the_card_says_they_were_not_run(world, tmp_path):
    inputs = world["inputs"]
    empty = tmp_path / "empty"
    empty.mkdir()
    for name, extra in (("absent", ()), ("missing", ("--diagnostics", str(tmp_path / "nowhere"))),
                        ("empty", ("--diagnostics", str(empty)))):
        out = tmp_path / name
        assert package.main(package_args(inputs, out, tmp_path / f"{name}.json", *extra)) == 0
        manifest = release.read_manifest(out)
        assert list(manifest["configs"]) == [release.DEFAULT_CONFIG] and manifest["diagnostics"] is None
        assert not any((out / c).exists() for c in records.CONFIGS)
        assert "The diagnostics were not run for this release" in (out / release.CARD).read_text()
        assert [c["config_name"] for c in _card_meta(out)["configs"]] == [release.DEFAULT_CONFIG]
        assert json.loads((tmp_path / f"{name}.json").read_text())["configs"] == {release.DEFAULT_CONFIG: 8}


def _package_fails(world, tmp_path, tables, *needles):
    """Package with `tables` must refuse, naming each needle and the fix, and leave the last build as it was."""
    out = tmp_path / "release"
    shutil.copytree(world["release"], out)
    before = (out / release.SUMS).read_bytes()
    folder = write_diagnostics(tables, tmp_path / "diagnostics")
    with pytest.raises(release.ReleaseError) as err:
        package.main(package_args(world["inputs"], out, tmp_path / "package.json", "--diagnostics", str(folder)))
    for needle in (*needles, "dvc repro diagnose"):
        assert needle in str(err.value)
    assert (out / release.SUMS).read_bytes() == before and release.verify(out).ok


def test_diagnostics_about_a_pair_not_released_are_refused(world, tmp_path):
    tables = diagnostics_tables(world["inputs"])
    rows = tables["encoders"].to_pylist()
    rows[0]["pair_id"] = "0" * 20  # a pair this release does not hold (rejected, excluded, or an old run's)
    tables["encoders"] = pa.Table.from_pylist(rows, schema=records.SCHEMAS["encoders"])
    _package_fails(world, tmp_path, tables, "'encoders'", "0" * 20)


def test_diagnostics_missing_a_released_question_are_refused(world, tmp_path):
    tables = diagnostics_tables(world["inputs"])
    dropped = tables["diagnostics"].slice(0, 1).to_pylist()[0]["item_id"]
    tables["diagnostics"] = tables["diagnostics"].slice(1)
    _package_fails(world, tmp_path, tables, "'diagnostics'", dropped)


def test_a_model_missing_a_released_pair_with_both_images_is_refused(world, tmp_path):
    tables = diagnostics_tables(world["inputs"])
    rows = tables["models"].to_pylist()
    first = rows[0]["pair_id"]
    # a second model that skipped the first pair: the first model covering it does not make up for it
    other = [{**r, "model": "other-vlm"} for r in rows if r["pair_id"] != first]
    tables["models"] = pa.Table.from_pylist(rows + other, schema=records.SCHEMAS["models"])
    _package_fails(world, tmp_path, tables, "'models' (model other-vlm)", first)


def test_an_encoder_missing_a_released_pair_with_both_images_is_refused(world, tmp_path):
    tables = diagnostics_tables(world["inputs"])
    rows = tables["encoders"].to_pylist()
    dropped = next(r for r in rows if r["encoder"] == "dino")
    keep = [r for r in rows if r is not dropped]
    tables["encoders"] = pa.Table.from_pylist(keep, schema=records.SCHEMAS["encoders"])
    _package_fails(world, tmp_path, tables, "'encoders' (encoder dino)", dropped["pair_id"])


def test_a_table_of_another_schema_is_refused(world, tmp_path):
    tables = diagnostics_tables(world["inputs"])
    tables["encoders"] = tables["encoders"].drop_columns(["separates_by"])
    _package_fails(world, tmp_path, tables, "'encoders'", "records.SCHEMAS")


def test_card_shows_the_token_shuffle_beside_the_pixel_shuffle_when_it_ran(world):
    from pipeline.diagnostics.summary import summarise
    from pipeline.release import card

    tables = dict(world["tables"])
    rows = tables["models"].to_pylist()
    for row in rows:
        row.update(token_shuffle_accuracy=0.25, token_shuffle_flip_rate=0.75, token_shuffle_pair_right_rate=0.0)
    tables["models"] = pa.Table.from_pylist(rows, schema=records.SCHEMAS["models"])
    manifest = release.read_manifest(world["release"])
    manifest["diagnostics"] = {**summarise(tables), "text_bias_threshold": 0.75}
    text = card.renderer()(manifest, (world["release"] / release.CHANGELOG).read_text())
    assert f"| {records.PIXEL_SHUFFLE} g=4 | {records.TOKEN_SHUFFLE} | global-cue pairs |" in text
    assert "| all | 6 | 0.6667 | 0.5 | 0.0 | 1.0 | 0.5 | 0.25 | 0 |" in text
    assert f"visual tokens permuted (`{records.TOKEN_SHUFFLE}`)" in text
