"""Partitioned mode: recall and cost against exact mode on border-straddling pairs; exactness; Ray = local."""

import json

import numpy as np
import pytest

from pipeline.partition import measure_partitioned, partitioned_pairs, plan_partitions
from pipeline.search import PairChunk, PartitionParams, SearchCounts, SearchParams, exact_pairs
from tests.test_mine import planted, world  # noqa: F401  (world is a fixture)
from tests.test_search import clustered


@pytest.mark.slow
def test_finds_99_percent_of_exact_pairs_with_a_quarter_of_the_products():
    result = measure_partitioned(8000, 64, 0.95, 1024, seed=0)
    assert result["planted_straddling"] == result["planted_pairs"] == 500  # every planted pair crosses a border
    assert result["exact_pairs"] >= 500
    assert result["recall"] >= 0.99
    assert result["dot_product_share"] <= 0.25
    assert result["partitioned_only"] == 0


def _params(**kw):
    return SearchParams(recall_clip_threshold=0.9, mode="partitioned", block_size=32, seed=0,
                        partition=PartitionParams(partitions=6, probes=2, train_size=1000, iterations=10), **kw)


def test_partitioned_pairs_are_exact_unique_and_a_subset_of_exact_mode():
    x = clustered(3, 400, 16, centres=8)
    counts = SearchCounts()
    found = PairChunk.concat(list(partitioned_pairs(x, 0.9, _params(), counts)))
    pairs = list(zip(found.i.tolist(), found.j.tolist()))
    assert all(i < j for i, j in pairs) and len(set(pairs)) == len(pairs)
    exact = PairChunk.concat(list(exact_pairs(x, 0.9, 32)))
    exact_sims = dict(zip(zip(exact.i.tolist(), exact.j.tolist()), exact.sim.tolist()))
    assert set(pairs) <= set(exact_sims) and len(pairs) > 0.9 * len(exact_sims)
    assert all(exact_sims[p] == s for p, s in zip(pairs, found.sim.tolist()))  # same exact score as exact mode
    plan = plan_partitions(x, 6, 2, 0, 1000, 10)
    core = np.bincount(plan.label, minlength=6)
    visitors = np.bincount(plan.probes.reshape(-1), minlength=6)
    assert not (plan.probes == plan.label[:, None]).any()  # a vector never visits its own partition

    def upper_tiles(size, block=32):
        sides = [min(block, size - s) for s in range(0, size, block)]
        return sum(a * b for k, a in enumerate(sides) for b in sides[k:])

    # the cost model: each core's upper triangle (in tiles) plus visitors × core, nothing else
    assert counts.dot_products == sum(upper_tiles(int(c)) + int(v) * int(c) for c, v in zip(core, visitors))

def test_search_stage_reports_recall_against_exact(world, tmp_path):  # noqa: F811
    clip, dino = planted(seed=2, n_random=300, dim=16)
    world(clip, dino, {"mode": "partitioned", "recall_clip_threshold": 0.8,
                       "partition": {"partitions": 4, "probes": 1, "train_size": 1000, "iterations": 10, "recall_sample_rows": 100}})
    metrics = json.loads((tmp_path / "search.json").read_text())
    assert metrics["mode"] == "partitioned"
    assert metrics["recall_sample_rows"] == 100 and metrics["recall_sample_pairs"] > 0
    assert 0.5 <= metrics["recall_against_exact"] <= 1.0


@pytest.mark.slow
def test_ray_engine_gives_the_local_result():
    pytest.importorskip("ray")
    x = clustered(4, 300, 16, centres=6)
    local = PairChunk.concat(list(partitioned_pairs(x, 0.9, _params(), SearchCounts())))
    remote = PairChunk.concat(list(partitioned_pairs(x, 0.9, _params(engine="ray"), SearchCounts())))
    assert len(local) > 0
    assert sorted(zip(local.i.tolist(), local.j.tolist(), local.sim.tolist())) == sorted(
        zip(remote.i.tolist(), remote.j.tolist(), remote.sim.tolist()))
