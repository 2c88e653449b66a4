"""bench mine: the exact search against FAISS range_search and the machine's bf16 matmul rate, in one run.

`clipblind bench mine [--n 100000] [--dim 768]` builds N float16 unit vectors (random, plus
planted near pairs so there is something to find), then measures side by side:

* ours: the blocked bf16 search with exact re-scoring (pipeline.mining.tiles.exact_pairs), its time
  and its peak memory above the process's baseline (Linux VmHWM, reset before the run);
* FAISS: `IndexFlatIP.range_search` over the same vectors (float32), and checks both pair sets
  are identical;
* the machine: the bf16 matmul rate of one tile product, measured before and after ours;
* partitioned mode (pipeline.mining.partitions), on two shapes of data, uniform on the sphere and
  clustered (32 clusters of unequal size and spread, 10 % uniform noise), each with pairs
  planted across partition borders: recall against exact mode, the share of exact mode's dot
  products it computed and how far that is from the cost model, and the largest task's vectors
  against the model's (1 + p)·N/P.

It prints the ratios against the targets and the projected time for N = 1,000,000.
`--no-exact` skips the exact-mode timing (partitioned mode still runs exact mode, to compare).
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from pipeline.core.atomic import write_json
from pipeline.mining.tiles import PairChunk, SearchCounts, exact_pairs, faiss_range_pairs
from pipeline.params import SearchParams, repository_params

TARGET_SPEEDUP_VS_FAISS = 5.0
TARGET_MATMUL_RATIO = 1.5
TARGET_MEMORY_RATIO = 2.0
# Partitioned mode: recall, share of exact mode's products, largest task / (1 + p)·N/P, |measured / model − 1|.
TARGET_RECALL = 0.99
TARGET_SHARE = 0.25
TARGET_TASK_MEMORY = 2.0
TARGET_MODEL_GAP = 0.10

Shape = Literal["uniform", "clustered"]
SHAPES: tuple[Shape, ...] = get_args(Shape)
CLUSTERS = 32
NOISE = 0.10  # share of the clustered shape's vectors that are uniform on the sphere
SPREAD = (0.02, 1.0)  # squared spread of a cluster member around its centre: cosine 1/√(1 + s²) to it


def planted_vectors(n: int, dim: int, planted: int, seed: int) -> np.ndarray:
    """n float16 unit vectors, uniform on the sphere, with `planted` pairs at cosines in [0.94, 0.99]."""
    rng = np.random.default_rng(seed)
    x = np.empty((n, dim), dtype=np.float16)
    step = 16384
    for start in range(0, n, step):
        block = rng.standard_normal((min(step, n - start), dim), dtype=np.float32)
        x[start : start + step] = block / np.linalg.norm(block, axis=1, keepdims=True)
    rows = rng.choice(n, size=2 * planted, replace=False).reshape(planted, 2)
    for (a, b), cos in zip(rows, rng.uniform(0.94, 0.99, planted)):
        base = x[a].astype(np.float64)
        noise = rng.standard_normal(dim)
        noise -= noise.dot(base) * base / base.dot(base)
        noise /= np.linalg.norm(noise)
        x[b] = (cos * base / np.linalg.norm(base) + np.sqrt(1 - cos**2) * noise).astype(np.float16)
    return x


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")


def reset_peak_memory() -> int:
    """Reset the process's peak RSS to its current RSS (Linux); return the current RSS in bytes."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kib("VmRSS") * 1024


def peak_memory() -> int:
    """Peak RSS in bytes since the last reset."""
    return _status_kib("VmHWM") * 1024


def bf16_matmul_rate(dim: int, block: int = 4096, seconds: float = 3.0) -> float:
    """FLOP/s of a bf16 [block × dim] · [dim × block] product on this machine right now."""
    import torch

    a = torch.randn(block, dim).to(torch.bfloat16)
    b = torch.randn(block, dim).to(torch.bfloat16)
    out = torch.empty(block, block, dtype=torch.bfloat16)
    torch.mm(a, b.T, out=out)
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        torch.mm(a, b.T, out=out)
        runs += 1
    return 2.0 * block * block * dim * runs / (time.perf_counter() - started)


