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
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Iterator, Literal, Sequence

import numpy as np
import pyarrow as pa

from pipeline import embeddings, schemas
from pipeline.config import AtLeastOne, Cosine, CosineAbove, Count, Range, Seed, command_params
from pipeline.report import progress, summary, warn, write_metrics

STAGE = "search"

# Row indices into the images table rather than image ids: 16 bytes per candidate instead of
# ~150, which matters at 10^7+ candidates. The table's metadata holds the digest of the image
# ids it indexes, and readers refuse a table made for another images table.
CANDIDATES = schemas.register(
    "candidates",
    pa.schema(
        [
            pa.field("row_a", pa.int32(), nullable=False),  # row_a < row_b, rows of the images table
            pa.field("row_b", pa.int32(), nullable=False),
            pa.field("clip_sim", pa.float32(), nullable=False),
            pa.field("dino_sim", pa.float32(), nullable=False),
        ]
    ),
)

# One row per image: its near-duplicate group (the smallest row linked to it through pairs the
# guard dropped; its own row when none) and its k-means cluster over CLIP embeddings.
IMAGE_GROUPS = schemas.register(
    "image_groups",
    pa.schema(
        [
            pa.field("row", pa.int32(), nullable=False),
            pa.field("duplicate_group", pa.int32(), nullable=False),
            pa.field("cluster", pa.int32(), nullable=False),
        ]
    ),
)

ROW_GROUP_ROWS = 1 << 20
QUANTILE_GRID = np.round(np.linspace(0.0, 1.0, 1001), 3)
BF16_UNIT_ROUNDOFF = 2.0**-8  # bfloat16 keeps 8 significant bits
FP32_UNIT_ROUNDOFF = 2.0**-24


@dataclass(frozen=True)
class NearDuplicateGuard:
    """Drop (and count) candidates with CLIP cosine above `clip` AND DINOv2 cosine above `dino`."""

    clip: Cosine = 0.995
    dino: Cosine = 0.98


@dataclass(frozen=True)
class PartitionParams:
    """Partitioned mode: spherical k-means partitions, each vector also searched in its `probes` nearest other partitions."""

    partitions: AtLeastOne = 48
    probes: Count = 4
    train_size: AtLeastOne = 100_000  # vectors sampled to train the k-means centroids
    iterations: AtLeastOne = 20
    # a partition takes at most balance × the average number of members, and as many × the average visitors
    balance: Annotated[float, Range(1.0, meaning="a multiple of the average partition")] = 1.25
    recall_sample_rows: AtLeastOne = 1000  # at least this many rows' pairs are also searched exactly, to measure recall
    recall_max_rows: AtLeastOne = 20_000  # more rows, up to this many, until the recall's 95 % interval tells 0.99 from 0.95

    def __post_init__(self) -> None:
        if self.recall_sample_rows > self.recall_max_rows:
            raise ValueError(f"recall_sample_rows is {self.recall_sample_rows}, but it must be ≤ recall_max_rows "
                             f"({self.recall_max_rows}): change one of them in the params file")


@dataclass(frozen=True)
class SearchParams:
    """Params of the search stage (section `search`)."""

    recall_clip_threshold: CosineAbove = 0.9  # keep candidates down to here, so thresholds above it need no new products
    mode: Literal["exact", "partitioned"] = "exact"
    engine: Literal["local", "ray"] = "local"  # partitioned mode: run partitions as Ray tasks
    device: str = "cpu"  # torch device for the block products ("cuda" for a GPU)
    block_size: AtLeastOne = 4096
    threads: Count = 0  # torch threads; 0 keeps torch's default
    near_duplicate: NearDuplicateGuard = field(default_factory=NearDuplicateGuard)
    sample_pairs: Count = 200_000  # random pairs for the quantiles of both distributions
    clusters: AtLeastOne = 16  # k-means clusters over CLIP embeddings, for diverse selection
    seed: Seed = 0
    partition: PartitionParams = field(default_factory=PartitionParams)


