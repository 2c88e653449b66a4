"""Partitioned search, for corpora whose O(N²) does not fit one machine.

FAISS k-means splits the CLIP vectors into `partitions`; every vector belongs to its nearest
partition (its core) and also visits its `probes` nearest other partitions, so pairs across a
partition border are found when one side visits the other's partition. A partition is an
independent task: the upper triangle of core × core plus visitors × core, with the same tile
kernel as exact mode (so every pair it reports is exact). Tasks run in-process or as Ray tasks
(`search.engine: ray`). A pair two partitions could both find is kept once, by a rule each
task applies alone (no global de-duplication).

Cost for N vectors, P balanced partitions and p probes: N²/(2P) + p·N²/P dot products instead
of N²/2, i.e. a share (1 + 2p)/P of exact mode; memory per task is the partition's vectors.
Recall is not guaranteed: `recall_against_exact` measures it on a seeded sample of rows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np

from pipeline.report import progress
from pipeline.search import PairChunk, SearchCounts, SearchParams, TileKernel, kmeans_labels


@dataclass(frozen=True)
class PartitionPlan:
    """Each row's own partition and the partitions it visits."""

    centroids: np.ndarray  # (P, dim)
    label: np.ndarray  # (N,) own partition
    probes: np.ndarray  # (N, p) nearest other partitions


def plan_partitions(vectors: np.ndarray, partitions: int, probes: int, seed: int, train_size: int, iterations: int) -> PartitionPlan:
    """k-means partitions of `vectors` and, per row, its nearest partition and `probes` next nearest."""
    import faiss

    centroids, _ = kmeans_labels(vectors, partitions, seed, train_size, iterations)
    k = centroids.shape[0]
    probes = min(probes, k - 1)
    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(centroids.astype(np.float32))
    nearest = np.empty((len(vectors), probes + 1), dtype=np.int64)
    step = 65536
    for start in range(0, len(vectors), step):
        _, nearest[start : start + step] = index.search(vectors[start : start + step].astype(np.float32), probes + 1)
    return PartitionPlan(centroids, nearest[:, 0].copy(), nearest[:, 1:].copy())


