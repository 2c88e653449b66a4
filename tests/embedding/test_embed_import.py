"""Bring your own CLIP embeddings: a clip-retrieval style output as the CLIP side, then mining from it."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline import embed, mine, search
from pipeline.core import schemas
from pipeline.embedding import engine
from pipeline.embedding import store as embeddings
from tests.conftest import tiny_params
from tests.helpers.params import merged, section
from tests.test_embed import _ingest

PREFIX = "/data/corpus-on-another-machine"


def _clip_retrieval_output(folder, locations, vectors, extra_paths=()):
    """Two partitions of img_emb/img_emb_k.npy + metadata/metadata_k.parquet, as clip-retrieval writes them."""
    paths = [f"{PREFIX}/{loc}" for loc in locations] + list(extra_paths)
    (folder / "img_emb").mkdir(parents=True)
    (folder / "metadata").mkdir()
    half = len(paths) // 2
    for k, rows in enumerate((slice(0, half), slice(half, None))):
        np.save(folder / "img_emb" / f"img_emb_{k}.npy", vectors[rows].astype(np.float16))
        pq.write_table(pa.table({"image_path": paths[rows], "caption": [""] * len(paths[rows])}),
                       folder / "metadata" / f"metadata_{k}.parquet")


def test_clip_retrieval_output_is_imported_and_mined(sample_corpus, tmp_path):
    params = tiny_params()
    params["embed"]["clip"] = {**section("embed.clip"), "kind": "clip_retrieval", "model": "ViT-L-14", "weights": "openai",
                               "config": {"strip_prefix": PREFIX}}
    params["mine"] = merged(params["mine"], {"clip_threshold": 0.95, "dino_threshold": 1.0})  # every CLIP candidate of two distinct images becomes a pair
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    images = _ingest(params_file, sample_corpus, tmp_path / "data")
    table = schemas.read_table(images, "images")
    ids, locations = table.column("image_id").to_pylist(), table.column("source_path").to_pylist()

    rng = np.random.default_rng(0)
    dim = 64
    vectors = rng.standard_normal((len(ids) + 1, dim))
    planted = rng.standard_normal(dim)
    vectors[0] = planted * 3.0  # not unit length: the import re-normalises
    vectors[1] = planted + 0.05 * rng.standard_normal(dim)
    _clip_retrieval_output(tmp_path / "cr", locations, vectors, extra_paths=["not/in/the/corpus.jpg"])

    out = tmp_path / "emb"
    assert embed.main([
        "--params", str(params_file), "--images", str(images), "--source", str(sample_corpus),
        "--clip", str(out / "clip"), "--dino", str(out / "dino"), "--metrics", str(out / "embed.json"),
        "--clip-from", str(tmp_path / "cr"),
    ]) == 0
    metrics = json.loads((out / "embed.json").read_text())
    assert metrics["clip_import"]["rows"] == len(ids) + 1
    assert metrics["clip_import"]["rows_matched"] == len(ids) and metrics["clip_import"]["rows_unmatched"] == 1
    assert metrics["clip_import"]["images_missing"] == 0
    clip, description = embeddings.load(out / "clip", ids)
    assert description["kind"] == "clip_retrieval" and description["model"] == "ViT-L-14"
    np.testing.assert_allclose(np.linalg.norm(clip.astype(np.float32), axis=1), 1.0, atol=2e-3)

    candidates, groups = tmp_path / "candidates.parquet", tmp_path / "groups.parquet"
    assert search.main([
        "--params", str(params_file), "--images", str(images), "--clip", str(out / "clip"), "--dino", str(out / "dino"),
        "--candidates", str(candidates), "--groups", str(groups), "--metrics", str(tmp_path / "search.json"),
    ]) == 0
    assert mine.main([
        "--params", str(params_file), "--images", str(images), "--candidates", str(candidates), "--groups", str(groups),
        "--pairs", str(tmp_path / "pairs.parquet"), "--metrics", str(tmp_path / "mine.json"),
    ]) == 0
    pairs = schemas.read_table(tmp_path / "pairs.parquet", "pairs").to_pylist()
    assert [(p["image_a"], p["image_b"]) for p in pairs] == [tuple(sorted(ids[:2]))]
    expected = float(vectors[0] @ vectors[1] / np.linalg.norm(vectors[0]) / np.linalg.norm(vectors[1]))
    assert pairs[0]["clip_sim"] == pytest.approx(expected, abs=2e-3)


def test_images_missing_from_the_import_are_named(sample_corpus, tmp_path):
    params = tiny_params()
    params["embed"]["clip"] = {**section("embed.clip"), "kind": "clip_retrieval", "model": "ViT-L-14", "weights": "openai",
                               "config": {"strip_prefix": PREFIX}}
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    images = _ingest(params_file, sample_corpus, tmp_path / "data")
    table = schemas.read_table(images, "images")
    locations = table.column("source_path").to_pylist()
    _clip_retrieval_output(tmp_path / "cr", locations[1:], np.random.default_rng(1).standard_normal((len(locations) - 1, 16)))
    out = tmp_path / "emb"
    with pytest.raises(engine.EmbedFailure, match="1 images have no vector"):
        embed.main([
            "--params", str(params_file), "--images", str(images), "--source", str(sample_corpus),
            "--clip", str(out / "clip"), "--dino", str(out / "dino"), "--metrics", str(out / "embed.json"),
            "--clip-from", str(tmp_path / "cr"),
        ])
    metrics = json.loads((out / "embed.json").read_text())
    assert metrics["clip_import"]["missing"] == [table.column("image_id")[0].as_py()]