@dataclass(frozen=True)
class PairChunk:
    """Pairs of row indices (i < j) with their exact similarity."""

    i: np.ndarray
    j: np.ndarray
    sim: np.ndarray

    @staticmethod
    def empty() -> "PairChunk":
        return PairChunk(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))

    @staticmethod
    def concat(chunks: Sequence["PairChunk"]) -> "PairChunk":
        if not chunks:
            return PairChunk.empty()
        return PairChunk(
            np.concatenate([c.i for c in chunks]), np.concatenate([c.j for c in chunks]), np.concatenate([c.sim for c in chunks])
        )

    def __len__(self) -> int:
        return len(self.i)


@dataclass
class SearchCounts:
    """What a search did: dot products computed (tiles in full) and candidates re-scored."""

    dot_products: int = 0
    rescored: int = 0
    near_duplicates: int = 0


def bf16_error_bound(max_norm: float, dim: int) -> float:
    """Largest possible |bf16 tile product − exact inner product| for vectors of norm ≤ `max_norm`.

    Each input rounds to bfloat16 (relative error ≤ u), products accumulate in float32 (≤ γ_dim
    whatever the order), and the output rounds to bfloat16 (≤ u), so the error is at most
    Σ|x_k y_k| · ((1+u)³(1+γ_dim) − 1) ≤ ‖x‖‖y‖ · ((1+u)³(1+γ_dim) − 1) (Cauchy–Schwarz).
    """
    gamma = dim * FP32_UNIT_ROUNDOFF / (1 - dim * FP32_UNIT_ROUNDOFF)
    return float(max_norm**2 * ((1 + BF16_UNIT_ROUNDOFF) ** 3 * (1 + gamma) - 1))


def max_norm(vectors: np.ndarray, chunk: int = 8192) -> float:
    """Largest row norm, computed a chunk at a time (a float32 copy of the matrix would double its memory)."""
    largest = 0.0
    for start in range(0, len(vectors), chunk):
        block = vectors[start : start + chunk].astype(np.float32)
        largest = max(largest, float(np.sqrt(np.einsum("nd,nd->n", block, block).max())))
    return largest


