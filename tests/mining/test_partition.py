"""Partitioned mode: recall, cost and largest task against exact mode on two data shapes; exactness; balance;
the recall sample and its interval; Ray = local."""

import json

import numpy as np
import pytest
import yaml

from pipeline.commands.benchmarks.mine import SHAPES, measure_partitioned, partitioned_verdicts
from pipeline.mining.candidates import read_candidates
from pipeline.mining.partitions import (
    RECALL_FIELDS,
    RECALL_LEVELS,
    core_blocks,
    fill_with_room,
    partitioned_pairs,
    plan_partitions,
    recall_against_exact,
    recall_rows,
    task_dot_products,
    task_rows,
    tells_apart,
    wilson_interval,
)
from pipeline.mining.tiles import PairChunk, SearchCounts, exact_pairs
from pipeline.params import SearchParams
from tests.helpers.params import demo_params, merged, section
from tests.test_mine import planted, world  # noqa: F401  (world is a fixture)
from tests.test_search import clustered


@pytest.mark.slow
@pytest.mark.parametrize("shape", SHAPES)
def test_finds_99_percent_of_exact_pairs_with_a_quarter_of_the_products_in_balanced_tasks(shape):
    # 40 partitions of 200 members, 4 probes: the cost model says 0.23 of exact mode's products.
    result = measure_partitioned(shape, 8000, 64, 0.95, 512, seed=0, partitions=40, probes=4)
    assert result["planted_pairs"] == 500 and result["planted_straddling"] >= 300  # most planted pairs cross a border
    assert result["exact_pairs"] >= 500 and result["partitioned_only"] == 0
    assert result["recall"] >= 0.99
    assert result["planted_found"] >= 0.98 * result["planted_pairs"]  # the border-straddling pairs themselves
    assert result["dot_product_share"] <= 0.25
    assert abs(result["share_over_model"] - 1) <= 0.10  # the cost model predicts what the code computes
    assert result["task_memory_over_model"] <= 2.0  # no task holds more than twice (1 + p)·N/P vectors
    assert all(partitioned_verdicts(result).values())


def _params(**kw):
    return demo_params("search", recall_clip_threshold=0.9, mode="partitioned", block_size=32, seed=0,
                       partition=demo_params("search.partition", partitions=6, probes=2, train_size=1000, iterations=10), **kw)


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
    plan = plan_partitions(x, _params().partition, 0)
    core, visitors = task_rows(plan)
    assert not (plan.probes == plan.label[:, None]).any()  # a vector never visits its own partition
    # the cost model: each core's upper triangle by blocks plus visitors × core, nothing else
    assert counts.dot_products == sum(task_dot_products(int(c), int(v), 32) for c, v in zip(core, visitors))
    for c, v in zip(core.tolist(), visitors.tolist()):
        widest = max(len(b) for b in core_blocks(c, 32))
        # at least every pair the task is for; at most half a square plus the diagonal blocks
        assert c * (c - 1) // 2 + v * c <= task_dot_products(c, v, 32) <= (c * c + c * widest) // 2 + v * c


def test_partition_params_are_checked_at_load(tmp_path):
    from pipeline.core.config import ParamsError, load_section

    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"search": merged(section("search"), {"partition": {"balance": 0.5}})}))
    with pytest.raises(ParamsError, match=r"search.partition.balance' is 0.5, but it must be ≥ 1"):
        load_section(path, "search", SearchParams)
    path.write_text(yaml.safe_dump({"search": merged(section("search"), {"partition": {"recall_sample_rows": 500, "recall_max_rows": 100}})}))
    with pytest.raises(ParamsError, match=r"recall_sample_rows is 500, but it must be ≤ recall_max_rows \(100\)"):
        load_section(path, "search", SearchParams)


def _hub_prone(n: int, dim: int, seed: int) -> np.ndarray:
    """Clusters plus 10 % uniform noise: under L2 to unnormalised k-means centroids, the noise centroid is a hub."""
    from pipeline.commands.benchmarks.mine import shaped_vectors, vector_shape

    return shaped_vectors(vector_shape("clustered", dim, seed), n, seed)


def test_partitions_are_balanced_and_no_partition_is_a_hub():
    x = _hub_prone(6000, 32, seed=4)
    params = demo_params("search.partition", partitions=16, probes=3, train_size=6000, iterations=10, balance=1.25)
    plan = plan_partitions(x, params, seed=0)
    core, visitors = task_rows(plan)
    assert core.sum() == 6000 and visitors.sum() == 3 * 6000
    assert core.max() <= np.ceil(1.25 * 6000 / 16)
    assert visitors.max() <= np.ceil(1.25 * 3 * 6000 / 16)
    assert (plan.probes >= 0).all() and not (plan.probes == plan.label[:, None]).any()
    assert (np.sort(plan.probes, axis=1)[:, 1:] != np.sort(plan.probes, axis=1)[:, :-1]).all()  # distinct visits
    assert np.allclose(np.linalg.norm(plan.centroids, axis=1), 1, atol=1e-5)  # partitions on the sphere


