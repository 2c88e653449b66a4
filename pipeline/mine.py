"""mine: CLIP and DINOv2 embeddings → CLIP-blind pairs (CLIP cosine > t_clip, DINOv2 cosine < t_dino).

Inputs: the images table and both embedding directories; params section `mine`.
Outputs: the pairs table (unordered pairs, image_a < image_b, both similarities), with the
search mode and thresholds in its metadata.
Metrics (the funnel): images, pairs_possible, clip_candidates, dino_rejected, pairs, the
search mode (exhaustive or not), thresholds, and whether any encoder had random weights.

The CLIP search is exhaustive: every pair above the threshold is found. DINOv2 similarity is
computed only for those candidates.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from pipeline import embeddings, schemas
from pipeline.config import load_section
from pipeline.report import summary, warn, write_metrics

STAGE = "mine"


@dataclass(frozen=True)
class MineParams:
    """Params of the mine stage (section `mine`)."""

    clip_threshold: float = 0.95  # keep pairs with CLIP cosine strictly above
    dino_threshold: float = 0.6  # ... and DINOv2 cosine strictly below


@dataclass(frozen=True)
class Candidates:
    """Pairs of row indices (i < j) with their CLIP similarity."""

    i: np.ndarray
    j: np.ndarray
    sim: np.ndarray


def clip_candidates(vectors: np.ndarray, threshold: float) -> Candidates:
    """Every pair of rows with inner product strictly above `threshold`, exhaustively (FAISS flat index)."""
    import faiss

    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = x.shape
    if n < 2:
        return Candidates(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
    index = faiss.IndexFlatIP(dim)
    index.add(x)
    lims, sims, ids = index.range_search(x, threshold)
    queries = np.repeat(np.arange(n, dtype=np.int64), np.diff(lims).astype(np.int64))
    ids = ids.astype(np.int64)
    # range_search returns each pair from both sides and the query itself; keep i < j once.
    keep = (queries < ids) & (sims > threshold)
    return Candidates(queries[keep], ids[keep], sims[keep].astype(np.float32))


def pair_similarity(vectors: np.ndarray, i: np.ndarray, j: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Cosine similarity of rows i[k] and j[k] (vectors are L2-normalised), in float32."""
    out = np.empty(len(i), dtype=np.float32)
    for start in range(0, len(i), chunk):
        a = vectors[i[start : start + chunk]].astype(np.float32)
        b = vectors[j[start : start + chunk]].astype(np.float32)
        out[start : start + chunk] = np.einsum("nd,nd->n", a, b)
    return out


def mine(image_ids: Sequence[str], clip: np.ndarray, dino: np.ndarray, params: MineParams) -> tuple[pa.Table, dict[str, Any]]:
    """Find CLIP-blind pairs among row-aligned embeddings; return the pairs table and funnel metrics."""
    if len(image_ids) != clip.shape[0] or clip.shape[0] != dino.shape[0]:
        raise ValueError(f"embeddings not row-aligned: {len(image_ids)} ids, clip {clip.shape}, dino {dino.shape}")
    candidates = clip_candidates(clip, params.clip_threshold)
    dino_sim = pair_similarity(dino, candidates.i, candidates.j)
    keep = dino_sim < params.dino_threshold
    ids = np.asarray(image_ids, dtype=object)
    a, b = ids[candidates.i[keep]], ids[candidates.j[keep]]
    first = np.where(a < b, a, b)
    second = np.where(a < b, b, a)
    rows = sorted(
        zip(first.tolist(), second.tolist(), candidates.sim[keep].tolist(), dino_sim[keep].tolist()),
    )
    table = pa.table(
        {
            "pair_id": pa.array([schemas.pair_id(x, y) for x, y, _, _ in rows], pa.string()),
            "image_a": pa.array([r[0] for r in rows], pa.string()),
            "image_b": pa.array([r[1] for r in rows], pa.string()),
            "clip_sim": pa.array([r[2] for r in rows], pa.float32()),
            "dino_sim": pa.array([r[3] for r in rows], pa.float32()),
        },
        schema=schemas.PAIRS,
    )
    n = len(image_ids)
    metrics = {
        "images": n,
        "pairs_possible": n * (n - 1) // 2,
        "clip_candidates": int(len(candidates.i)),
        "dino_rejected": int((~keep).sum()),
        "pairs": table.num_rows,
        "search": "exhaustive",
        "clip_threshold": params.clip_threshold,
        "dino_threshold": params.dino_threshold,
    }
    return table, metrics


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: `python -m pipeline.mine --images T --clip DIR --dino DIR --pairs OUT --metrics M`."""
    parser = argparse.ArgumentParser(prog="clipblind mine", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--images", required=True)
    parser.add_argument("--clip", required=True)
    parser.add_argument("--dino", required=True)
    parser.add_argument("--pairs", required=True)
    parser.add_argument("--metrics", required=True)
    args = parser.parse_args(argv)
    params = load_section(args.params, STAGE, MineParams)
    image_ids = schemas.read_table(args.images, "images").column("image_id").to_pylist()
    clip, clip_desc = embeddings.load(args.clip, image_ids)
    dino, dino_desc = embeddings.load(args.dino, image_ids)
    table, metrics = mine(image_ids, clip, dino, params)
    random_init = [d["name"] for d in (clip_desc, dino_desc) if d.get("random_init")]
    metrics["random_init_encoders"] = random_init
    if random_init:
        warn(STAGE, f"pairs come from RANDOMLY INITIALISED encoders ({', '.join(random_init)})")
    meta = {"encoders": {"clip": clip_desc, "dino": dino_desc}, **{k: metrics[k] for k in ("search", "clip_threshold", "dino_threshold")}}
    schemas.write_table(table, args.pairs, "pairs", meta=meta)
    write_metrics(args.metrics, metrics)
    summary(
        STAGE,
        f"{metrics['images']} images, {metrics['pairs_possible']} possible pairs → {metrics['clip_candidates']} with "
        f"CLIP > {params.clip_threshold} → {metrics['pairs']} with DINOv2 < {params.dino_threshold} ({metrics['search']})",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
