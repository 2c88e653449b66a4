"""Partitioned search, for corpora whose O(N²) does not fit one machine.

Partitions live on the sphere, where the vectors do: spherical k-means (FAISS, unit
centroids) on a seeded sample, and every vector ranks the partitions by the inner product of
its vector with their centroids. A vector belongs to one partition (its core) and visits
`probes` others, so pairs across a partition border are found when one side visits the other's
partition. Partitions are kept balanced: each takes at most `balance`·N/P members and
`balance`·p·N/P visitors; where more vectors want a partition than it has room for, those
most similar to its centroid win and the others take their next choice (a vector turned away
as a member may still visit the partition). So no centroid becomes a hub that every vector
visits, and a task outgrows its share of memory only by the few vectors that find every
partition they may visit full.

A partition is an independent task: the upper triangle of core × core plus visitors × core,
with the same tile kernel as exact mode (so every pair it reports is exact). Tasks run
in-process or as Ray tasks (`search.engine: ray`). A pair two partitions could both find is
kept once, by a rule each task applies alone (no global de-duplication).

Cost model, which the code follows: a task with c members and v visitors splits its core into
k = max(CORE_TILES, ⌈c / block_size⌉) blocks and computes each block against the core rows up
to the block's end, (c² + Σ block²)/2 ≈ (1 + 1/k)·c²/2 dot products (the upper triangle; only
the diagonal blocks are computed whole), plus v·c for the visitors. For N vectors, P balanced
partitions and p probes that is (1 + 1/k + 2p)·N²/(2P), a share (1 + 1/k + 2p)/P of the
N²/2 pairs (exact mode computes N²/2·(1 + block_size/N): `model_share` is the ratio of the
two); memory per task (1 + p)·N/P vectors (`model_task_rows`). Recall is not guaranteed:
`recall_against_exact` measures it on a seeded sample of rows, with its Wilson 95 % interval.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.core.report import progress
from pipeline.mining.tiles import PairChunk, SearchCounts, TileKernel
from pipeline.params import PartitionParams, SearchParams

# A core is split into at least this many column blocks: its diagonal blocks are computed
# whole, which adds 1/CORE_TILES to the half square; more, narrower blocks would waste fewer
# products but run the matmul less efficiently.
CORE_TILES = 4
# Partitions ranked per vector at first; rows turned away by full partitions rank deeper.
RANK_DEPTH = 16
# A recall sample must tell these two recalls apart (its 95 % interval may not hold both).
RECALL_LEVELS = (0.95, 0.99)
WILSON_Z = 1.959963984540054  # two-sided 95 %
# What a recall measurement reports: in metrics/search.json, the candidates' and pairs' metadata.
RECALL_FIELDS = ("recall_against_exact", "recall_interval", "recall_sample_rows", "recall_sample_pairs",
                 "recall_sample_sufficient")


@dataclass(frozen=True)
class PartitionPlan:
    """Each row's own partition and the partitions it visits."""

    centroids: np.ndarray  # (P, dim), unit rows
    label: np.ndarray  # (N,) own partition
    probes: np.ndarray  # (N, p) other partitions visited, most similar first