def test_with_no_room_to_spare_every_vector_still_gets_a_partition_and_its_visits():
    x = _hub_prone(4000, 16, seed=3)
    # balance 1: the cores fill exactly, so rows turned away rank deeper than the first 18 partitions
    plan = plan_partitions(x, demo_params("search.partition", partitions=40, probes=2, train_size=4000, iterations=10, balance=1.0), seed=0)
    core, visitors = task_rows(plan)
    assert (core == 100).all() and (plan.probes >= 0).all() and not (plan.probes == plan.label[:, None]).any()
    assert (plan.probes[:, 0] != plan.probes[:, 1]).all()
    # a visit goes past a partition's room only when every partition the row may still visit is full
    assert np.maximum(visitors - 200, 0).sum() <= 0.01 * 4000


def test_with_room_to_spare_each_vector_takes_its_most_similar_partitions():
    x = _hub_prone(3000, 32, seed=5)
    plan = plan_partitions(x, demo_params("search.partition", partitions=8, probes=2, train_size=3000, iterations=10, balance=100.0), seed=0)
    order = np.argsort(-(x.astype(np.float32) @ plan.centroids.T), axis=1, kind="stable")
    assert (plan.label == order[:, 0]).mean() > 0.999  # inner product on unit centroids (ties aside)
    assert (plan.probes == order[:, 1:3]).all(axis=1).mean() > 0.999


def test_a_full_partition_keeps_its_most_similar_rows_and_turns_the_rest_to_their_next_choice():
    ids = np.array([[0, 1, 2]] * 4 + [[1, 0, 2]])
    sims = np.array([[0.6, 0.5, 0.1], [0.9, 0.2, 0.1], [0.7, 0.6, 0.1], [0.8, 0.1, 0.0], [0.9, 0.1, 0.0]], dtype=np.float32)
    room = np.array([2, 2, 5])
    chosen = np.full((5, 1), -1)
    fill_with_room(ids, sims, room, chosen, barred=np.full(5, -1))
    assert chosen[:, 0].tolist() == [2, 0, 1, 0, 1]  # rows 1 and 3 are nearest to 0; row 0 loses partition 1 to rows 2 and 4
    assert room.tolist() == [0, 0, 4]
    visits = np.full((5, 2), -1)
    fill_with_room(ids, sims, np.array([9, 9, 9]), visits, barred=chosen[:, 0])
    assert (visits != chosen).all() and (visits >= 0).all()


def test_wilson_interval_covers_the_true_recall_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    hits = rng.binomial(200, 0.97, size=4000)
    covered = [low <= 0.97 <= high for low, high in (wilson_interval(int(h), 200) for h in hits)]
    assert 0.93 <= np.mean(covered) <= 0.97
    assert wilson_interval(18, 18)[0] == pytest.approx(18 / (18 + 1.959963984540054**2))  # all hits: n / (n + z²)
    assert not tells_apart(wilson_interval(18, 18))  # 18 of 18 cannot tell 0.99 from 0.95
    assert tells_apart(wilson_interval(400, 400)) and tells_apart(wilson_interval(900, 1000))
    assert RECALL_LEVELS == (0.95, 0.99)


