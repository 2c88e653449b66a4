"""Pair selection after the thresholds: redundancy, a per-image cap, ranking and an optional diverse target.

Given the thresholded pairs and, per image, a near-duplicate group and a cluster label (both
from the search stage), `select_pairs` keeps, in order of the CLIP-minus-DINOv2 gap (largest
first, ties by pair_id):

1. one pair per unordered pair of near-duplicate groups (a pair whose two images are
   near-duplicates of a kept pair's images adds nothing for annotators);
2. at most `max_per_image` pairs per image (one image matching hundreds would otherwise fill
   the benchmark);
3. if `target` > 0, that many pairs taken round-robin across the clusters of image_a, so a
   dense region of the corpus cannot crowd out the rest.

Each filter's drop count is returned for the funnel metrics.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

import pyarrow as pa

from pipeline.core import schemas
from pipeline.params import SelectParams


def rank(pairs: pa.Table) -> list[dict]:
    """Rows of `pairs` ordered by CLIP − DINOv2 gap, largest first, ties by pair_id."""
    rows = pairs.to_pylist()
    rows.sort(key=lambda r: (-(float(r["clip_sim"]) - float(r["dino_sim"])), r["pair_id"]))
    return rows


def select_pairs(
    pairs: pa.Table,
    params: SelectParams,
    duplicate_group: Mapping[str, int] | None = None,
    cluster: Mapping[str, int] | None = None,
) -> tuple[pa.Table, dict[str, int]]:
    """The selected pairs (PAIRS schema, ranked by gap) and the count each filter dropped."""
    if params.max_per_image < 0 or params.target < 0:
        raise ValueError(f"mine.select.max_per_image and target must be ≥ 0, got {params}")
    group = duplicate_group or {}
    rows = rank(pairs)

    dropped_redundant = 0
    if params.drop_near_duplicate_pairs:
        seen: set[tuple[int | str, int | str]] = set()
        unique = []
        for r in rows:
            ga, gb = group.get(r["image_a"], r["image_a"]), group.get(r["image_b"], r["image_b"])
            key = (ga, gb) if str(ga) <= str(gb) else (gb, ga)
            if key in seen:
                dropped_redundant += 1
                continue
            seen.add(key)
            unique.append(r)
        rows = unique

    dropped_cap = 0
    if params.max_per_image > 0:
        used: dict[str, int] = defaultdict(int)
        capped = []
        for r in rows:
            if used[r["image_a"]] >= params.max_per_image or used[r["image_b"]] >= params.max_per_image:
                dropped_cap += 1
                continue
            used[r["image_a"]] += 1
            used[r["image_b"]] += 1
            capped.append(r)
        rows = capped

    dropped_target = 0
    if params.target > 0 and len(rows) > params.target:
        labels = cluster or {}
        queues: dict[int, list[dict]] = defaultdict(list)
        for r in rows:
            queues[labels.get(r["image_a"], -1)].append(r)
        order = sorted(queues, key=lambda c: (-_gap(queues[c][0]), c))  # best cluster first
        picked: list[dict] = []
        depth = 0
        while len(picked) < params.target:
            for c in order:
                if depth < len(queues[c]) and len(picked) < params.target:
                    picked.append(queues[c][depth])
            depth += 1
        dropped_target = len(rows) - len(picked)
        rows = sorted(picked, key=lambda r: (-_gap(r), r["pair_id"]))

    table = pa.Table.from_pylist(rows, schema=schemas.PAIRS) if rows else schemas.empty("pairs")
    counts = {
        "select_dropped_near_duplicate_pairs": dropped_redundant,
        "select_dropped_per_image_cap": dropped_cap,
        "select_dropped_over_target": dropped_target,
    }
    return table, counts


def _gap(row: dict) -> float:
    return float(row["clip_sim"]) - float(row["dino_sim"])

