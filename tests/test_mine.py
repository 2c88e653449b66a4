"""search + mine stages end to end on files: planted pairs at the thresholds, quantile thresholds, the guard, errors."""

import json
import math

import numpy as np
import pyarrow as pa
import pytest
import yaml

from pipeline import mine, search
from pipeline.core import schemas
from pipeline.embedding import store as embeddings
from pipeline.mining import thresholds
from pipeline.mining.candidates import read_candidates, read_groups
from pipeline.mining.thresholds import ThresholdError
from pipeline.params import MineParams, Threshold
from tests.conftest import tiny_params
from tests.helpers.params import demo_params, merged, section

ALL_PAIRS = demo_params("mine.select", max_per_image=0)  # no cap per image, every pair kept


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _with_cosine(base, target_cos, rng):
    """A unit vector whose cosine with unit vector `base` is exactly `target_cos` (up to float error)."""
    noise = rng.standard_normal(base.shape)
    noise -= noise.dot(base) * base
    noise /= np.linalg.norm(noise)
    return target_cos * base + np.sqrt(1 - target_cos**2) * noise


PLAN = [  # (clip cosine, dino cosine) of planted pairs, some within 0.001 of each threshold
    (0.99, 0.2), (0.9505, 0.5995), (0.9509, 0.59), (0.9495, 0.3), (0.97, 0.6005),
    (0.96, 0.61), (0.999, 0.999), (0.951, 0.0), (0.9491, 0.5991),
]


def planted(seed=0, n_random=200, dim=64):
    """Random vectors plus the planted pairs, as float16 like the embeddings on disk."""
    rng = np.random.default_rng(seed)
    clip = list(_unit(rng.standard_normal((n_random, dim))))
    dino = list(_unit(rng.standard_normal((n_random, dim))))
    for c, d in PLAN:
        a_clip, a_dino = _unit(rng.standard_normal((1, dim)))[0], _unit(rng.standard_normal((1, dim)))[0]
        clip += [a_clip, _with_cosine(a_clip, c, rng)]
        dino += [a_dino, _with_cosine(a_dino, d, rng)]
    return np.array(clip).astype(np.float16), np.array(dino).astype(np.float16)


def brute_force(clip, dino, t_clip, t_dino):
    c = clip.astype(np.float64) @ clip.astype(np.float64).T
    d = dino.astype(np.float64) @ dino.astype(np.float64).T
    n = len(clip)
    return {(i, j) for i in range(n) for j in range(i + 1, n) if c[i, j] > t_clip and d[i, j] < t_dino}


def _images(ids):
    n = len(ids)
    return pa.table(
        {"image_id": ids, "source": ["t"] * n, "source_path": [f"{i}.png" for i in ids], "locations": [[f"{i}.png"] for i in ids],
         "source_license": [None] * n, "format": ["PNG"] * n, "width": [8] * n, "height": [8] * n, "n_bytes": [1] * n,
         "frame_count": [1] * n},
        schema=schemas.IMAGES,
    )


def _write_embeddings(directory, ids, vectors, name):
    description = {"name": name, "dim": int(vectors.shape[1]), "random_init": True}
    embeddings.write_description(directory, description)
    plan = embeddings.plan_shards(ids, 64)
    for shard in plan:
        start = shard.index * 64
        embeddings.write_shard(directory, shard, vectors[start : start + len(shard.image_ids)], embeddings.fingerprint(description))


@pytest.fixture
def world(tmp_path):
    """A searched corpus on disk: images table, embeddings, candidates, groups; returns a runner for mine."""

    def build(clip, dino, search_params=None, ids=None):
        ids = ids or [f"{k:04d}" for k in range(len(clip))]
        schemas.write_table(_images(ids), tmp_path / "images.parquet", "images")
        _write_embeddings(tmp_path / "clip", ids, clip, "clip")
        _write_embeddings(tmp_path / "dino", ids, dino, "dino")
        params = tiny_params()
        params["search"] = merged(params["search"], {"recall_clip_threshold": 0.9, "block_size": 64, "sample_pairs": 5000, "clusters": 4,
                                                     "near_duplicate": {"clip": 0.995, "dino": 0.98}, **(search_params or {})})
        params["mine"] = merged(params["mine"], {"clip_threshold": {"value": 0.95}, "dino_threshold": 0.6, "select": {"max_per_image": 2}})
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
        assert search.main(["--params", str(tmp_path / "params.yaml"), "--images", str(tmp_path / "images.parquet"),
                            "--clip", str(tmp_path / "clip"), "--dino", str(tmp_path / "dino"),
                            "--candidates", str(tmp_path / "candidates.parquet"), "--groups", str(tmp_path / "groups.parquet"),
                            "--metrics", str(tmp_path / "search.json")]) == 0
        candidates, meta = read_candidates(tmp_path / "candidates.parquet", ids)
        groups = read_groups(tmp_path / "groups.parquet", ids)
        return ids, candidates, meta, groups

    return build


