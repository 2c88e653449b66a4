"""search: CLIP and DINOv2 embeddings → every candidate pair above a recall threshold, streamed to disk.

Inputs: the images table and both embedding directories; params section `search`.
Outputs: the candidates table (kind `candidates`): every unordered pair of images whose CLIP
cosine is strictly above `recall_clip_threshold`, with its CLIP and DINOv2 cosines, minus the
near-duplicates the guard drops. Its metadata holds the quantiles of both similarity
distributions over all pairs (from a seeded random sample) so thresholds can be given as
quantiles and chosen again without recomputing a single product. The image_groups table: per
image, its near-duplicate group (linked through pairs the guard dropped) and its k-means
cluster over CLIP embeddings, for pair selection.
Metrics: images, pairs_possible, dot_products, rescored, candidates, near_duplicates_dropped
(candidates + near_duplicates_dropped == pairs_above_recall_threshold), mode; in
partitioned mode also recall_against_exact on a seeded sample of rows, with its Wilson 95 %
interval and whether the sample was large enough to tell 0.99 from 0.95.

Exact mode computes the upper triangle of the CLIP similarity matrix in tiles of
`block_size` × `block_size` in bfloat16 (tiled in both dimensions, so memory stays flat in N),
keeps every product above the threshold minus a proven error bound of bfloat16 arithmetic,
and re-scores those candidates exactly from the stored float16 vectors (float64 accumulation).
The result is the pair set of an exhaustive float32 FAISS `IndexFlatIP` range search at the
same threshold; a pair can only differ if its cosine lies within float32 rounding (~1e-7) of
the threshold. The tile code is plain torch and runs on any torch device (`device: cuda` puts
the products on a GPU); the same code runs and is tested on CPU.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.core import schemas
from pipeline.core.config import command_params
from pipeline.core.report import summary, warn, write_headline, write_metrics
from pipeline.core.schemas import CANDIDATES, IMAGE_GROUPS
from pipeline.embedding import store as embeddings
from pipeline.mining.candidates import ROW_GROUP_ROWS, SEARCH_FIELDS, CandidatesMeta, SimilaritySample, ids_digest
from pipeline.mining.partitions import RECALL_FIELDS, partitioned_pairs, recall_against_exact, recall_rows
from pipeline.mining.tiles import PairChunk, SearchCounts, exact_pairs, pair_similarity
from pipeline.params import SearchParams

STAGE = "search"


QUANTILE_GRID = np.round(np.linspace(0.0, 1.0, 1001), 3)


def sample_similarities(clip: np.ndarray, dino: np.ndarray, n_pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """CLIP and DINOv2 cosines of `n_pairs` distinct-row pairs drawn uniformly at random (seeded)."""
    n = clip.shape[0]
    if n < 2 or n_pairs <= 0:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, size=n_pairs)
    j = (i + rng.integers(1, n, size=n_pairs)) % n  # never i itself
    return pair_similarity(clip, i, j), pair_similarity(dino, i, j)


def quantile_table(values: np.ndarray) -> list[float]:
    """Values at QUANTILE_GRID (0, 0.001, …, 1) of a sample; empty for an empty sample."""
    if len(values) == 0:
        return []
    return [round(float(v), 6) for v in np.quantile(values.astype(np.float64), QUANTILE_GRID)]


class NearDuplicateGroups:
    """Connected components of the near-duplicate relation, merged chunk by chunk in O(N) memory.

    Each row's label is the smallest row of its component, so labels are deterministic.
    """

    def __init__(self, n: int) -> None:
        self.label: np.ndarray = np.arange(n, dtype=np.int64)

    def merge(self, i: np.ndarray, j: np.ndarray) -> None:
        """Link rows i[k] and j[k]."""
        label = self.label
        while len(i):
            li, lj = label[i], label[j]
            differ = li != lj
            if not differ.any():
                break
            i, j, li, lj = i[differ], j[differ], li[differ], lj[differ]
            np.minimum.at(label, np.maximum(li, lj), np.minimum(li, lj))
            while True:  # compress until every row points at its component's smallest row
                jumped = label[label]
                if np.array_equal(jumped, label):
                    break
                label = jumped
            self.label = label


def kmeans_labels(vectors: np.ndarray, k: int, seed: int, train_size: int = 100_000, iterations: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Centroids (k', dim) and each row's nearest-centroid label, by FAISS k-means on a seeded sample."""
    import faiss

    n, dim = vectors.shape
    k = max(1, min(k, n))
    rng = np.random.default_rng(seed)
    train = vectors[np.sort(rng.choice(n, size=min(n, max(train_size, k)), replace=False))].astype(np.float32)
    kmeans = faiss.Kmeans(dim, k, niter=iterations, seed=seed, verbose=False, min_points_per_centroid=1)
    kmeans.train(train)
    labels = np.empty(n, dtype=np.int64)
    step = 65536
    for start in range(0, n, step):
        _, assigned = kmeans.index.search(vectors[start : start + step].astype(np.float32), 1)
        labels[start : start + step] = assigned[:, 0]
    assert kmeans.centroids is not None  # set by train()
    return kmeans.centroids.copy(), labels


