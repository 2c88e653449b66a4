"""bench mine: the exact search against FAISS range_search and the machine's bf16 matmul rate, in one run.

`clipblind bench mine [--n 100000] [--dim 768]` builds N float16 unit vectors (random, plus
planted near pairs so there is something to find), then measures side by side:

* ours: the blocked bf16 search with exact re-scoring (pipeline.search.exact_pairs), its time
  and its peak memory above the process's baseline (Linux VmHWM, reset before the run);
* FAISS: `IndexFlatIP.range_search` over the same vectors (float32), and checks both pair sets
  are identical;
* the machine: the bf16 matmul rate of one tile product, measured before and after ours;
* partitioned mode (pipeline.partition): recall against exact mode and the share of exact
  mode's dot products it computed, on uniform vectors with pairs planted across partition borders.

It prints the ratios against the targets and the projected time for N = 1,000,000.
"""

from __future__ import annotations

import argparse
import gc
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pipeline.atomic import write_json
from pipeline.search import PairChunk, SearchCounts, exact_pairs, faiss_range_pairs

TARGET_SPEEDUP_VS_FAISS = 5.0
TARGET_MATMUL_RATIO = 1.5
TARGET_MEMORY_RATIO = 2.0


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


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: `clipblind bench mine [--n N] [--dim D] [--no-faiss] [--out results.json]`."""
    parser = argparse.ArgumentParser(prog="clipblind bench mine", description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--threshold", type=float, default=0.95)
    parser.add_argument("--block-size", type=int, default=4096)
    parser.add_argument("--no-faiss", action="store_true", help="skip the FAISS range_search comparison")
    parser.add_argument("--no-partitioned", action="store_true", help="skip the partitioned-mode measurement")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {}
    results["exact"] = measure_exact(args.n, args.dim, args.threshold, args.block_size, not args.no_faiss, args.seed)
    print("\n".join(report_exact(results["exact"])), flush=True)
    if not args.no_partitioned:
        from pipeline.partition import measure_partitioned, report_partitioned

        results["partitioned"] = measure_partitioned(args.n, args.dim, args.threshold, args.block_size, args.seed)
        print("\n".join(report_partitioned(results["partitioned"])), flush=True)
    if args.out:
        write_json(args.out, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