def _found(table, ids):
    return {(ids.index(a), ids.index(b)) for a, b in zip(table.column("image_a").to_pylist(), table.column("image_b").to_pylist())}


def test_mine_equals_brute_force_including_pairs_at_the_thresholds(world, tmp_path):
    clip, dino = planted()
    ids, candidates, meta, groups = world(clip, dino)
    table, metrics = mine.mine(ids, candidates, meta, MineParams(0.95, 0.6, ALL_PAIRS), groups)
    expected = brute_force(clip, dino, 0.95, 0.6)
    assert _found(table, ids) == expected
    assert len(expected) == 4  # the planted pairs on the accepting side of both thresholds
    assert metrics["pairs"] == 4 and metrics["search"] == "exhaustive"
    assert metrics["clip_candidates"] == metrics["thresholded"] + metrics["dino_rejected"]
    assert metrics["candidates"] == metrics["clip_rejected"] + metrics["clip_candidates"]
    assert metrics["thresholded"] == metrics["pairs"] + sum(v for k, v in metrics.items() if k.startswith("select_dropped"))
    search_metrics = json.loads((tmp_path / "search.json").read_text())
    assert search_metrics["candidates"] + search_metrics["near_duplicates_dropped"] == search_metrics["pairs_above_recall_threshold"]
    assert search_metrics["near_duplicates_dropped"] == 1  # the planted (0.999, 0.999) pair
    assert metrics["near_duplicates_dropped"] == 1


def test_a_threshold_change_reuses_the_candidates(world):
    clip, dino = planted(seed=1)
    ids, candidates, meta, groups = world(clip, dino)
    for t_clip, t_dino in [(0.9, 0.6), (0.95, 0.3), (0.96, 0.65), (0.99, 0.5)]:
        table, _ = mine.mine(ids, candidates, meta, MineParams(t_clip, t_dino, demo_params("mine.select", max_per_image=0, drop_near_duplicate_pairs=False)), groups)
        guarded = brute_force(clip, -dino, 0.995, -0.98)  # CLIP > 0.995 and DINOv2 > 0.98
        assert _found(table, ids) == brute_force(clip, dino, t_clip, t_dino) - guarded


def test_pairs_are_unordered_unique_and_carry_both_similarities(world):
    clip, dino = planted(seed=3)
    ids = [f"id{k:04d}" for k in range(len(clip))][::-1]  # ids in descending order: image_a must still be smaller
    ids, candidates, meta, groups = world(clip, dino, ids=ids)
    table, _ = mine.mine(ids, candidates, meta, MineParams(0.95, 0.6, ALL_PAIRS), groups)
    rows = table.to_pylist()
    assert rows and all(r["image_a"] < r["image_b"] for r in rows)
    assert len({(r["image_a"], r["image_b"]) for r in rows}) == len(rows)
    assert all(r["pair_id"] == schemas.pair_id(r["image_a"], r["image_b"]) for r in rows)
    for r in rows:
        i, j = ids.index(r["image_a"]), ids.index(r["image_b"])
        assert r["clip_sim"] == pytest.approx(float(clip[i].astype(np.float64) @ clip[j]), abs=1e-6)
        assert r["dino_sim"] == pytest.approx(float(dino[i].astype(np.float64) @ dino[j]), abs=1e-6)


def test_quantile_thresholds(world):
    rng = np.random.default_rng(5)
    centres = _unit(rng.standard_normal((4, 16)))
    clip = _unit(centres[rng.integers(0, 4, 150)] + 0.25 * rng.standard_normal((150, 16))).astype(np.float16)
    dino = _unit(rng.standard_normal((150, 16))).astype(np.float16)
    ids, candidates, meta, groups = world(clip, dino, {"recall_clip_threshold": 0.5})
    q = 0.999
    table, metrics = mine.mine(ids, candidates, meta, MineParams(Threshold(quantile=q), Threshold(quantile=0.9),
                                                                    demo_params("mine.select", max_per_image=0, drop_near_duplicate_pairs=False)), groups)
    x = clip.astype(np.float64)
    sims = (x @ x.T)[np.triu_indices(150, 1)]
    above = math.floor((1 - q) * len(sims))
    # exact, counted from the candidates (whose cosines are stored as float32)
    assert (sims.astype(np.float32) > np.float32(metrics["clip_threshold"])).sum() == above
    assert metrics["clip_threshold_given"] == {"quantile": q}
    d = dino.astype(np.float64)
    dsims = (d @ d.T)[np.triu_indices(150, 1)]
    assert metrics["dino_threshold"] == pytest.approx(np.quantile(dsims, 0.9), abs=0.03)  # from a random sample
    assert metrics["clip_candidates"] == above


