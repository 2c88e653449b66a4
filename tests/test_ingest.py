import csv
import json

import pytest

from pipeline import ingest
from pipeline.core import schemas
from pipeline.images.corpus import Corpus
from tests.helpers.params import demo_params, source_params


def test_folder_ingest_accounts_for_every_input(sample_corpus, params_file, tmp_path):
    out = tmp_path / "out"
    assert ingest.main([
        "--params", str(params_file), "--source", str(sample_corpus), "--images", str(out / "images.parquet"),
        "--rejects", str(out / "rejects.parquet"), "--metrics", str(out / "m.json"),
    ]) == 0
    metrics = json.loads((out / "m.json").read_text())
    files = [p for p in sample_corpus.rglob("*") if p.is_file()]
    assert metrics["inputs"] == len(files)
    assert metrics["accepted"] + metrics["duplicates"] + metrics["rejected"] == metrics["inputs"]
    assert metrics["duplicates"] == 1
    assert metrics["rejected_by_reason"] == {"empty_file": 1, "truncated": 1, "unsupported_format": 1}
    images = schemas.read_table(out / "images.parquet", "images")
    ids = images.column("image_id").to_pylist()
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    duplicated = [row for row in images.to_pylist() if len(row["locations"]) == 2]
    assert len(duplicated) == 1 and any("duplicate-of" in loc for loc in duplicated[0]["locations"])
    rejects = schemas.read_table(out / "rejects.parquet", "rejects").to_pylist()
    assert {r["location"] for r in rejects} == {"extras/empty.png", "extras/notes.txt", "extras/truncated.jpg"}


def test_manifest_csv_with_licence_column(sample_corpus, tmp_path):
    manifest = sample_corpus.parent / "list.csv"  # paths in a manifest are relative to its folder
    paths = sorted(p.relative_to(sample_corpus.parent) for p in sample_corpus.rglob("*.jpg") if "extras" not in p.parts)[:4]
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "licence"])
        for k, p in enumerate(paths):
            writer.writerow([str(p), "CC-BY-4.0" if k % 2 else ""])
        writer.writerow(["../../etc/passwd", ""])
    source = source_params("manifest", name="m", license="unknown", path_column="file", license_column="licence")
    result = ingest.ingest(Corpus(source, manifest), demo_params("ingest", source=source))
    assert result.metrics["inputs"] == 5
    assert result.metrics["accepted"] == 4
    assert result.metrics["rejected_by_reason"] == {"path_escape": 1}
    assert sorted(result.images.column("source_license").to_pylist()) == ["CC-BY-4.0", "CC-BY-4.0", "unknown", "unknown"]


def test_manifest_without_the_path_column_is_a_clear_error(tmp_path):
    manifest = tmp_path / "list.csv"
    manifest.write_text("url\nx.jpg\n")
    source = source_params("manifest")
    with pytest.raises(ValueError, match="no 'path' column"):
        ingest.ingest(Corpus(source, manifest), demo_params("ingest", source=source))
