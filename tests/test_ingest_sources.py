"""Several sources in one ingest: qualified locations, per-source licences and metrics,
duplicates collapsed across sources, and every location readable by later stages."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import pytest
import yaml
from PIL import Image

from pipeline import ingest
from pipeline.core import schemas
from pipeline.core.config import ParamsError, load_section
from pipeline.images.corpus import Corpus, SourceUnavailable
from pipeline.params import IngestParams
from tests.conftest import tiny_params
from tests.helpers.params import KIND_KEYS, section, source_params


def _png(shade: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (10, 10), (shade, 3, 200)).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture
def two_sources(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for k in range(3):
        (photos / f"{k}.png").write_bytes(_png(k))
    (photos / "bad.jpg").write_bytes(b"")
    shards = tmp_path / "shards"
    shards.mkdir()
    with tarfile.open(shards / "s-0.tar", "w") as archive:
        for key, data in (("a", _png(0)), ("b", _png(100)), ("c", _png(101))):  # a: same bytes as photos/0.png
            info = tarfile.TarInfo(f"{key}.png")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_params(ingest={"source": [
        {**section("ingest.source"), "kind": "folder", "name": "photos", "license": "CC0-1.0"},
        {**section("ingest.source"), "kind": "webdataset", "name": "web", "license": "CC-BY-4.0", **KIND_KEYS["webdataset"]},
    ]})))
    return params, photos, shards


def test_two_sources_are_one_images_table_with_metrics_per_source(two_sources, tmp_path):
    params, photos, shards = two_sources
    out = tmp_path / "out"
    assert ingest.main(["--params", str(params), "--source", str(photos), str(shards),
                        "--images", str(out / "i.parquet"), "--rejects", str(out / "r.parquet"),
                        "--metrics", str(out / "m.json")]) == 0
    metrics = json.loads((out / "m.json").read_text())
    assert metrics["sources"] == {
        "photos": {"inputs": 4, "accepted": 3, "duplicates": 0, "blocked": 0, "rejected": 1,
                   "rejected_by_reason": {"empty_file": 1}},
        "web": {"inputs": 3, "accepted": 2, "duplicates": 1, "blocked": 0, "rejected": 0, "rejected_by_reason": {}},
    }
    assert metrics["inputs"] == 7 and metrics["accepted"] == 5 and metrics["duplicates"] == 1
    images = schemas.read_table(out / "i.parquet", "images").to_pylist()
    shared = next(r for r in images if len(r["locations"]) == 2)
    assert shared["locations"] == ["photos:0.png", "web:s-0.tar#a.png"] and shared["source"] == "photos"
    assert {r["source"]: r["source_license"] for r in images} == {"photos": "CC0-1.0", "web": "CC-BY-4.0"}
    rejects = schemas.read_table(out / "r.parquet", "rejects").to_pylist()
    assert [(r["source"], r["location"]) for r in rejects] == [("photos", "photos:bad.jpg")]
    # later stages build the corpus the same way and read every location back
    corpus = Corpus(load_section(params, "ingest", IngestParams).source, [photos, shards])
    for row in images:
        for location in row["locations"]:
            assert hashlib.sha256(corpus.read(location)).hexdigest() == row["image_id"]


def test_source_paths_must_match_the_sources(two_sources):
    params, photos, _ = two_sources
    sources = load_section(params, "ingest", IngestParams).source
    with pytest.raises(SourceUnavailable, match="2 source.s. in params .photos, web. but 1 source path"):
        Corpus(sources, [photos])
    with pytest.raises(ParamsError, match="distinct"):
        Corpus([source_params("folder", name="x"), source_params("folder", name="x")], [photos, photos])