def measure_exact(n: int, dim: int, threshold: float, block: int, faiss: bool, seed: int) -> dict[str, Any]:
    """Time, memory and rate figures of the exact search at N = n, optionally against FAISS."""
    import torch

    x = planted_vectors(n, dim, planted=max(1, n // 100), seed=seed)
    list(exact_pairs(x[: 2 * block], threshold, block))  # warm up torch's thread pool and kernels
    rate_before = bf16_matmul_rate(dim, block)
    gc.collect()
    baseline = reset_peak_memory()
    counts = SearchCounts()
    started = time.perf_counter()
    ours = PairChunk.concat(list(exact_pairs(x, threshold, block, counts=counts)))
    ours_seconds = time.perf_counter() - started
    extra_memory = peak_memory() - baseline
    rate_after = bf16_matmul_rate(dim, block)
    rate = (rate_before + rate_after) / 2
    ideal = n * n * dim / rate  # the upper triangle's 2·(N²/2)·D FLOP at the machine's bf16 rate
    result: dict[str, Any] = {
        "n": n,
        "dim": dim,
        "threshold": threshold,
        "block_size": block,
        "torch_threads": torch.get_num_threads(),
        "pairs_found": len(ours),
        "ours_seconds": round(ours_seconds, 2),
        "bf16_gflops": round(rate / 1e9, 1),
        "bf16_gflops_before_after": [round(rate_before / 1e9, 1), round(rate_after / 1e9, 1)],
        "ideal_seconds_at_bf16_rate": round(ideal, 2),
        "ours_over_ideal": round(ours_seconds / ideal, 3),
        "rescored": counts.rescored,
        "embedding_bytes": int(x.nbytes),
        "peak_extra_bytes": int(extra_memory),
        "peak_extra_over_embeddings": round(extra_memory / x.nbytes, 3),
        "projected_seconds_at_1m": round(ours_seconds * (1_000_000 / n) ** 2, 1),
    }
    if faiss:
        started = time.perf_counter()
        reference = faiss_range_pairs(x.astype(np.float32), threshold)
        faiss_seconds = time.perf_counter() - started
        same = set(zip(ours.i.tolist(), ours.j.tolist())) == set(zip(reference.i.tolist(), reference.j.tolist()))
        result.update(
            {
                "faiss_seconds": round(faiss_seconds, 2),
                "speedup_vs_faiss": round(faiss_seconds / ours_seconds, 2),
                "identical_to_faiss": same,
            }
        )
    return result


def report_exact(result: dict[str, Any]) -> list[str]:
    """Lines comparing the figures with the targets."""

    def verdict(ok: bool) -> str:
        return "meets target" if ok else "MISSES target"

    lines = [
        f"exact search, N = {result['n']:,} × {result['dim']}, threshold {result['threshold']}, block {result['block_size']}, "
        f"{result['torch_threads']} threads: {result['pairs_found']} pairs",
        f"  ours                 {result['ours_seconds']:>9.2f} s",
        f"  bf16 matmul rate     {result['bf16_gflops']:>9.1f} GFLOP/s (before/after: {result['bf16_gflops_before_after']})",
        f"  N²·D / rate          {result['ideal_seconds_at_bf16_rate']:>9.2f} s   ours / that = {result['ours_over_ideal']:.2f} "
        f"(≤ {TARGET_MATMUL_RATIO}: {verdict(result['ours_over_ideal'] <= TARGET_MATMUL_RATIO)})",
        f"  peak memory above baseline {result['peak_extra_bytes'] / 2**20:,.0f} MiB = {result['peak_extra_over_embeddings']:.2f} × "
        f"the embedding matrix (≤ {TARGET_MEMORY_RATIO}: {verdict(result['peak_extra_over_embeddings'] <= TARGET_MEMORY_RATIO)})",
    ]
    if "faiss_seconds" in result:
        lines += [
            f"  FAISS range_search   {result['faiss_seconds']:>9.2f} s   speedup = {result['speedup_vs_faiss']:.2f}× "
            f"(≥ {TARGET_SPEEDUP_VS_FAISS}: {verdict(result['speedup_vs_faiss'] >= TARGET_SPEEDUP_VS_FAISS)}); "
            f"identical pair sets: {result['identical_to_faiss']}",
        ]
    lines.append(f"  projected for N = 1,000,000: {result['projected_seconds_at_1m']:,.0f} s "
                 f"({result['projected_seconds_at_1m'] / 60:.1f} min) at this machine's current rate")
    return lines


@dataclass(frozen=True)
class VectorShape:
    """Unit vectors in `dim` dimensions: around `centres` (drawn by `weights`), a share `noise` uniform on the sphere."""

    dim: int
    centres: np.ndarray  # (C, dim) unit rows; none for the uniform shape
    weights: np.ndarray  # (C,)
    noise: float

    def sample(self, rng: np.random.Generator, m: int) -> np.ndarray:
        """m float32 unit vectors of this shape."""
        x = rng.standard_normal((m, self.dim), dtype=np.float32)
        members = np.flatnonzero(rng.random(m) >= self.noise) if len(self.centres) else np.zeros(0, np.int64)
        if len(members):
            centre = rng.choice(len(self.centres), size=len(members), p=self.weights)
            spread = np.sqrt(rng.uniform(*SPREAD, size=(len(members), 1))) / np.sqrt(self.dim)
            x[members] = self.centres[centre] + spread.astype(np.float32) * x[members]
        return x / np.linalg.norm(x, axis=1, keepdims=True)


def vector_shape(name: Shape, dim: int, seed: int) -> VectorShape:
    """The uniform shape, or the clustered one (CLUSTERS random centres of Dirichlet weights, NOISE uniform)."""
    if name not in SHAPES:
        raise ValueError(f"unknown data shape {name!r}; choose one of {list(SHAPES)}")
    if name == "uniform":
        return VectorShape(dim, np.zeros((0, dim), np.float32), np.zeros(0), 1.0)
    rng = np.random.default_rng([seed, 1])
    centres = rng.standard_normal((CLUSTERS, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    return VectorShape(dim, centres, rng.dirichlet(np.ones(CLUSTERS)), NOISE)


def shaped_vectors(shape: VectorShape, n: int, seed: int) -> np.ndarray:
    """n float16 unit vectors of `shape`, drawn a block at a time."""
    rng = np.random.default_rng(seed)
    x = np.empty((n, shape.dim), dtype=np.float16)
    step = 16384
    for start in range(0, n, step):
        x[start : start + step] = shape.sample(rng, min(step, n - start))
    return x


def plant_straddling(vectors: np.ndarray, shape: VectorShape, centroids: np.ndarray, rows: np.ndarray, count: int,
                     low: float, high: float, seed: int) -> np.ndarray:
    """Overwrite pairs of `rows` with pairs of `shape` at cosines in [low, high] whose nearest centroids differ.

    Returns the (count, 2) row pairs planted.
    """
    from pipeline.mining.partitions import rank_partitions

    if len(centroids) < 2:
        raise ValueError(f"pairs can straddle a border only between two or more partitions, got {len(centroids)}")
    rng = np.random.default_rng([seed, 2])
    a_parts: list[np.ndarray] = []
    b_parts: list[np.ndarray] = []
    while sum(len(a) for a in a_parts) < count:
        a = shape.sample(rng, 4 * count).astype(np.float64)
        noise = rng.standard_normal(a.shape)
        noise -= (noise * a).sum(axis=1, keepdims=True) * a
        noise /= np.linalg.norm(noise, axis=1, keepdims=True)
        cos = rng.uniform(low, high, size=(len(a), 1))
        b = cos * a + np.sqrt(1 - cos**2) * noise
        a16, b16 = a.astype(vectors.dtype), b.astype(vectors.dtype)
        straddle = rank_partitions(a16, centroids, 1)[0][:, 0] != rank_partitions(b16, centroids, 1)[0][:, 0]
        a_parts.append(a16[straddle])
        b_parts.append(b16[straddle])
    where = rows[: 2 * count].reshape(count, 2)
    vectors[where[:, 0]] = np.concatenate(a_parts)[:count]
    vectors[where[:, 1]] = np.concatenate(b_parts)[:count]
    return where


def measure_partitioned(shape_name: Shape, n: int, dim: int, threshold: float, block_size: int, seed: int,
                        partitions: int = 48, probes: int = 4, balance: float = 1.25, planted: int = 500) -> dict[str, Any]:
    """Recall, cost and largest task of partitioned vs exact mode on `shape_name` vectors with border-straddling pairs."""
    from pipeline.mining.partitions import (
        model_share,
        model_task_rows,
        partitioned_pairs,
        plan_partitions,
        task_rows,
        train_centroids,
        training_rows,
    )

    shape = vector_shape(shape_name, dim, seed)
    x = shaped_vectors(shape, n, seed)
    base = repository_params("search", SearchParams)
    part = replace(base.partition, partitions=partitions, probes=probes, train_size=max(partitions * 40, n // 4), iterations=20,
                   balance=balance)
    params = replace(base, recall_clip_threshold=threshold, mode="partitioned", block_size=block_size, seed=seed, partition=part)
    centroids = train_centroids(x, partitions, seed, part.train_size, part.iterations)
    # k-means trains on a seeded sample of rows: plant only outside it, so the centroids stay the same.
    trained = np.zeros(n, dtype=bool)
    trained[training_rows(n, partitions, part.train_size, seed)] = True
    free = np.random.default_rng([seed, 3]).permutation(np.flatnonzero(~trained))
    pairs = plant_straddling(x, shape, centroids, free, min(planted, len(free) // 2), threshold + 0.001, 0.99, seed)
    plan = plan_partitions(x, part, seed)
    exact_counts, part_counts = SearchCounts(), SearchCounts()
    started = time.perf_counter()
    exact = PairChunk.concat(list(exact_pairs(x, threshold, block_size, counts=exact_counts)))
    exact_seconds = time.perf_counter() - started
    started = time.perf_counter()
    found = PairChunk.concat(list(partitioned_pairs(x, threshold, params, part_counts, plan)))
    part_seconds = time.perf_counter() - started
    exact_set = set(zip(exact.i.tolist(), exact.j.tolist()))
    part_set = set(zip(found.i.tolist(), found.j.tolist()))
    planted_set = {(min(a, b), max(a, b)) for a, b in pairs.tolist()}
    core, visitors = task_rows(plan)
    share = part_counts.dot_products / exact_counts.dot_products
    model = model_share(n, len(plan.centroids), plan.probes.shape[1], block_size)
    model_rows = model_task_rows(n, len(plan.centroids), plan.probes.shape[1])
    return {
        "shape": shape_name,
        "n": n,
        "dim": dim,
        "partitions": int(len(plan.centroids)),
        "probes": int(plan.probes.shape[1]),
        "balance": balance,
        "planted_pairs": len(planted_set),
        "planted_straddling": int((plan.label[pairs[:, 0]] != plan.label[pairs[:, 1]]).sum()),
        "planted_found": len(planted_set & part_set),
        "exact_pairs": len(exact_set),
        "partitioned_pairs": len(part_set),
        "partitioned_only": len(part_set - exact_set),
        "recall": round(len(exact_set & part_set) / max(1, len(exact_set)), 6),
        "exact_dot_products": exact_counts.dot_products,
        "partitioned_dot_products": part_counts.dot_products,
        "dot_product_share": round(share, 4),
        "model_share": round(model, 4),
        "share_over_model": round(share / model, 4),
        "largest_core": int(core.max()),
        "largest_visitors": int(visitors.max()),
        "largest_task_rows": int((core + visitors).max()),
        "model_task_rows": round(model_rows, 1),
        "task_memory_over_model": round(float((core + visitors).max()) / model_rows, 4),
        "exact_seconds": round(exact_seconds, 2),
        "partitioned_seconds": round(part_seconds, 2),
    }


def partitioned_verdicts(result: dict[str, Any]) -> dict[str, bool]:
    """Whether a partitioned measurement meets each target: recall, share, largest task, agreement with the model."""
    return {
        "recall": result["recall"] >= TARGET_RECALL,
        "share": result["dot_product_share"] <= TARGET_SHARE,
        "task_memory": result["task_memory_over_model"] <= TARGET_TASK_MEMORY,
        "model": abs(result["share_over_model"] - 1) <= TARGET_MODEL_GAP,
    }


def report_partitioned(result: dict[str, Any]) -> list[str]:
    """Lines comparing partitioned mode's recall, cost and largest task with the targets."""
    ok = partitioned_verdicts(result)

    def verdict(key: str) -> str:
        return "meets target" if ok[key] else "MISSES target"

    return [
        f"partitioned search, {result['shape']} vectors, N = {result['n']:,} × {result['dim']}, {result['partitions']} "
        f"partitions, {result['probes']} probes, balance {result['balance']}; {result['planted_straddling']} of "
        f"{result['planted_pairs']} planted pairs straddle a border ({result['planted_found']} found)",
        f"  recall vs exact      {result['recall']:.4f} ({result['exact_pairs']} exact pairs; ≥ {TARGET_RECALL}: "
        f"{verdict('recall')})",
        f"  dot products         {result['dot_product_share']:.4f} of exact mode's (≤ {TARGET_SHARE}: {verdict('share')})",
        f"  cost model           (1 + 1/k + 2p)/P = {result['model_share']:.4f}; measured / model = "
        f"{result['share_over_model']:.3f} (within {TARGET_MODEL_GAP:.0%}: {verdict('model')})",
        f"  largest task         {result['largest_task_rows']:,} vectors ({result['largest_core']:,} members, "
        f"{result['largest_visitors']:,} visitors) = {result['task_memory_over_model']:.2f} × (1 + p)·N/P = "
        f"{result['model_task_rows']:,.0f} (≤ {TARGET_TASK_MEMORY}: {verdict('task_memory')})",
        f"  time                 {result['partitioned_seconds']:.2f} s vs exact {result['exact_seconds']:.2f} s",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: `clipblind bench mine [--n N] [--dim D] [--no-faiss] [--no-exact] [--shapes uniform,clustered] [--out results.json]`."""
    parser = argparse.ArgumentParser(prog="clipblind bench mine", description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--threshold", type=float, default=0.95)
    parser.add_argument("--block-size", type=int, default=4096)
    parser.add_argument("--no-faiss", action="store_true", help="skip the FAISS range_search comparison")
    parser.add_argument("--no-exact", action="store_true", help="skip the exact-mode timing (and FAISS)")
    parser.add_argument("--no-partitioned", action="store_true", help="skip the partitioned-mode measurement")
    parser.add_argument("--shapes", default=",".join(SHAPES), help=f"data shapes for partitioned mode, from {list(SHAPES)}")
    parser.add_argument("--partitions", type=int, default=48)
    parser.add_argument("--probes", type=int, default=4)
    parser.add_argument("--balance", type=float, default=1.25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    shapes = [s for s in args.shapes.split(",") if s]
    unknown = sorted(set(shapes) - set(SHAPES))
    if unknown:
        parser.error(f"--shapes: unknown shape(s) {unknown}; choose from {list(SHAPES)}")
    results: dict[str, Any] = {}
    if not args.no_exact:
        results["exact"] = measure_exact(args.n, args.dim, args.threshold, args.block_size, not args.no_faiss, args.seed)
        print("\n".join(report_exact(results["exact"])), flush=True)
    if not args.no_partitioned:
        results["partitioned"] = {}
        for shape in shapes:
            result = measure_partitioned(shape, args.n, args.dim, args.threshold, args.block_size, args.seed,
                                         args.partitions, args.probes, args.balance)
            results["partitioned"][shape] = result
            print("\n".join(report_partitioned(result)), flush=True)
    if args.out:
        write_json(args.out, results)
    return 0


if __name__ == "__main__":
    from pipeline.core.errors import run_command

    raise SystemExit(run_command(main, "bench mine"))
