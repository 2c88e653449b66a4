"""mine: candidates → CLIP-blind pairs (CLIP cosine > t_clip, DINOv2 cosine < t_dino), then selection.

Inputs: the images table and the candidates table of the search stage; params section `mine`.
Outputs: the pairs table (unordered pairs, image_a < image_b, both similarities), with the
search mode and the resolved thresholds in its metadata.
Metrics (the funnel): images, pairs_possible, candidates (CLIP above the search's recall
threshold), near_duplicates_dropped (by the search's guard), clip_candidates (CLIP above the
threshold), dino_rejected, thresholded, then one count per selection filter and pairs
(candidates == clip_rejected + clip_candidates; clip_candidates == dino_rejected + thresholded;
thresholded == pairs + the selection drops);
the thresholds as given and as resolved, the search mode, random-weight encoders.

Thresholds are given as a cosine (`0.95` or `{value: 0.95}`) or as a quantile of the
similarity over all pairs (`{quantile: 0.9999}`), for encoders whose similarity ranges differ
from the paper's. The CLIP quantile is exact (counted from the candidates); the DINOv2
quantile comes from the search's seeded random sample of pairs. No product is recomputed:
a threshold change reruns this stage only.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.core import schemas
from pipeline.core.config import command_params
from pipeline.core.report import summary, warn, write_headline, write_metrics
from pipeline.mining.candidates import CandidatesMeta, read_candidates, read_groups
from pipeline.mining.selection import select_pairs
from pipeline.mining.thresholds import ThresholdError, describe, resolve_clip_threshold, resolve_dino_threshold
from pipeline.params import MineParams

STAGE = "mine"


def check_guard(dino_threshold: float, meta: CandidatesMeta) -> None:
    """Refuse a DINOv2 threshold that near-duplicates dropped by the search could have passed."""
    guard_dino = meta.near_duplicate.dino
    if dino_threshold > guard_dino and meta.near_duplicates_dropped > 0:
        raise ThresholdError(
            f"mine.dino_threshold {dino_threshold} is above search.near_duplicate.dino {guard_dino}: pairs the "
            "near-duplicate guard dropped could pass it; raise the guard above the threshold and rerun the search"
        )


def mine(
    image_ids: Sequence[str], candidates: pa.Table, meta: CandidatesMeta, params: MineParams, groups: pa.Table | None = None
) -> tuple[pa.Table, dict[str, Any]]:
    """CLIP-blind pairs among the candidates, after thresholds and selection; the pairs table and funnel metrics.

    `groups` (an image_groups table) gives each image's near-duplicate group and cluster for selection.
    """
    clip_sims = candidates.column("clip_sim").to_numpy()
    dino_sims = candidates.column("dino_sim").to_numpy()
    t_clip = resolve_clip_threshold(params.clip_threshold, clip_sims, meta)
    t_dino = resolve_dino_threshold(params.dino_threshold, meta)
    check_guard(t_dino, meta)
    above = clip_sims > t_clip
    passing = above & (dino_sims < t_dino)
    rows_a = candidates.column("row_a").to_numpy()[passing]
    rows_b = candidates.column("row_b").to_numpy()[passing]
    ids = np.asarray(image_ids, dtype=object)
    a, b = ids[rows_a], ids[rows_b]
    first = np.where(a < b, a, b).tolist()
    second = np.where(a < b, b, a).tolist()
    rows = sorted(zip(first, second, clip_sims[passing].tolist(), dino_sims[passing].tolist()))
    thresholded = pa.table(
        {
            "pair_id": pa.array([schemas.pair_id(x, y) for x, y, _, _ in rows], pa.string()),
            "image_a": pa.array([r[0] for r in rows], pa.string()),
            "image_b": pa.array([r[1] for r in rows], pa.string()),
            "clip_sim": pa.array([r[2] for r in rows], pa.float32()),
            "dino_sim": pa.array([r[3] for r in rows], pa.float32()),
        },
        schema=schemas.PAIRS,
    )
    duplicate_group, cluster = None, None
    if groups is not None:
        rows = groups.column("row").to_numpy()
        duplicate_group = dict(zip(ids[rows].tolist(), groups.column("duplicate_group").to_pylist()))
        cluster = dict(zip(ids[rows].tolist(), groups.column("cluster").to_pylist()))
    table, select_metrics = select_pairs(thresholded, params.select, duplicate_group, cluster)
    search = meta.search
    metrics = {
        "images": len(image_ids),
        "pairs_possible": meta.pairs_possible,
        "search": "exhaustive" if search["mode"] == "exact" else search["mode"],
        "recall_clip_threshold": meta.recall_clip_threshold,
        "candidates": candidates.num_rows,
        "near_duplicates_dropped": meta.near_duplicates_dropped,
        "clip_rejected": int((~above).sum()),  # candidates at or below the CLIP threshold
        "clip_candidates": int(above.sum()),
        "dino_rejected": int((above & ~passing).sum()),
        "thresholded": thresholded.num_rows,
        **select_metrics,
        "pairs": table.num_rows,
        **{k: search[k] for k in ("recall_against_exact", "recall_sample_rows", "recall_sample_pairs") if k in search},
        "clip_threshold": t_clip,
        "dino_threshold": t_dino,
        "clip_threshold_given": describe(params.clip_threshold),
        "dino_threshold_given": describe(params.dino_threshold),
    }
    return table, metrics


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: `python -m pipeline.mine --images T --candidates C --pairs OUT --metrics M`."""
    parser = argparse.ArgumentParser(prog="clipblind mine", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--images", required=True)
    parser.add_argument("--candidates", required=True, help="candidates table written by the search stage")
    parser.add_argument("--groups", required=True, help="image_groups table written by the search stage")
    parser.add_argument("--pairs", required=True)
    parser.add_argument("--metrics", required=True)
    parser.add_argument("--headline", help="output headline metrics JSON (what `dvc metrics show` lists: report.HEADLINES)")
    args = parser.parse_args(argv)
    params = command_params(parser, args.params, STAGE, MineParams)
    image_ids = schemas.read_table(args.images, "images").column("image_id").to_pylist()
    candidates, meta = read_candidates(args.candidates, image_ids)
    groups = read_groups(args.groups, image_ids)
    table, metrics = mine(image_ids, candidates, meta, params, groups)
    encoders = meta.encoders
    random_init = [d["name"] for d in encoders.values() if d.get("random_init")]
    metrics["random_init_encoders"] = random_init
    if random_init:
        warn(STAGE, f"pairs come from RANDOMLY INITIALISED encoders ({', '.join(random_init)})")
    # The data card states how the pairs were searched (exact, or partitioned with its measured recall).
    pairs_meta = {"encoders": encoders, "search_details": meta.search,
                  **{k: metrics[k] for k in ("search", "clip_threshold", "dino_threshold")}}
    schemas.write_table(table, args.pairs, "pairs", meta=pairs_meta)
    write_metrics(args.metrics, metrics)
    write_headline(args.headline, STAGE, metrics)
    summary(
        STAGE,
        f"{metrics['images']} images, {metrics['pairs_possible']} possible pairs → {metrics['clip_candidates']} with "
        f"CLIP > {metrics['clip_threshold']:.4f} → {metrics['thresholded']} with DINOv2 < {metrics['dino_threshold']:.4f} "
        f"→ {metrics['pairs']} selected ({metrics['search']})",
    )
    return 0


if __name__ == "__main__":
    from pipeline.core.errors import run_command

    raise SystemExit(run_command(main, "mine"))