def image_groups(groups: NearDuplicateGroups, clusters: np.ndarray) -> pa.Table:
    """The image_groups table from the merged near-duplicate components and cluster labels."""
    n = len(clusters)
    return pa.table(
        {
            "row": pa.array(np.arange(n, dtype=np.int32)),
            "duplicate_group": pa.array(groups.label.astype(np.int32)),
            "cluster": pa.array(clusters.astype(np.int32)),
        },
        schema=IMAGE_GROUPS,
    )


def find_candidates(
    clip: np.ndarray, dino: np.ndarray, params: SearchParams, counts: SearchCounts, groups: NearDuplicateGroups,
    watch_rows: np.ndarray | None = None, watched: list[PairChunk] | None = None,
) -> Iterator[pa.Table]:
    """Candidate tables (CANDIDATES schema) of all pairs with CLIP cosine > the recall threshold, chunk by chunk.

    Near-duplicates (both cosines above the guard) are not emitted: they are counted in
    `counts.near_duplicates` and merged into `groups`. Pairs touching `watch_rows` are also
    appended to `watched`, before the guard (to measure recall).
    """
    if clip.shape[0] != dino.shape[0]:
        raise ValueError(f"embeddings not row-aligned: clip {clip.shape}, dino {dino.shape}")
    if params.mode == "exact":
        chunks: Iterator[PairChunk] = exact_pairs(clip, params.recall_clip_threshold, params.block_size, params.device, counts)
    else:
        chunks = partitioned_pairs(clip, params.recall_clip_threshold, params, counts)
    guard = params.near_duplicate
    watch = np.zeros(clip.shape[0], dtype=bool)
    if watch_rows is not None:
        watch[watch_rows] = True
    for chunk in chunks:
        if watched is not None:
            touching = watch[chunk.i] | watch[chunk.j]
            watched.append(PairChunk(chunk.i[touching], chunk.j[touching], chunk.sim[touching]))
        dino_sim = pair_similarity(dino, chunk.i, chunk.j)
        near_dup = (chunk.sim > guard.clip) & (dino_sim > guard.dino)
        counts.near_duplicates += int(near_dup.sum())
        groups.merge(chunk.i[near_dup], chunk.j[near_dup])
        keep = ~near_dup
        yield pa.table(
            {
                "row_a": pa.array(chunk.i[keep].astype(np.int32)),
                "row_b": pa.array(chunk.j[keep].astype(np.int32)),
                "clip_sim": pa.array(chunk.sim[keep]),
                "dino_sim": pa.array(dino_sim[keep]),
            },
            schema=CANDIDATES,
        )


