"""The card's counts are the metrics files' counts: one source for every number a user compares."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pipeline import cli, package
from pipeline.release import card
from pipeline.release import folder as release
from tests.helpers.release_world import build_inputs, package_args

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def built(sample_corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("counts")
    inputs = build_inputs(sample_corpus, root / "inputs")
    assert package.main(package_args(inputs, root / "release", root / "package.json")) == 0
    metrics = {name: json.loads(inputs[name].read_text()) for name in ("ingest", "mine", "accept")}
    metrics["package"] = json.loads((root / "package.json").read_text())
    return {"card": (root / "release" / release.CARD).read_text(), "metrics": metrics, "release": root / "release",
            "inputs": inputs, "root": root}


def _funnel(text: str) -> dict[str, str]:
    table = text.split("Funnel, corpus to release", 1)[1].split("\n\n", 2)[1]
    return {m[1]: m[2] for m in re.finditer(r"^\| (\w+) \| ([^|]+) \|$", table, re.M) if m[1] != "step"}


def test_the_cards_counts_equal_the_metrics_counts(built):
    text, m = built["card"], built["metrics"]
    expected = {
        "corpus_files": m["ingest"]["inputs"], "images": m["ingest"]["accepted"],
        "pairs_possible": m["mine"]["pairs_possible"], "clip_candidates": m["mine"]["clip_candidates"],
        "pairs_mined": m["mine"]["pairs"],
        **{f"questions_{k}": m["accept"][k] for k in ("written", "valid", "accepted", "rejected", "pending")},
        "pairs_accepted_by_annotation": m["package"]["inputs"],
        "pairs_packaged": m["package"]["packaged"], "pairs_rejected_at_packaging": m["package"]["rejected"],
    }
    assert _funnel(text) == {k: str(v) for k, v in expected.items()}
    assert f"**{m['package']['packaged']} pairs, {m['package']['items']} questions**" in text
    accuracy = m["accept"]["human_accuracy"]
    assert f"per question\n  **{accuracy['per_question']}**" in text
    assert f"per pair (both images right) **{accuracy['per_pair']}**" in text
    assert (f"{m['accept']['verified']} verified, {m['accept']['accepted_adjudicated']} adjudicated "
            f"({m['accept']['answers_corrected']} with answers corrected by the lead)") in text
    assert "awaiting_adjudication 1" in text
    manifest = release.read_manifest(built["release"])
    assert manifest["counts"]["pairs"] == m["package"]["packaged"] and manifest["counts"]["items"] == m["package"]["items"]


def test_verified_means_one_thing_in_readme_card_and_metrics(built):
    assert card.VERIFIED_DEFINITION in built["card"]
    readme = " ".join((REPO / "README.md").read_text().split())
    assert " ".join(card.VERIFIED_DEFINITION.split()) in readme


def test_a_failed_build_leaves_the_last_release_and_its_metrics_whole(built, tmp_path, capsys):
    import shutil

    import pyarrow as pa

    from pipeline.core import schemas

    out, metrics = tmp_path / "release", tmp_path / "package.json"
    shutil.copytree(built["release"], out)
    shutil.copy(built["root"] / "package.json", metrics)
    before = {p: p.read_bytes() for p in [metrics, *out.rglob("*")] if p.is_file()}
    table = schemas.read_table(built["inputs"]["accepted"], "accepted")
    blank = table.set_column(table.schema.get_field_index("question"), "question", pa.array([""] * table.num_rows))
    schemas.write_table(blank, tmp_path / "accepted.parquet", "accepted")
    inputs = dict(built["inputs"], accepted=tmp_path / "accepted.parquet")
    assert cli.main(["package", *package_args(inputs, out, metrics)]) == 1
    err = capsys.readouterr().err
    assert "fix the rejected pairs" in err and "The last build is left as it was" in err
    assert {p: p.read_bytes() for p in [metrics, *out.rglob("*")] if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging folder left


def test_package_refuses_accept_metrics_without_the_counts_the_card_copies(built, tmp_path, capsys):
    accept_metrics = json.loads(built["inputs"]["accept"].read_text())
    del accept_metrics["answers_corrected"]
    partial = tmp_path / "accept.json"
    partial.write_text(json.dumps(accept_metrics))
    inputs = dict(built["inputs"], accept=partial)
    assert cli.main(["package", *package_args(inputs, tmp_path / "release", tmp_path / "package.json")]) == 1
    assert "answers_corrected" in capsys.readouterr().err and not (tmp_path / "release").exists()