def pair_similarity(vectors: np.ndarray, i: np.ndarray, j: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """Inner product of rows i[k] and j[k], accumulated in float64 and returned as float32.

    Every pair's score depends only on its two rows, never on the batch it is computed in, so
    results do not change with block size, thread count or partitioning.
    """
    out = np.empty(len(i), dtype=np.float32)
    for start in range(0, len(i), chunk):
        a = vectors[i[start : start + chunk]].astype(np.float64)
        b = vectors[j[start : start + chunk]].astype(np.float64)
        out[start : start + chunk] = np.einsum("nd,nd->n", a, b)
    return out


class TileKernel:
    """Block products of two sets of vectors in bfloat16 on a torch device, with exact re-scoring.

    `hits` returns every pair whose exact inner product is strictly above `threshold`; bfloat16
    only decides which pairs are worth re-scoring, using a margin that provably covers its error.
    """

    def __init__(self, vectors: np.ndarray, block_size: int, device: str = "cpu") -> None:
        import torch

        if block_size < 1:
            raise ValueError(f"search.block_size must be a positive integer, got {block_size}")
        if vectors.ndim != 2:
            raise ValueError(f"expected a 2-d embedding matrix, got shape {vectors.shape}")
        self.torch = torch
        self.vectors = vectors
        self.block_size = block_size
        self.device = torch.device(device)
        if self.device.type == "cuda":
            # Reduced-precision reductions would break the error bound the margin relies on.
            torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
        self.margin = bf16_error_bound(max_norm(vectors) * (1 + 1e-6), vectors.shape[1])
        self.low = torch.from_numpy(np.ascontiguousarray(vectors)).to(self.device, torch.bfloat16)
        self._buffer = torch.empty(block_size * block_size, dtype=torch.bfloat16, device=self.device)
        self.counts = SearchCounts()

    def hits(self, rows: np.ndarray | slice, cols: np.ndarray | slice, threshold: float, upper: bool) -> PairChunk:
        """Pairs (rows[a], cols[b]) with exact product > threshold; with `upper`, only rows[a] < cols[b]."""
        torch = self.torch
        q = self.low[rows] if isinstance(rows, slice) else self.low[torch.from_numpy(rows).to(self.device)]
        k = self.low[cols] if isinstance(cols, slice) else self.low[torch.from_numpy(cols).to(self.device)]
        m, n = q.shape[0], k.shape[0]
        if m == 0 or n == 0:
            return PairChunk.empty()
        if m > self.block_size or n > self.block_size:
            raise ValueError(f"tile {m}x{n} exceeds block_size {self.block_size}")
        products = self._buffer[: m * n].view(m, n)
        torch.mm(q, k.T, out=products)
        self.counts.dot_products += m * n
        if upper and _same(rows, cols):
            products.diagonal().fill_(-2.0)  # a row's product with itself is no pair; keep it out of the row maxima
        low = threshold - self.margin
        # Only rows whose maximum clears the bar are looked at again; the rest of the work is
        # numpy on a zero-copy view, since small torch ops pay a thread-pool round trip each.
        row_max = products.amax(dim=1).float().cpu().numpy()
        candidate_rows = np.flatnonzero(row_max > low)
        if len(candidate_rows) == 0:
            return PairChunk.empty()
        bits = products.view(torch.int16).numpy() if products.device.type == "cpu" else None
        row_ids = _global(rows, m)
        col_ids = _global(cols, n)
        chunks = []
        # A tile of near-duplicates can hold block_size² hits: index them a few rows at a time.
        step = max(1, (1 << 21) // n)
        for start in range(0, len(candidate_rows), step):
            sel = candidate_rows[start : start + step]
            if bits is not None:
                sub_bits = bits[sel]
            else:
                sub_bits = products[torch.from_numpy(sel).to(self.device)].view(torch.int16).cpu().numpy()
            sub = (sub_bits.astype(np.int32) << 16).view(np.float32)  # bfloat16 → float32, exactly
            local_r, local_c = np.nonzero(sub > low)
            i = row_ids[sel[local_r]]
            j = col_ids[local_c]
            keep = i < j if upper else i != j
            i, j = i[keep], j[keep]
            sim = pair_similarity(self.vectors, i, j)
            self.counts.rescored += len(i)
            exact = sim > threshold
            chunks.append(PairChunk(i[exact], j[exact], sim[exact]))
        return PairChunk.concat(chunks)


def _same(rows: np.ndarray | slice, cols: np.ndarray | slice) -> bool:
    if isinstance(rows, slice) and isinstance(cols, slice):
        return rows == cols
    return rows is cols


def _global(ids: np.ndarray | slice, length: int) -> np.ndarray:
    if isinstance(ids, slice):
        return np.arange(ids.start, ids.start + length, dtype=np.int64)
    return ids.astype(np.int64, copy=False)


def exact_pairs(
    vectors: np.ndarray, threshold: float, block_size: int = 4096, device: str = "cpu", counts: SearchCounts | None = None
) -> Iterator[PairChunk]:
    """Every pair of rows (i < j) with inner product strictly above `threshold`, tile by tile.

    Tiles cover the upper triangle only; each yields its pairs with exact float scores.
    """
    n = vectors.shape[0]
    if n < 2:
        return
    kernel = TileKernel(vectors, block_size, device)
    starts = range(0, n, block_size)
    tiles = [(r, c) for r in starts for c in starts if c >= r]
    for r, c in progress(tiles, desc="search tiles", unit="tile"):
        chunk = kernel.hits(slice(r, min(r + block_size, n)), slice(c, min(c + block_size, n)), threshold, upper=True)
        if len(chunk):
            yield chunk
    if counts is not None:
        counts.dot_products += kernel.counts.dot_products
        counts.rescored += kernel.counts.rescored


def faiss_range_pairs(vectors: np.ndarray, threshold: float) -> PairChunk:
    """Reference: every pair (i < j) above `threshold` by an exhaustive float32 FAISS IndexFlatIP range search."""
    import faiss

    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = x.shape
    if n < 2:
        return PairChunk.empty()
    index = faiss.IndexFlatIP(dim)
    index.add(x)
    lims, sims, ids = index.range_search(x, threshold)
    queries = np.repeat(np.arange(n, dtype=np.int64), np.diff(lims).astype(np.int64))
    ids = ids.astype(np.int64)
    # range_search returns the query itself and each pair from both sides: keep i < j once.
    keep = (queries < ids) & (sims > threshold)
    return PairChunk(queries[keep], ids[keep], sims[keep].astype(np.float32))


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
        self.label = np.arange(n, dtype=np.int64)

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


def ids_digest(image_ids: Sequence[str]) -> str:
    """Digest of the ordered image ids a candidates table indexes."""
    return hashlib.sha256("\n".join(image_ids).encode()).hexdigest()


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
        from pipeline.partition import partitioned_pairs

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


def read_candidates(path: str | Path, image_ids: Sequence[str], columns: Sequence[str] | None = None) -> tuple[pa.Table, dict[str, Any]]:
    """The candidates table and its metadata, refusing one made for another images table."""
    meta = schemas.read_meta(path)
    if meta.get("images_sha256") != ids_digest(image_ids):
        raise schemas.SchemaError(
            f"{path} indexes another images table (different image ids or order): rerun the search stage"
        )
    table = schemas.read_table(path, "candidates")
    return (table.select(list(columns)) if columns else table), meta


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


def read_groups(path: str | Path, image_ids: Sequence[str]) -> pa.Table:
    """The image_groups table, refusing one made for another images table."""
    if schemas.read_meta(path).get("images_sha256") != ids_digest(image_ids):
        raise schemas.SchemaError(f"{path} belongs to another images table: rerun the search stage")
    return schemas.read_table(path, "image_groups")


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
    from pipeline.partition import RECALL_FIELDS, recall_against_exact, recall_rows  # partition imports this module

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
        if partitioned:
            metrics.update(recall_against_exact(clip, PairChunk.concat(watched), watch_rows, params.recall_clip_threshold,
                                                params.block_size, params.device, params.partition.recall_sample_rows))
        clip_sample, dino_sample = sample_similarities(clip, dino, params.sample_pairs, params.seed)
        writer.meta = {
            "images_sha256": ids_digest(image_ids),
            "encoders": {"clip": clip_desc, "dino": dino_desc},
            "search": {k: metrics[k] for k in ("images", "pairs_possible", "mode", "recall_clip_threshold", "candidates",
                                                "near_duplicates_dropped", "dot_products", *RECALL_FIELDS) if k in metrics},
            "near_duplicate": {"clip": params.near_duplicate.clip, "dino": params.near_duplicate.dino},
            "sample": {"pairs": int(len(clip_sample)), "seed": params.seed, "grid": [float(q) for q in QUANTILE_GRID],
                       "clip": quantile_table(clip_sample), "dino": quantile_table(dino_sample)},
        }
    clusters = kmeans_labels(clip, params.clusters, params.seed)[1] if n else np.zeros(0, np.int64)
    schemas.write_table(image_groups(groups, clusters), args.groups, "image_groups", meta={"images_sha256": ids_digest(image_ids)})
    random_init = [d["name"] for d in (clip_desc, dino_desc) if d.get("random_init")]
    metrics["random_init_encoders"] = random_init
    write_metrics(args.metrics, metrics)
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
    raise SystemExit(main())
