import json

import numpy as np
import pytest

from pipeline import embed, ingest
from pipeline.core import schemas
from pipeline.embedding import engine
from pipeline.embedding import store as embeddings


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


def _params_with(tmp_path, name="params.yaml", **embed_overrides):
    import yaml

    from tests.conftest import tiny_params

    params = tiny_params(embed=embed_overrides)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(params))
    return path


def _ingest(params_file, source, out):
    ingest.main([
        "--params", str(params_file), "--source", str(source), "--images", str(out / "images.parquet"),
        "--rejects", str(out / "rejects.parquet"), "--metrics", str(out / "ingest.json"),
    ])
    return out / "images.parquet"


def _files(directory):
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_shard_workers_together_write_exactly_what_one_run_writes(ingested, sample_corpus, tmp_path):
    params_file = _params_with(tmp_path, shard_size=4)
    whole, split = tmp_path / "whole", tmp_path / "split"
    _run_embed(params_file, sample_corpus, ingested, whole)
    owned = []
    for worker in ("0/2", "1/2"):
        embed.main([
            "--params", str(params_file), "--images", str(ingested), "--source", str(sample_corpus),
            "--clip", str(split / "clip"), "--dino", str(split / "dino"), "--metrics", str(split / "embed.json"),
            "--shard", worker,
        ])
        metrics = json.loads((split / "embed.json").read_text())
        owned.append(metrics["shards_owned"])
        assert metrics["shards_written"] == metrics["shards_owned"] and metrics["shards_reused"] == 0
    total = json.loads((whole / "embed.json").read_text())["shards"]
    assert sum(owned) == total and min(owned) >= total // 2
    for name in ("clip", "dino"):
        assert _files(split / name) == _files(whole / name)


def test_grown_corpus_embeds_only_its_new_images(sample_corpus, tmp_path):
    import shutil

    params_file = _params_with(tmp_path, shard_size=4)
    corpus = tmp_path / "corpus"
    files = sorted(p for p in sample_corpus.rglob("*") if p.is_file())
    first = files[: len(files) // 2]
    for path in first:
        (corpus / path.relative_to(sample_corpus)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, corpus / path.relative_to(sample_corpus))
    out = tmp_path / "emb"
    images_1 = _ingest(params_file, corpus, tmp_path / "v1")
    _run_embed(params_file, corpus, images_1, out)
    ids_1 = schemas.read_table(images_1, "images").column("image_id").to_pylist()
    before = {n: {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (out / n).glob("shard-*")} for n in ("clip", "dino")}
    vectors_1 = embeddings.load(out / "clip", ids_1)[0]

    shutil.copytree(sample_corpus, corpus, dirs_exist_ok=True)  # the corpus grows
    images_2 = _ingest(params_file, corpus, tmp_path / "v2")
    ids_2 = schemas.read_table(images_2, "images").column("image_id").to_pylist()
    new = set(ids_2) - set(ids_1)
    assert new and set(ids_1) < set(ids_2)
    _run_embed(params_file, corpus, images_2, out)
    metrics = json.loads((out / "embed.json").read_text())
    assert metrics["images_to_embed"] == metrics["images_embedded"] == len(new)
    for name in ("clip", "dino"):
        after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (out / name).glob("shard-*")}
        assert {k: after[k] for k in before[name]} == before[name]  # no earlier shard was touched
        written = {p.name.split(".")[0] for p in (out / name).glob("shard-*") if p.name not in before[name]}
        written_ids = set()
        for stem in written:
            written_ids |= set(schemas.read_table(out / name / f"{stem}.ids.parquet", "embedding_ids").column("image_id").to_pylist())
        assert written_ids == new
        vectors_2, _ = embeddings.load(out / name, ids_2)
        assert vectors_2.shape[0] == len(ids_2)
    np.testing.assert_array_equal(embeddings.load(out / "clip", ids_1)[0], vectors_1)


def test_an_image_that_no_longer_decodes_costs_only_itself(ingested, sample_corpus, tmp_path):
    import shutil

    corpus = tmp_path / "corpus"
    shutil.copytree(sample_corpus, corpus)
    table = schemas.read_table(ingested, "images")
    broken_id, broken_path = table.column("image_id")[0].as_py(), table.column("source_path")[0].as_py()
    (corpus / broken_path).write_bytes(b"not an image any more")
    out = tmp_path / "emb"
    with pytest.raises(engine.EmbedFailure, match=broken_id[:12]):
        _run_embed(_params_with(tmp_path, shard_size=4), corpus, ingested, out)
    metrics = json.loads((out / "embed.json").read_text())
    assert metrics["images_failed"] == 1 and metrics["failures"][0]["image_id"] == broken_id
    assert metrics["images_embedded"] + metrics["images_failed"] == metrics["images_to_embed"] == table.num_rows
    others = [i for i in table.column("image_id").to_pylist() if i != broken_id]
    vectors, _ = embeddings.load(out / "clip", others)
    assert vectors.shape[0] == len(others)
    with pytest.raises(embeddings.EmbeddingsError, match=broken_id):
        embeddings.load(out / "clip", [broken_id])
