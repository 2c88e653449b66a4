import numpy as np
import pytest

from pipeline import schemas
from pipeline.mine import MineParams, clip_candidates, mine


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _with_cosine(base, target_cos, rng):
    """A unit vector whose cosine with unit vector `base` is exactly `target_cos` (up to float error)."""
    noise = rng.standard_normal(base.shape)
    noise -= noise.dot(base) * base
    noise /= np.linalg.norm(noise)
    return target_cos * base + np.sqrt(1 - target_cos**2) * noise


def planted(seed=0, n_random=200, dim=64):
    """Random vectors plus planted pairs, some within 0.001 of each threshold on either side."""
    rng = np.random.default_rng(seed)
    clip = list(_unit(rng.standard_normal((n_random, dim))))
    dino = list(_unit(rng.standard_normal((n_random, dim))))
    plan = [  # (clip cosine, dino cosine)
        (0.99, 0.2), (0.9505, 0.5995), (0.9509, 0.59), (0.9495, 0.3), (0.97, 0.6005),
        (0.96, 0.61), (0.999, 0.999), (0.951, 0.0), (0.9491, 0.5991),
    ]
    for c, d in plan:
        a_clip, a_dino = _unit(rng.standard_normal((1, dim)))[0], _unit(rng.standard_normal((1, dim)))[0]
        clip += [a_clip, _with_cosine(a_clip, c, rng)]
        dino += [a_dino, _with_cosine(a_dino, d, rng)]
    return np.array(clip, dtype=np.float32), np.array(dino, dtype=np.float32)


def brute_force(clip, dino, t_clip, t_dino):
    c = clip.astype(np.float64) @ clip.astype(np.float64).T
    d = dino.astype(np.float64) @ dino.astype(np.float64).T
    n = len(clip)
    return {(i, j) for i in range(n) for j in range(i + 1, n) if c[i, j] > t_clip and d[i, j] < t_dino}


def test_mine_equals_brute_force_including_pairs_at_the_thresholds():
    clip, dino = planted()
    ids = [f"{k:04d}" for k in range(len(clip))]
    table, metrics = mine(ids, clip, dino, MineParams(0.95, 0.6))
    found = {(ids.index(a), ids.index(b)) for a, b in zip(table.column("image_a").to_pylist(), table.column("image_b").to_pylist())}
    expected = brute_force(clip, dino, 0.95, 0.6)
    assert found == expected
    assert len(expected) == 4  # the planted pairs on the accepting side of both thresholds
    assert metrics["pairs"] == 4 and metrics["search"] == "exhaustive"
    assert metrics["clip_candidates"] == metrics["pairs"] + metrics["dino_rejected"]


def test_pairs_are_unordered_unique_and_carry_both_similarities():
    clip, dino = planted(seed=3)
    ids = [f"id{k:04d}" for k in range(len(clip))][::-1]  # ids in descending order: image_a must still be smaller
    table, _ = mine(ids, clip, dino, MineParams(0.95, 0.6))
    rows = table.to_pylist()
    assert all(r["image_a"] < r["image_b"] for r in rows)
    assert len({(r["image_a"], r["image_b"]) for r in rows}) == len(rows)
    assert all(r["pair_id"] == schemas.pair_id(r["image_a"], r["image_b"]) for r in rows)
    for r in rows:
        i, j = ids.index(r["image_a"]), ids.index(r["image_b"])
        assert r["clip_sim"] == pytest.approx(float(clip[i] @ clip[j]), abs=1e-5)
        assert r["dino_sim"] == pytest.approx(float(dino[i] @ dino[j]), abs=1e-5)


def test_no_self_pairs_even_for_identical_vectors():
    v = _unit(np.ones((3, 8), dtype=np.float32))
    cands = clip_candidates(v, 0.5)
    assert sorted(zip(cands.i.tolist(), cands.j.tolist())) == [(0, 1), (0, 2), (1, 2)]
