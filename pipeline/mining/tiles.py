"""The tile kernel of exact search: blocked products with a proven bf16 error bound, and FAISS's range search for comparison."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.core.report import progress


@dataclass(frozen=True)
class PairChunk:
    """Pairs of row indices (i < j) with their exact similarity."""

    i: np.ndarray
    j: np.ndarray
    sim: np.ndarray

    @staticmethod
    def empty() -> PairChunk:
        return PairChunk(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))

    @staticmethod
    def concat(chunks: Sequence[PairChunk]) -> PairChunk:
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


BF16_UNIT_ROUNDOFF = 2.0**-8  # bfloat16 keeps 8 significant bits


FP32_UNIT_ROUNDOFF = 2.0**-24