def _sparse_pairs(seed: int) -> tuple[np.ndarray, PairChunk]:
    """3,000 uniform vectors with 150 planted pairs (few pairs per row) and their exact pair set."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((3000, 32))
    x[1:300:2] = x[0:300:2] + 0.15 * rng.standard_normal((150, 32))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)
    perm = rng.permutation(3000)
    x = x[perm]
    return x, PairChunk.concat(list(exact_pairs(x, 0.95, 256)))


def test_the_recall_sample_grows_until_it_can_tell_99_from_95_percent():
    x, exact = _sparse_pairs(0)
    assert 100 <= len(exact) <= 200
    rows = recall_rows(3000, 3000, seed=1)
    touching = np.isin(exact.i, rows) | np.isin(exact.j, rows)
    result = recall_against_exact(x, exact, rows, 0.95, 256, min_rows=100)
    assert result["recall_sample_rows"] > 100  # 100 rows touch too few pairs: it sampled more
    assert result["recall_against_exact"] == 1.0 and result["recall_sample_sufficient"]
    assert result["recall_sample_pairs"] >= 73  # below that, 100 % recall still admits 95 %
    assert result["recall_interval"][0] > 0.95 and result["recall_interval"][1] == 1.0
    assert touching.sum() >= result["recall_sample_pairs"]
    fewer = result["recall_sample_rows"] - 100  # it stops at the first look, every 100 rows, that can tell
    assert not recall_against_exact(x, exact, rows[:fewer], 0.95, 256, min_rows=fewer)["recall_sample_sufficient"]
    missing = PairChunk(exact.i[::10], exact.j[::10], exact.sim[::10])  # a search that found a tenth
    low = recall_against_exact(x, missing, rows, 0.95, 256, min_rows=100)
    assert low["recall_sample_sufficient"] and low["recall_interval"][1] < 0.95 < 0.99
    assert low["recall_interval"][0] <= low["recall_against_exact"] <= low["recall_interval"][1]
    capped = recall_against_exact(x, exact, rows[:100], 0.95, 256, min_rows=100)
    assert capped["recall_sample_rows"] == 100 and not capped["recall_sample_sufficient"]


def test_search_stage_reports_recall_with_its_interval(world, tmp_path):  # noqa: F811
    clip, dino = planted(seed=2, n_random=300, dim=16)
    world(clip, dino, {"mode": "partitioned", "recall_clip_threshold": 0.8,
                       "partition": {"partitions": 4, "probes": 1, "train_size": 1000, "iterations": 10,
                                     "recall_sample_rows": 100}})
    metrics = json.loads((tmp_path / "search.json").read_text())
    assert metrics["mode"] == "partitioned"
    assert metrics["recall_sample_rows"] >= 100 and metrics["recall_sample_pairs"] > 0
    assert 0.5 <= metrics["recall_against_exact"] <= 1.0
    low, high = metrics["recall_interval"]
    assert low <= metrics["recall_against_exact"] <= high
    assert metrics["recall_sample_sufficient"] == tells_apart((low, high))
    meta = read_candidates(tmp_path / "candidates.parquet", [f"{k:04d}" for k in range(len(clip))])[1]
    assert {k: meta.search[k] for k in RECALL_FIELDS} == {k: metrics[k] for k in RECALL_FIELDS}


@pytest.mark.slow
def test_card_states_the_recall_with_its_interval_and_when_the_sample_is_too_small(world, sample_corpus, tmp_path):  # noqa: F811
    from pipeline import package
    from pipeline.core import schemas
    from tests.helpers.release_world import build_inputs, package_args

    clip = clustered(4, 400, 16, centres=6)  # hundreds of pairs above 0.9
    dino = clustered(5, 400, 16, centres=40)
    ids = [f"{k:04d}" for k in range(len(clip))]
    lines = {}
    inputs = build_inputs(sample_corpus, tmp_path / "inputs")
    pairs_table = schemas.read_table(inputs["pairs"], "pairs")
    pairs_meta = schemas.read_meta(inputs["pairs"])
    for name, rows in (("enough", 400), ("too few", 3)):
        world(clip, dino, {"mode": "partitioned", "recall_clip_threshold": 0.9,
                           "partition": {"partitions": 4, "probes": 1, "train_size": 1000, "iterations": 10,
                                         "recall_sample_rows": rows, "recall_max_rows": rows}})
        details = read_candidates(tmp_path / "candidates.parquet", ids)[1].search  # what mine passes on
        schemas.write_table(pairs_table, inputs["pairs"], "pairs",
                            meta={**pairs_meta, "search": "partitioned", "search_details": details})
        out = tmp_path / name
        assert package.main(package_args(inputs, out, tmp_path / f"{name}.json")) == 0
        card = (out / "README.md").read_text()
        lines[name] = (next(line for line in card.splitlines() if line.startswith("* Search:")), details)
    for line, details in lines.values():
        low, high = details["recall_interval"]
        assert f"{100 * details['recall_against_exact']:.1f} % of the pairs an exhaustive search finds" in line
        assert f"of {details['recall_sample_pairs']:,} pairs from {details['recall_sample_rows']:,} images" in line
        assert f"95 % interval {100 * low:.1f}–{100 * high:.1f} %" in line
        assert ("too small a sample to tell 99 % recall from 95 %" in line) == (not details["recall_sample_sufficient"])
    assert lines["enough"][1]["recall_sample_sufficient"] and not lines["too few"][1]["recall_sample_sufficient"]


@pytest.mark.slow
def test_ray_engine_gives_the_local_result():
    pytest.importorskip("ray")
    x = clustered(4, 300, 16, centres=6)
    local = PairChunk.concat(list(partitioned_pairs(x, 0.9, _params(), SearchCounts())))
    remote = PairChunk.concat(list(partitioned_pairs(x, 0.9, _params(engine="ray"), SearchCounts())))
    assert len(local) > 0
    assert sorted(zip(local.i.tolist(), local.j.tolist(), local.sim.tolist())) == sorted(
        zip(remote.i.tolist(), remote.j.tolist(), remote.sim.tolist()))
