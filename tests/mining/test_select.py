"""Pair selection: per-image cap, near-duplicate redundancy, gap ranking, diverse target."""

import pyarrow as pa
import pytest

from pipeline.core import schemas
from pipeline.mining.selection import select_pairs
from tests.helpers.params import demo_params


def _pairs(rows):
    return pa.table(
        {"pair_id": [schemas.pair_id(a, b) for a, b, _, _ in rows], "image_a": [min(a, b) for a, b, _, _ in rows],
         "image_b": [max(a, b) for a, b, _, _ in rows], "clip_sim": [c for *_, c, _ in rows], "dino_sim": [d for *_, d in rows]},
        schema=schemas.PAIRS,
    )


def hub_corpus(n=300):
    """Image "hub" matches n others, with gaps spread out; plus a few ordinary pairs."""
    rows = [("hub", f"x{k:03d}", 0.96 + (k % 30) / 1000, 0.1 + k / 1000) for k in range(n)]
    rows += [(f"y{k}", f"z{k}", 0.97, 0.5) for k in range(5)]
    return _pairs(rows)


@pytest.mark.parametrize("k", [1, 3, 7])
def test_no_image_exceeds_the_cap_when_one_image_matches_hundreds(k):
    table, counts = select_pairs(hub_corpus(), demo_params("mine.select", max_per_image=k))
    rows = table.to_pylist()
    per_image = {}
    for r in rows:
        for image in (r["image_a"], r["image_b"]):
            per_image[image] = per_image.get(image, 0) + 1
    assert max(per_image.values()) == k and per_image["hub"] == k
    assert counts["select_dropped_per_image_cap"] == 300 - k
    assert table.num_rows + sum(counts.values()) == 305
    hub_gaps = sorted((r["clip_sim"] - r["dino_sim"] for r in hub_corpus().to_pylist() if r["image_a"] == "hub"), reverse=True)
    kept_gaps = [r["clip_sim"] - r["dino_sim"] for r in rows if r["image_a"] == "hub"]
    assert kept_gaps == pytest.approx(hub_gaps[:k])  # the cap keeps the largest gaps


def test_ranked_by_clip_minus_dino_gap():
    table, _ = select_pairs(hub_corpus(20), demo_params("mine.select", max_per_image=0))
    gaps = [r["clip_sim"] - r["dino_sim"] for r in table.to_pylist()]
    assert gaps == sorted(gaps, reverse=True) and len(gaps) == 25


def test_pairs_of_near_duplicate_images_keep_one():
    rows = [("a1", "b1", 0.97, 0.2), ("a2", "b2", 0.98, 0.2), ("a1", "b2", 0.96, 0.3), ("a1", "c", 0.97, 0.1)]
    group = {"a1": 0, "a2": 0, "b1": 1, "b2": 1}
    table, counts = select_pairs(_pairs(rows), demo_params("mine.select", max_per_image=0), duplicate_group=group)
    kept = {(r["image_a"], r["image_b"]) for r in table.to_pylist()}
    assert kept == {("a2", "b2"), ("a1", "c")}  # the largest gap of the a*/b* group, and the unrelated pair
    assert counts["select_dropped_near_duplicate_pairs"] == 2


def test_target_takes_pairs_round_robin_across_clusters():
    rows = [(f"d{k}", f"e{k}", 0.99, 0.1) for k in range(50)] + [(f"s{k}", f"t{k}", 0.96, 0.5) for k in range(5)]
    cluster = {**{f"d{k}": 0 for k in range(50)}, **{f"s{k}": 1 for k in range(5)}}
    table, counts = select_pairs(_pairs(rows), demo_params("mine.select", max_per_image=0, target=10), cluster=cluster)
    images = [r["image_a"] for r in table.to_pylist()]
    assert len(images) == 10 and sum(i.startswith("s") for i in images) == 5  # the sparse cluster is not crowded out
    assert counts["select_dropped_over_target"] == 45