def test_thresholds_the_candidates_cannot_answer_are_refused_with_the_fix(world):
    clip, dino = planted()
    ids, candidates, meta, groups = world(clip, dino)
    with pytest.raises(ThresholdError, match="search.recall_clip_threshold"):
        mine.mine(ids, candidates, meta, MineParams(0.85, 0.6, ALL_PAIRS), groups)
    with pytest.raises(ThresholdError, match="search.recall_clip_threshold"):
        mine.mine(ids, candidates, meta, MineParams(Threshold(quantile=0.5), 0.6, ALL_PAIRS), groups)
    with pytest.raises(ThresholdError, match="near_duplicate"):
        mine.mine(ids, candidates, meta, MineParams(0.95, 0.99, ALL_PAIRS), groups)


def test_a_corpus_full_of_near_duplicates_is_guarded_and_grouped(world):
    rng = np.random.default_rng(2)
    clip = _unit(rng.standard_normal((100, 32)))
    dino = _unit(rng.standard_normal((100, 32)))
    clip[20:80], dino[20:80] = clip[3], dino[3]  # 61 copies of image 3
    clip[90], dino[90] = _with_cosine(clip[3], 0.97, rng), _with_cosine(dino[3], 0.2, rng)  # one CLIP-blind partner
    ids, candidates, meta, groups = world(clip.astype(np.float16), dino.astype(np.float16))
    assert meta.near_duplicates_dropped == 61 * 60 // 2
    group = dict(zip(groups.column("row").to_pylist(), groups.column("duplicate_group").to_pylist()))
    assert {group[r] for r in [3, *range(20, 80)]} == {3}
    table, metrics = mine.mine(ids, candidates, meta, MineParams(0.95, 0.6, ALL_PAIRS), groups)
    # image 90 pairs with all 61 copies; the copies are one near-duplicate group: one pair remains
    assert metrics["thresholded"] == 61 and metrics["pairs"] == 1
    assert metrics["select_dropped_near_duplicate_pairs"] == 60


def test_mine_main_writes_pairs_metrics_and_says_random(world, tmp_path, capsys):
    clip, dino = planted()
    world(clip, dino)
    out = tmp_path / "pairs.parquet"
    assert mine.main(["--params", str(tmp_path / "params.yaml"), "--images", str(tmp_path / "images.parquet"),
                      "--candidates", str(tmp_path / "candidates.parquet"), "--groups", str(tmp_path / "groups.parquet"),
                      "--pairs", str(out), "--metrics", str(tmp_path / "mine.json")]) == 0
    metrics = json.loads((tmp_path / "mine.json").read_text())
    assert metrics["random_init_encoders"] == ["clip", "dino"]
    assert "RANDOMLY INITIALISED" in capsys.readouterr().err
    assert schemas.read_table(out, "pairs").num_rows == metrics["pairs"]
    assert schemas.read_meta(out)["clip_threshold"] == metrics["clip_threshold"]


def test_candidates_for_another_images_table_are_refused(world, tmp_path):
    clip, dino = planted()
    ids, *_ = world(clip, dino)
    with pytest.raises(schemas.SchemaError, match="rerun the search"):
        read_candidates(tmp_path / "candidates.parquet", list(reversed(ids)))


def test_candidates_stream_to_disk_in_row_groups(world, tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    monkeypatch.setattr(search, "ROW_GROUP_ROWS", 2)
    clip, dino = planted(seed=6)
    ids, candidates, meta, groups = world(clip, dino, {"block_size": 16})
    assert pq.ParquetFile(tmp_path / "candidates.parquet").metadata.num_row_groups > 1
    table, _ = mine.mine(ids, candidates, meta, MineParams(0.95, 0.6, ALL_PAIRS), groups)
    assert _found(table, ids) == brute_force(clip, dino, 0.95, 0.6)


def test_threshold_params_take_a_value_or_a_quantile(tmp_path):
    from pipeline.core.config import ParamsError, load_section

    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"mine": {"clip_threshold": {"quantile": 0.9999}, "dino_threshold": 0.6,
                                              "select": section("mine.select")}}))
    params = load_section(path, "mine", MineParams)
    assert params.clip_threshold == Threshold(quantile=0.9999) and params.dino_threshold == 0.6
    assert thresholds.describe(params.clip_threshold) == {"quantile": 0.9999} and thresholds.describe(0.6) == {"value": 0.6}
    with pytest.raises(ParamsError, match="exactly one of value or quantile"):
        thresholds.describe(Threshold(value=0.9, quantile=0.99))
    path.write_text(yaml.safe_dump({"mine": {"clip_threshold": {"percentile": 99}}}))
    with pytest.raises(ParamsError, match="percentile"):
        load_section(path, "mine", MineParams)