def search_partition(local: np.ndarray, n_core: int, threshold: float, block_size: int, device: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """One partition's task: pairs among `local[:n_core]` (upper triangle) and between the rest and the core.

    Returns local row indices (i, j), exact similarities, and the dot products computed.
    """
    kernel = TileKernel(local, block_size, device)
    chunks = []
    core_blocks = [np.arange(s, min(s + block_size, n_core)) for s in range(0, n_core, block_size)]
    visitor_blocks = [np.arange(s, min(s + block_size, len(local))) for s in range(n_core, len(local), block_size)]
    for a, rows in enumerate(core_blocks):
        for cols in core_blocks[a:]:
            chunks.append(kernel.hits(rows, cols, threshold, upper=True))  # cols is rows on the diagonal
    for rows in visitor_blocks:
        for cols in core_blocks:
            chunks.append(kernel.hits(rows, cols, threshold, upper=False))
    found = PairChunk.concat(chunks)
    return found.i, found.j, found.sim, kernel.counts.dot_products


def _tasks(plan: PartitionPlan) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """(partition, core rows, visitor rows) for every partition, rows ascending."""
    order = np.argsort(plan.label, kind="stable")
    bounds = np.searchsorted(plan.label[order], np.arange(plan.centroids.shape[0] + 1))
    visiting_rows = np.repeat(np.arange(len(plan.label)), plan.probes.shape[1])
    visited = plan.probes.reshape(-1)
    v_order = np.argsort(visited, kind="stable")
    v_bounds = np.searchsorted(visited[v_order], np.arange(plan.centroids.shape[0] + 1))
    return [
        (q, order[bounds[q] : bounds[q + 1]], visiting_rows[v_order[v_bounds[q] : v_bounds[q + 1]]])
        for q in range(plan.centroids.shape[0])
    ]


def _keep_once(plan: PartitionPlan, q: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Whether partition q keeps each pair: a pair found from both sides is kept by the lower partition."""
    own_i, own_j = plan.label[i], plan.label[j]
    cross = own_i != own_j
    core = np.where(own_i == q, i, j)  # the member of partition q
    other = np.where(own_i == q, own_j, own_i)  # the visitor's partition
    core_visits_other = (plan.probes[core] == other[:, None]).any(axis=1)
    return ~(cross & core_visits_other & (other < q))


def partitioned_pairs(vectors: np.ndarray, threshold: float, params: SearchParams, counts: SearchCounts) -> Iterator[PairChunk]:
    """Pairs (i < j) above `threshold` found by partitioned search, partition by partition."""
    p = params.partition
    plan = plan_partitions(vectors, p.partitions, p.probes, params.seed, p.train_size, p.iterations)
    tasks = _tasks(plan)
    if params.engine == "ray":
        results: Iterator[tuple[int, np.ndarray, tuple]] = _run_on_ray(vectors, tasks, threshold, params)
    else:
        results = (
            (q, np.concatenate([core, visitors]), search_partition(vectors[np.concatenate([core, visitors])], len(core),
                                                                    threshold, params.block_size, params.device))
            for q, core, visitors in progress(tasks, desc="partitions", unit="part")
        )
    for q, members, (li, lj, sim, dots) in results:
        counts.dot_products += int(dots)
        gi, gj = members[li], members[lj]
        i, j = np.minimum(gi, gj), np.maximum(gi, gj)
        keep = _keep_once(plan, q, i, j)
        if keep.any():
            yield PairChunk(i[keep], j[keep], sim[keep])


def _run_on_ray(vectors: np.ndarray, tasks: Sequence[tuple[int, np.ndarray, np.ndarray]], threshold: float, params: SearchParams) -> Iterator[tuple[int, np.ndarray, tuple]]:
    try:
        import ray
    except ImportError as err:
        raise ImportError("search.engine: ray needs Ray: pip install 'clipblind[ray]'") from err
    started_here = not ray.is_initialized()
    if started_here:
        # Bound to 127.0.0.1 (Ray listens on every interface by default).
        ray.init(include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    try:
        remote = ray.remote(num_cpus=1)(search_partition)
        pending = {}
        for q, core, visitors in tasks:
            members = np.concatenate([core, visitors])
            ref = remote.remote(vectors[members], len(core), threshold, params.block_size, params.device)
            pending[ref] = (q, members)
        for ref in list(pending):  # in task order, so output order does not depend on timing
            q, members = pending[ref]
            yield q, members, ray.get(ref)
    finally:
        if started_here:
            ray.shutdown()


def recall_rows(n: int, sample_rows: int, seed: int) -> np.ndarray:
    """The seeded sample of rows on which recall against exact mode is measured."""
    return np.sort(np.random.default_rng(seed).choice(n, size=min(n, sample_rows), replace=False))


def recall_against_exact(vectors: np.ndarray, found: PairChunk, rows: np.ndarray, threshold: float, block_size: int, device: str = "cpu") -> dict[str, Any]:
    """Share of exact mode's pairs touching `rows` that `found` (pairs touching `rows`) contains."""
    n = len(vectors)
    kernel = TileKernel(vectors, block_size, device)
    truth = []
    for start in range(0, len(rows), block_size):
        block = rows[start : start + block_size]
        for c in range(0, n, block_size):
            truth.append(kernel.hits(block, np.arange(c, min(c + block_size, n)), threshold, upper=False))
    exact = PairChunk.concat(truth)
    true_pairs = set(zip(np.minimum(exact.i, exact.j).tolist(), np.maximum(exact.i, exact.j).tolist()))
    got = set(zip(found.i.tolist(), found.j.tolist()))
    return {
        "recall_sample_rows": int(len(rows)),
        "recall_sample_pairs": len(true_pairs),
        "recall_against_exact": round(len(true_pairs & got) / len(true_pairs), 6) if true_pairs else None,
    }


def straddling_pairs(vectors: np.ndarray, plan: PartitionPlan, count: int, rows: np.ndarray, low: float, high: float, seed: int) -> np.ndarray:
    """Overwrite pairs of `rows` in place with pairs at cosines in [low, high] whose members lie in different partitions.

    Returns the (count, 2) row pairs planted. Used by the benchmark and the tests.
    """
    import faiss

    rng = np.random.default_rng(seed)
    dim = vectors.shape[1]
    index = faiss.IndexFlatL2(dim)
    index.add(plan.centroids.astype(np.float32))
    planted: list[tuple[np.ndarray, np.ndarray]] = []
    while sum(len(a) for a, _ in planted) < count:
        a = rng.standard_normal((4 * count, dim))
        a /= np.linalg.norm(a, axis=1, keepdims=True)
        noise = rng.standard_normal(a.shape)
        noise -= (noise * a).sum(axis=1, keepdims=True) * a
        noise /= np.linalg.norm(noise, axis=1, keepdims=True)
        cos = rng.uniform(low, high, size=(len(a), 1))
        b = cos * a + np.sqrt(1 - cos**2) * noise
        la = index.search(a.astype(vectors.dtype).astype(np.float32), 1)[1][:, 0]
        lb = index.search(b.astype(vectors.dtype).astype(np.float32), 1)[1][:, 0]
        straddle = la != lb
        planted.append((a[straddle], b[straddle]))
    a = np.concatenate([p[0] for p in planted])[:count]
    b = np.concatenate([p[1] for p in planted])[:count]
    where = rows[: 2 * count].reshape(count, 2)
    vectors[where[:, 0]] = a
    vectors[where[:, 1]] = b
    return where


def measure_partitioned(n: int, dim: int, threshold: float, block_size: int, seed: int, partitions: int = 48, probes: int = 4) -> dict[str, Any]:
    """Recall and dot-product share of partitioned vs exact mode on uniform vectors with border-straddling pairs."""
    from pipeline.search import NearDuplicateGuard, PartitionParams, exact_pairs

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x = x.astype(np.float16)
    train_size = max(partitions * 40, n // 4)
    params = SearchParams(
        recall_clip_threshold=threshold, mode="partitioned", block_size=block_size, seed=seed,
        near_duplicate=NearDuplicateGuard(), partition=PartitionParams(partitions, probes, train_size, 20),
    )
    plan = plan_partitions(x, partitions, probes, seed, train_size, 20)
    # k-means trains on a seeded sample of rows: plant only outside it, so the partitions stay the same.
    train_rows = set(np.random.default_rng(seed).choice(n, size=min(n, max(train_size, partitions)), replace=False).tolist())
    free = np.array([r for r in rng.permutation(n).tolist() if r not in train_rows])
    planted = straddling_pairs(x, plan, min(500, len(free) // 2), free, threshold + 0.001, 0.99, seed)
    exact_counts, part_counts = SearchCounts(), SearchCounts()
    started = time.perf_counter()
    exact = PairChunk.concat(list(exact_pairs(x, threshold, block_size, counts=exact_counts)))
    exact_seconds = time.perf_counter() - started
    started = time.perf_counter()
    part = PairChunk.concat(list(partitioned_pairs(x, threshold, params, part_counts)))
    part_seconds = time.perf_counter() - started
    exact_set = set(zip(exact.i.tolist(), exact.j.tolist()))
    part_set = set(zip(part.i.tolist(), part.j.tolist()))
    after = plan_partitions(x, partitions, probes, seed, train_size, 20)
    straddling = int((after.label[planted[:, 0]] != after.label[planted[:, 1]]).sum())
    return {
        "n": n,
        "dim": dim,
        "partitions": partitions,
        "probes": probes,
        "planted_pairs": int(len(planted)),
        "planted_straddling": straddling,
        "exact_pairs": len(exact_set),
        "partitioned_pairs": len(part_set),
        "partitioned_only": len(part_set - exact_set),
        "recall": round(len(exact_set & part_set) / max(1, len(exact_set)), 6),
        "exact_dot_products": exact_counts.dot_products,
        "partitioned_dot_products": part_counts.dot_products,
        "dot_product_share": round(part_counts.dot_products / exact_counts.dot_products, 4),
        "exact_seconds": round(exact_seconds, 2),
        "partitioned_seconds": round(part_seconds, 2),
    }


def report_partitioned(result: dict[str, Any]) -> list[str]:
    """Lines comparing partitioned mode's recall and cost with the targets (≥ 99 % recall, ≤ 25 % of the products)."""
    ok_recall = result["recall"] >= 0.99
    ok_share = result["dot_product_share"] <= 0.25
    return [
        f"partitioned search, N = {result['n']:,} × {result['dim']}, {result['partitions']} partitions, "
        f"{result['probes']} probes; {result['planted_straddling']} of {result['planted_pairs']} planted pairs straddle a border",
        f"  recall vs exact      {result['recall']:.4f} ({result['exact_pairs']} exact pairs; ≥ 0.99: "
        f"{'meets target' if ok_recall else 'MISSES target'})",
        f"  dot products         {result['dot_product_share']:.3f} of exact mode's (≤ 0.25: "
        f"{'meets target' if ok_share else 'MISSES target'})",
        f"  time                 {result['partitioned_seconds']:.2f} s vs exact {result['exact_seconds']:.2f} s",
    ]