def search_metrics(n: int, params: SearchParams, counts: SearchCounts, written: int) -> dict[str, Any]:
    """The search stage's metrics: candidates + near_duplicates_dropped == pairs_above_recall_threshold.

    Only figures the inputs and params determine: the metrics are tracked in git, so a rerun on
    the same inputs writes the same bytes (the wall time goes to the console).
    """
    return {
        "images": n,
        "pairs_possible": n * (n - 1) // 2,
        "mode": params.mode,
        "recall_clip_threshold": params.recall_clip_threshold,
        "dot_products": counts.dot_products,
        "rescored": counts.rescored,
        "pairs_above_recall_threshold": written + counts.near_duplicates,
        "candidates": written,
        "near_duplicates_dropped": counts.near_duplicates,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: `python -m pipeline.search --images T --clip DIR --dino DIR --candidates OUT --groups OUT --metrics M`."""
    parser = argparse.ArgumentParser(prog="clipblind search", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--images", required=True)
    parser.add_argument("--clip", required=True)
    parser.add_argument("--dino", required=True)
    parser.add_argument("--candidates", required=True, help="output candidates table")
    parser.add_argument("--groups", required=True, help="output image_groups table (near-duplicate groups, clusters)")
    parser.add_argument("--metrics", required=True)
    parser.add_argument("--headline", help="output headline metrics JSON (what `dvc metrics show` lists: report.HEADLINES)")
    args = parser.parse_args(argv)
    params = command_params(parser, args.params, STAGE, SearchParams)
    if params.threads > 0:
        import torch

        torch.set_num_threads(params.threads)
    image_ids = schemas.read_table(args.images, "images").column("image_id").to_pylist()
    clip, clip_desc = embeddings.load(args.clip, image_ids)
    dino, dino_desc = embeddings.load(args.dino, image_ids)
    n = len(image_ids)
    started = time.perf_counter()
    counts = SearchCounts()
    groups = NearDuplicateGroups(n)
    written = 0
    partitioned = params.mode == "partitioned"
    watch_rows = None
    watched: list[PairChunk] = []
    if partitioned:
        watch_rows = recall_rows(n, params.partition.recall_max_rows, params.seed)
    with schemas.open_writer(args.candidates, "candidates") as writer:
        pending: list[pa.Table] = []  # tiles yield few pairs each: gather them into row groups of ~1M rows
        for table in find_candidates(clip, dino, params, counts, groups, watch_rows, watched):
            pending.append(table)
            written += table.num_rows
            if sum(t.num_rows for t in pending) >= ROW_GROUP_ROWS:
                writer.write(pa.concat_tables(pending))
                pending = []
        if pending or written == 0:
            writer.write(pa.concat_tables(pending) if pending else CANDIDATES.empty_table())
        seconds = time.perf_counter() - started
        metrics = search_metrics(n, params, counts, written)
        if partitioned and watch_rows is not None:
            metrics.update(recall_against_exact(clip, PairChunk.concat(watched), watch_rows, params.recall_clip_threshold,
                                                params.block_size, params.device, params.partition.recall_sample_rows))
        clip_sample, dino_sample = sample_similarities(clip, dino, params.sample_pairs, params.seed)
        writer.meta = CandidatesMeta(
            images_sha256=ids_digest(image_ids),
            encoders={"clip": clip_desc, "dino": dino_desc},
            search={k: metrics[k] for k in (*SEARCH_FIELDS, *RECALL_FIELDS) if k in metrics},
            near_duplicate=params.near_duplicate,
            sample=SimilaritySample(pairs=int(len(clip_sample)), seed=params.seed, grid=tuple(float(q) for q in QUANTILE_GRID),
                                    clip=tuple(quantile_table(clip_sample)), dino=tuple(quantile_table(dino_sample))),
        ).to_footer()
    clusters = kmeans_labels(clip, params.clusters, params.seed)[1] if n else np.zeros(0, np.int64)
    schemas.write_table(image_groups(groups, clusters), args.groups, "image_groups", meta={"images_sha256": ids_digest(image_ids)})
    random_init = [d["name"] for d in (clip_desc, dino_desc) if d.get("random_init")]
    metrics["random_init_encoders"] = random_init
    write_metrics(args.metrics, metrics)
    write_headline(args.headline, STAGE, metrics)
    if random_init:
        warn(STAGE, f"candidates come from RANDOMLY INITIALISED encoders ({', '.join(random_init)})")
    summary(
        STAGE,
        f"{n} images, {metrics['pairs_possible']} possible pairs → {written} candidates with CLIP > "
        f"{params.recall_clip_threshold} ({counts.near_duplicates} near-duplicates dropped; {params.mode}, "
        f"{seconds:.2f} s, {counts.dot_products / max(1, metrics['pairs_possible']):.2f} dot products per pair)",
    )
    return 0


if __name__ == "__main__":
    from pipeline.core.errors import run_command

    raise SystemExit(run_command(main, "search"))
