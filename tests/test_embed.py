import json

import numpy as np
import pytest

from pipeline import embed, embeddings, ingest, schemas


@pytest.fixture
def ingested(sample_corpus, params_file, tmp_path):
    out = tmp_path / "data"
    ingest.main([
        "--params", str(params_file), "--source", str(sample_corpus), "--images", str(out / "images.parquet"),
        "--rejects", str(out / "rejects.parquet"), "--metrics", str(tmp_path / "ingest.json"),
    ])
    return out / "images.parquet"


def _run_embed(params_file, sample_corpus, images, out):
    return embed.main([
        "--params", str(params_file), "--images", str(images), "--source", str(sample_corpus),
        "--clip", str(out / "clip"), "--dino", str(out / "dino"), "--metrics", str(out / "embed.json"),
    ])


def test_embed_writes_aligned_unit_float16_shards(ingested, params_file, sample_corpus, tmp_path):
    out = tmp_path / "emb"
    assert _run_embed(params_file, sample_corpus, ingested, out) == 0
    ids = schemas.read_table(ingested, "images").column("image_id").to_pylist()
    metrics = json.loads((out / "embed.json").read_text())
    assert metrics["images"] == len(ids) and metrics["shards"] == -(-len(ids) // 16)
    assert metrics["random_init"] == {"clip": True, "dino": True}
    for name in ("clip", "dino"):
        vectors, description = embeddings.load(out / name, ids)
        assert vectors.dtype == np.float16 and vectors.shape[0] == len(ids)
        np.testing.assert_allclose(np.linalg.norm(vectors.astype(np.float32), axis=1), 1.0, atol=2e-3)
        assert description["random_init"] is True and description["format_version"] == embeddings.FORMAT_VERSION
        markers = sorted((out / name).glob("*.done"))
        assert len(markers) == metrics["shards"]


def test_rerun_reuses_finished_shards_and_redoes_a_missing_marker(ingested, params_file, sample_corpus, tmp_path):
    out = tmp_path / "emb"
    _run_embed(params_file, sample_corpus, ingested, out)
    before = {p.name: p.read_bytes() for p in (out / "clip").glob("shard-*")}
    (out / "clip" / "shard-00001.done").unlink()  # as if killed before the marker was written
    _run_embed(params_file, sample_corpus, ingested, out)
    metrics = json.loads((out / "embed.json").read_text())
    assert metrics["shards_written"] == 1 and metrics["shards_reused"] == metrics["shards"] - 1
    after = {p.name: p.read_bytes() for p in (out / "clip").glob("shard-*")}
    assert after == before


def test_load_refuses_incomplete_embeddings(ingested, params_file, sample_corpus, tmp_path):
    out = tmp_path / "emb"
    _run_embed(params_file, sample_corpus, ingested, out)
    (out / "dino" / "shard-00000.done").unlink()
    ids = schemas.read_table(ingested, "images").column("image_id").to_pylist()
    with pytest.raises(embeddings.EmbeddingsError, match="no finished embedding"):
        embeddings.load(out / "dino", ids)