def model_share(n: int, partitions: int, probes: int, block_size: int) -> float:
    """Partitioned mode's dot products over exact mode's, on P balanced partitions of N/P members and p·N/P visitors.

    Partitioned: P·(N/P)²·((1 + 1/k)/2 + p), k = max(CORE_TILES, ⌈N/(P·block_size)⌉) core blocks.
    Exact mode computes its diagonal tiles whole too: (N² + Σ tile side²)/2 ≈ N²/2·(1 + block_size/N).
    """
    k = max(CORE_TILES, math.ceil(n / partitions / block_size))
    partitioned = n * n / partitions * ((1 + 1 / k) / 2 + probes)
    exact = (n * n + (n // block_size) * block_size**2 + (n % block_size) ** 2) / 2
    return partitioned / exact


def model_task_rows(n: int, partitions: int, probes: int) -> float:
    """Vectors one task holds on balanced partitions: its N/P members and p·N/P visitors."""
    return (1 + probes) * n / partitions


def training_rows(n: int, partitions: int, train_size: int, seed: int) -> np.ndarray:
    """The seeded sample of rows (ascending) that k-means trains on."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(n, max(train_size, partitions)), replace=False))


def train_centroids(vectors: np.ndarray, partitions: int, seed: int, train_size: int, iterations: int) -> np.ndarray:
    """Unit centroids (k ≤ partitions, dim) of spherical k-means on a seeded sample of rows."""
    import faiss

    n, dim = vectors.shape
    k = max(1, min(partitions, n))
    train = vectors[training_rows(n, k, train_size, seed)].astype(np.float32)
    train /= np.maximum(np.linalg.norm(train, axis=1, keepdims=True), 1e-12)
    kmeans = faiss.Kmeans(dim, k, niter=iterations, seed=seed, verbose=False, spherical=True, min_points_per_centroid=1)
    kmeans.train(train)
    assert kmeans.centroids is not None  # set by train()
    centroids = kmeans.centroids.copy()
    return centroids / np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)


def rank_partitions(vectors: np.ndarray, centroids: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the `depth` partitions of largest inner product with their centroid (ids, products), best first."""
    import faiss

    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    ids = np.empty((len(vectors), depth), dtype=np.int64)
    sims = np.empty((len(vectors), depth), dtype=np.float32)
    step = 65536
    for start in range(0, len(vectors), step):
        sims[start : start + step], ids[start : start + step] = index.search(
            np.ascontiguousarray(vectors[start : start + step], dtype=np.float32), depth)
    return ids, sims


def fill_with_room(ids: np.ndarray, sims: np.ndarray, room: np.ndarray, chosen: np.ndarray, barred: np.ndarray, first_rank: int = 0) -> None:
    """Give each row partitions from its ranking until its row of `chosen` (-1 = empty) is full.

    Rank by rank, every row that still needs a partition asks for its next one (never `barred`
    for that row, never one it holds); a partition with `room` left takes the rows most
    similar to its centroid and turns the rest away. Updates `chosen` and `room` in place.
    """
    want = chosen.shape[1]
    filled = (chosen >= 0).sum(axis=1)
    for rank in range(first_rank, ids.shape[1]):
        rows = np.flatnonzero(filled < want)
        if len(rows) == 0:
            return
        q = ids[rows, rank]
        ok = (q >= 0) & (q != barred[rows]) & ~(chosen[rows] == q[:, None]).any(axis=1)
        rows, q, s = rows[ok], q[ok], sims[rows[ok], rank]
        order = np.lexsort((-s, q))  # by partition, most similar first
        rows, q = rows[order], q[order]
        place = np.arange(len(q)) - np.searchsorted(q, q, side="left")  # place in its partition's queue
        take = place < room[q]
        rows, q = rows[take], q[take]
        chosen[rows, filled[rows]] = q
        filled[rows] += 1
        room -= np.bincount(q, minlength=len(room)).astype(room.dtype)


def _fill_all(vectors: np.ndarray, centroids: np.ndarray, ids: np.ndarray, sims: np.ndarray, room: np.ndarray,
              chosen: np.ndarray, barred: np.ndarray) -> None:
    """`fill_with_room` over the rankings given, then deeper rankings for the rows still short, then past the room."""
    fill_with_room(ids, sims, room, chosen, barred)
    k = len(centroids)
    depth = ids.shape[1]
    short = np.flatnonzero((chosen < 0).any(axis=1))
    while len(short) and depth < k:
        new_depth = min(k, 4 * depth)
        more_ids, more_sims = rank_partitions(vectors[short], centroids, new_depth)
        part = chosen[short]
        fill_with_room(more_ids, more_sims, room, part, barred[short], first_rank=depth)
        chosen[short] = part
        short, depth = short[(part < 0).any(axis=1)], new_depth
    if len(short):  # every partition a row may use is full (only possible for visits): exceed the room
        more_ids, more_sims = rank_partitions(vectors[short], centroids, k)
        part = chosen[short]
        fill_with_room(more_ids, more_sims, np.full(k, len(vectors), dtype=np.int64), part, barred[short])
        chosen[short] = part


def plan_partitions(vectors: np.ndarray, params: PartitionParams, seed: int) -> PartitionPlan:
    """Balanced spherical partitions of `vectors`: per row, its own partition and `params.probes` partitions it visits."""
    n = len(vectors)
    centroids = train_centroids(vectors, params.partitions, seed, params.train_size, params.iterations)
    k = len(centroids)
    probes = min(params.probes, k - 1)
    ids, sims = rank_partitions(vectors, centroids, min(k, probes + RANK_DEPTH))
    core_room = np.full(k, math.ceil(params.balance * n / k), dtype=np.int64)
    label = np.full((n, 1), -1, dtype=np.int64)
    _fill_all(vectors, centroids, ids, sims, core_room, label, np.full(n, -1, dtype=np.int64))
    visit_room = np.full(k, math.ceil(params.balance * probes * n / k), dtype=np.int64)
    visits = np.full((n, probes), -1, dtype=np.int64)
    _fill_all(vectors, centroids, ids, sims, visit_room, visits, label[:, 0])
    return PartitionPlan(centroids, label[:, 0], visits)


def core_blocks(n_core: int, block_size: int) -> list[np.ndarray]:
    """The core split into max(CORE_TILES, ⌈n_core / block_size⌉) nearly equal consecutive blocks (fewer if it is tiny)."""
    if n_core == 0:
        return []
    return np.array_split(np.arange(n_core), min(n_core, max(CORE_TILES, -(-n_core // block_size))))


def task_dot_products(n_core: int, n_visitors: int, block_size: int) -> int:
    """Dot products one task computes: every core block against the core rows up to its end, plus visitors × core."""
    sizes = np.array([len(b) for b in core_blocks(n_core, block_size)], dtype=np.int64)
    return int((n_core * n_core + (sizes * sizes).sum()) // 2) + n_visitors * n_core


def search_partition(local: np.ndarray, n_core: int, threshold: float, block_size: int, device: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """One partition's task: pairs among `local[:n_core]` (upper triangle) and between the rest and the core.

    The triangle is computed as strips: each core block against the core rows up to its own end
    (so only the diagonal blocks hold pairs twice); visitors meet the core in full-width tiles.
    Returns local row indices (i, j), exact similarities, and the dot products computed.
    """
    kernel = TileKernel(local, block_size, device)
    chunks = []
    for cols in core_blocks(n_core, block_size):
        end = int(cols[-1]) + 1
        for start in range(0, end, block_size):
            rows = np.arange(start, min(start + block_size, end))
            chunks.append(kernel.hits(rows, cols, threshold, upper=True))  # upper: i < j, so a row never pairs itself
    wide = [np.arange(s, min(s + block_size, n_core)) for s in range(0, n_core, block_size)]
    for start in range(n_core, len(local), block_size):
        rows = np.arange(start, min(start + block_size, len(local)))
        for cols in wide:
            chunks.append(kernel.hits(rows, cols, threshold, upper=False))
    found = PairChunk.concat(chunks)
    return found.i, found.j, found.sim, kernel.counts.dot_products


def task_rows(plan: PartitionPlan) -> tuple[np.ndarray, np.ndarray]:
    """Members and visitors of every partition (two arrays of length P)."""
    k = plan.centroids.shape[0]
    return np.bincount(plan.label, minlength=k), np.bincount(plan.probes.reshape(-1), minlength=k)


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


def partitioned_pairs(vectors: np.ndarray, threshold: float, params: SearchParams, counts: SearchCounts,
                      plan: PartitionPlan | None = None) -> Iterator[PairChunk]:
    """Pairs (i < j) above `threshold` found by partitioned search, partition by partition (planned here unless given)."""
    if plan is None:
        plan = plan_partitions(vectors, params.partition, params.seed)
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
    """The seeded sample of rows on which recall against exact mode is measured, in the order it is measured."""
    return np.random.default_rng(seed).permutation(n)[: min(n, sample_rows)]


def wilson_interval(hits: int, total: int, z: float = WILSON_Z) -> tuple[float, float]:
    """Wilson score interval of a proportion hits/total (95 % by default); (0, 1) when total is 0."""
    if total == 0:
        return 0.0, 1.0
    share = hits / total
    centre = (share + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(share * (1 - share) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return max(0.0, centre - half), min(1.0, centre + half)


def tells_apart(interval: tuple[float, float], levels: tuple[float, float] = RECALL_LEVELS) -> bool:
    """Whether a recall interval excludes at least one of two recall levels (so it tells them apart)."""
    low, high = interval
    return not (low <= min(levels) and high >= max(levels))


def recall_against_exact(vectors: np.ndarray, found: PairChunk, rows: np.ndarray, threshold: float, block_size: int,
                         device: str = "cpu", min_rows: int = 1000) -> dict[str, Any]:
    """Share of exact mode's pairs touching a prefix of `rows` that `found` (pairs touching `rows`) contains.

    Rows are taken in order, at least `min_rows` of them, and more until the Wilson 95 % interval
    of the recall tells RECALL_LEVELS apart or `rows` run out; `recall_sample_sufficient` says
    whether it got there.
    """
    n = len(vectors)
    kernel = TileKernel(vectors, block_size, device)
    found_keys = np.minimum(found.i, found.j).astype(np.int64) * n + np.maximum(found.i, found.j)
    truth_chunks: list[np.ndarray] = []
    truth = np.zeros(0, np.int64)
    hits, used, interval = 0, 0, (0.0, 1.0)
    step = max(1, min(block_size, min_rows))  # rows per look at the interval
    for start in range(0, len(rows), step):
        block = rows[start : start + step]
        for c in range(0, n, block_size):
            chunk = kernel.hits(block, np.arange(c, min(c + block_size, n)), threshold, upper=False)
            truth_chunks.append(np.minimum(chunk.i, chunk.j).astype(np.int64) * n + np.maximum(chunk.i, chunk.j))
        used = start + len(block)
        if used < min(min_rows, len(rows)):
            continue
        truth = np.unique(np.concatenate(truth_chunks))
        truth_chunks = [truth]
        hits = int(np.isin(truth, found_keys).sum())
        interval = wilson_interval(hits, len(truth))
        if len(truth) and tells_apart(interval):
            break
    return {
        "recall_against_exact": round(hits / len(truth), 6) if len(truth) else None,
        "recall_interval": [round(interval[0], 6), round(interval[1], 6)] if len(truth) else None,
        "recall_sample_rows": int(used),
        "recall_sample_pairs": int(len(truth)),
        "recall_sample_sufficient": bool(len(truth) and tells_apart(interval)),
    }
