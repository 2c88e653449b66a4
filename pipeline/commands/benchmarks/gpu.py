"""bench gpu: the embed stage and the exact search on a CUDA device, checked against the CPU path.

On a machine with a CUDA GPU, in one run (about 10 minutes at most on one H200-class GPU):

* embed: generates `--images` (10,000) JPEGs, ingests them and runs the embed stage itself
  (`pipeline.embedding.engine.embed_corpus`, local engine, loader threads, pinned memory) with both
  ViT-L/14 encoders (open_clip CLIP, DINOv2) on `device: cuda` in bf16 autocast with random
  weights (same cost as trained ones). Prints the stage's images/s, each model's images/s
  alone and their achieved FLOP/s as a share of the GPU's dense bf16 matmul rate (the better
  of two windows of the same run, before and after). Check: on a seeded sample of `--sample`
  images, the vectors the stage wrote and the same encoders on CPU in fp32 give pairwise
  cosines that differ by at most the bf16 bound of `clipblind bench embed` (`COSINE_LIMIT`).
* search: `--vectors` (10⁶) random unit vectors of dimension 768 with `--planted` pairs
  planted at cosines around the threshold, searched by the search stage's exact tile kernel
  (`pipeline.mining.tiles.exact_pairs`, bf16 tiles, exact re-scoring) on the GPU. Prints the
  search's achieved FLOP/s as a share of the bf16 matmul rate. Checks: every planted pair
  above the threshold is found and nothing else (random pairs in 768 dimensions lie below
  cosine 0.3, far under the threshold); and the pairs among the first `--subset` (10⁵) rows
  equal those of an exhaustive float32 FAISS range search on those rows on the CPU (a pair may
  differ only within float32 rounding of the threshold).

Exit codes: 0 every check passed, 1 a check failed, 3 no CUDA device (nothing was run).
`--device cpu` runs the same code on the CPU, for trying it at small sizes.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.commands.benchmarks.embed import CLIP_L14, COSINE_LIMIT, DINO_L14, forward_flops
from pipeline.params import EncoderParams

if TYPE_CHECKING:
    from pipeline.images.corpus import Corpus

PROG = "clipblind bench gpu"
EXIT_CHECK_FAILED = 1
EXIT_NO_DEVICE = 3
ROUNDING = 1e-6  # float32 rounding of a cosine near the threshold: FAISS and exact scores may disagree within it


def no_cuda_reason() -> str | None:
    """Why this machine cannot run the CUDA benchmark, or None when torch sees a CUDA device."""
    import torch

    if torch.cuda.is_available():
        return None
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "no CUDA support"
    return (f"no CUDA device: torch {torch.__version__} ({build}) sees no GPU; run it on a machine with an NVIDIA "
            "GPU and a CUDA build of torch (`make bench-gpu`)")


def _synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_gflops(device: str, n: int = 8192, seconds: float = 2.0) -> float:
    """The device's dense bf16 matmul rate, GFLOP/s, on n × n × n products (after a warm-up)."""
    import torch

    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    out = torch.empty(n, n, device=device, dtype=torch.bfloat16)
    torch.mm(a, b, out=out)
    _synchronize(device)
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or runs < 2:
        for _ in range(5):
            torch.mm(a, b, out=out)
        _synchronize(device)
        runs += 5
    return 2 * n**3 * runs / (time.perf_counter() - start) / 1e9


# ---------------------------------------------------------------- embed


def _draw_range(args: tuple[Path, int, int, int, int]) -> None:
    """Write JPEGs `start`..`stop`-1 of the generated corpus (each from its own seeded scene)."""
    from pipeline.sample_corpus import draw, encode, random_scene

    folder, start, stop, size, seed = args
    for i in range(start, stop):
        image = draw(random_scene(random.Random(seed * 1_000_003 + i)), size=size)
        (folder / f"{i:06d}.jpg").write_bytes(encode(image, "JPEG"))


def generate_images(folder: Path, count: int, size: int = 320, seed: int = 0, processes: int | None = None) -> None:
    """`count` generated size × size JPEGs (the sample corpus's scenes), drawn in parallel processes."""
    folder.mkdir(parents=True, exist_ok=True)
    processes = processes or min(16, os.cpu_count() or 1)
    step = max(1, -(-count // (4 * processes)))
    chunks = [(folder, s, min(s + step, count), size, seed) for s in range(0, count, step)]
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        pool.map(_draw_range, chunks)


def _models_alone(encoders: dict[str, Any], batch_size: int, batches: int, size: int) -> dict[str, float]:
    """Images/s of each encoder's `encode` alone on a preprocessed random batch (after a warm-up batch)."""
    import torch

    batch = torch.randn(batch_size, 3, size, size)
    rates = {}
    for name, encoder in encoders.items():
        encoder.encode(batch)  # returns host arrays: each call ends synchronised
        start = time.perf_counter()
        for _ in range(batches):
            encoder.encode(batch)
        rates[name] = batch_size * batches / (time.perf_counter() - start)
    return rates


def pairwise_drift(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(largest |pairwise cosine in a − in b|, smallest cosine between a row of a and its row in b)."""
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    return float(np.abs(a @ a.T - b @ b.T).max()), float(np.einsum("nd,nd->n", a, b).min())


def prepare_corpus(folder: Path, images: int, seed: int = 0) -> tuple[Corpus, list[str], list[str]]:
    """Generate `images` JPEGs into `folder` and ingest them: (corpus, image ids, their locations).

    Run it before the GPU is touched: drawing and ingest fork worker processes.
    """
    from pipeline.images.corpus import Corpus
    from pipeline.ingest import ingest
    from pipeline.params import IngestParams, repository_params

    generate_images(folder, images, seed=seed)
    ingest_params = repository_params("ingest", IngestParams)
    corpus = Corpus(replace(ingest_params.sources[0], kind="folder", name="bench-gpu", license=None), folder)
    table = ingest(corpus, replace(ingest_params, source=corpus.params, workers=min(16, os.cpu_count() or 1))).images
    return corpus, table.column("image_id").to_pylist(), table.column("source_path").to_pylist()


def embed_check(
    workdir: Path, corpus: Corpus, ids: Sequence[str], locations: Sequence[str], clip: EncoderParams, dino: EncoderParams,
    batch_size: int, sample: int, model_batches: int = 5, seed: int = 0,
) -> dict[str, Any]:
    """Run the embed stage with `clip` and `dino` (on their device) over the corpus; time it and check a
    seeded sample of images against the same encoders on CPU in fp32."""
    import torch

    from pipeline.embedding import store as embeddings
    from pipeline.embedding.engine import embed_corpus, load_encoders
    from pipeline.images.decode import decode
    from pipeline.params import EmbedParams, repository_params

    threads = min(16, os.cpu_count() or 1)
    # Each loader thread prepares a whole batch: as many threads as batches in flight.
    base = repository_params("embed", EmbedParams)
    params = replace(base, clip=clip, dino=dino, batch_size=batch_size, shard_size=16 * batch_size,
                     engine=replace(base.engine, kind="local", loader_threads=threads, prefetch_batches=threads))
    encoders = load_encoders(params)
    size = clip.image_size
    flops = {name: forward_flops(encoder, size) for name, encoder in encoders.items()}
    alone = _models_alone(encoders, batch_size, model_batches, size)
    out = {name: workdir / "embeddings" / name for name in encoders}
    start = time.perf_counter()
    metrics = embed_corpus(ids, locations, corpus, encoders, out, params, max_pixels=50_000_000)
    stage_s = time.perf_counter() - start
    del encoders

    rows = sorted(np.random.default_rng(seed).choice(len(ids), size=min(sample, len(ids)), replace=False).tolist())
    sample_ids = [ids[r] for r in rows]
    pictures = [decode(corpus.read(locations[r])).image for r in rows]
    checks: dict[str, Any] = {}
    for name, encoder_params in (("clip", clip), ("dino", dino)):
        on_cpu: dict[str, Any] = {name: replace(encoder_params, device="cpu", dtype="fp32")}
        reference = load_encoders(replace(params, **on_cpu), [name])[name]
        expected = reference.encode(torch.stack([reference.preprocess(p) for p in pictures]))
        del reference
        written, _ = embeddings.load(out[name], sample_ids)
        drift, agreement = pairwise_drift(written, expected)
        checks[name] = {"pairwise_cosine_drift": round(drift, 5), "min_cosine_to_cpu_fp32": round(agreement, 5),
                        "within_bf16_bound": drift <= COSINE_LIMIT}
    stage_rate = metrics["images_embedded"] / stage_s
    return {
        "images": len(ids),
        "images_embedded": metrics["images_embedded"],
        "images_failed": metrics["images_failed"],
        "stage_images_per_s": round(stage_rate, 1),
        "stage_gflops": round(stage_rate * sum(flops.values()) / 1e9, 3),
        "models": {
            name: {"gflop_per_image": round(flops[name] / 1e9, 4), "images_per_s_alone": round(alone[name], 1),
                   "gflops_alone": round(alone[name] * flops[name] / 1e9, 3), **checks[name]}
            for name in flops
        },
        "sample": len(rows),
        "bf16_bound": COSINE_LIMIT,
        "ok": metrics["images_failed"] == 0 and all(c["within_bf16_bound"] for c in checks.values()),
    }


# ---------------------------------------------------------------- search


def planted_vectors(n: int, dim: int, subset: int, planted: int, threshold: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n random unit vectors (float16, as the embed stage stores them) and `planted` pairs (rows, shape (p, 2)).

    Half the pairs lie within the first `subset` rows, half beyond them; their cosines are
    drawn uniformly from threshold ± 0.05 (so about half of them are above it) and up to 0.99.
    """
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    inside = planted // 2
    rows_in = rng.choice(subset, size=2 * inside, replace=False)
    rows_out = subset + rng.choice(n - subset, size=2 * (planted - inside), replace=False)
    pairs = np.concatenate([rows_in.reshape(2, -1).T, rows_out.reshape(2, -1).T])
    cosines = rng.uniform(threshold - 0.05, min(0.99, threshold + 0.05), size=len(pairs))
    a = x[pairs[:, 0]]
    z = rng.standard_normal(a.shape, dtype=np.float32)
    z -= np.einsum("nd,nd->n", z, a)[:, None] * a
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    x[pairs[:, 1]] = cosines[:, None] * a + np.sqrt(1 - cosines**2)[:, None] * z
    return x.astype(np.float16), np.sort(pairs, axis=1)


def _pair_set(i: np.ndarray, j: np.ndarray) -> set[tuple[int, int]]:
    return set(zip(i.tolist(), j.tolist()))


def search_check(
    n: int, subset: int, dim: int, threshold: float, planted: int, block_size: int, device: str, seed: int = 0,
) -> dict[str, Any]:
    """Exact search of n planted random vectors on `device`; its pairs against the planted truth and, on the
    first `subset` rows, against FAISS on the CPU."""
    from pipeline.mining.tiles import PairChunk, SearchCounts, exact_pairs, faiss_range_pairs, pair_similarity

    vectors, pairs = planted_vectors(n, dim, subset, planted, threshold, seed)
    exact = pair_similarity(vectors, pairs[:, 0], pairs[:, 1])
    truth = _pair_set(pairs[exact > threshold, 0], pairs[exact > threshold, 1])
    counts = SearchCounts()
    start = time.perf_counter()
    found = PairChunk.concat(list(exact_pairs(vectors, threshold, block_size, device, counts)))
    seconds = time.perf_counter() - start
    got = _pair_set(found.i, found.j)

    inside = (found.i < subset) & (found.j < subset)
    ours = _pair_set(found.i[inside], found.j[inside])
    start = time.perf_counter()
    reference = faiss_range_pairs(vectors[:subset], threshold)
    faiss_s = time.perf_counter() - start
    theirs = _pair_set(reference.i, reference.j)
    differ = sorted(ours ^ theirs)
    scores = pair_similarity(vectors, np.array([p[0] for p in differ], dtype=np.int64),
                             np.array([p[1] for p in differ], dtype=np.int64)) if differ else np.zeros(0)
    beyond_rounding = int((np.abs(scores.astype(np.float64) - threshold) > ROUNDING).sum())
    rate = counts.dot_products * 2 * dim / seconds / 1e9
    return {
        "vectors": n, "dim": dim, "threshold": threshold, "block_size": block_size,
        "seconds": round(seconds, 2), "dot_products": counts.dot_products, "rescored": counts.rescored,
        "gflops": round(rate, 3),
        "planted_above_threshold": len(truth), "pairs_found": len(got),
        "planted_missed": len(truth - got), "unplanted_found": len(got - truth),
        "subset": subset, "subset_pairs": len(ours), "faiss_subset_pairs": len(theirs), "faiss_seconds": round(faiss_s, 2),
        "subset_pairs_differing": len(differ), "subset_differing_beyond_rounding": beyond_rounding,
        "ok": got == truth and beyond_rounding == 0,
    }


# ---------------------------------------------------------------- command line


def _report(line: str) -> None:
    print(line, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: `clipblind bench gpu [--images 10000] [--vectors 1000000] [--subset 100000] [--json OUT]`."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                        help="cuda (default); cpu runs the same code on the CPU, for trying it at small sizes")
    parser.add_argument("--images", type=int, default=10_000, help="generated images for the embed stage (0: skip)")
    parser.add_argument("--batch-size", type=int, default=256, help="embed batch size")
    parser.add_argument("--sample", type=int, default=32, help="images checked against the CPU in fp32")
    parser.add_argument("--vectors", type=int, default=1_000_000, help="random vectors for the search (0: skip)")
    parser.add_argument("--subset", type=int, default=100_000, help="rows compared with FAISS on the CPU")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--planted", type=int, default=2000, help="planted pairs around the threshold")
    parser.add_argument("--block-size", type=int, default=8192, help="search tile side")
    parser.add_argument("--matmul-size", type=int, default=8192, help="side of the bf16 matmul that sets the reference rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    inside, outside = args.planted // 2, args.planted - args.planted // 2
    if args.vectors and not (inside >= 1 and 2 * inside <= args.subset and 2 * outside <= args.vectors - args.subset):
        parser.error(f"--planted {args.planted}: half the planted pairs (their rows distinct) lie within the first "
                     "--subset rows and half beyond them; use at least 2 and fewer than either side has rows")
    if args.device == "cuda":
        reason = no_cuda_reason()
        if reason:
            print(f"{PROG}: {reason}", file=sys.stderr)
            return EXIT_NO_DEVICE
    return run(args, _report)


def run(args: argparse.Namespace, report: Callable[[str], None],
        encoders: tuple[EncoderParams, EncoderParams] = (CLIP_L14, DINO_L14)) -> int:
    """Both checks as `args` say, with `encoders` (CLIP, DINOv2) moved to the device; reports figures as they
    come and returns the exit code."""
    import torch

    results: dict[str, Any] = {"device": args.device, "torch": torch.__version__}
    if args.device == "cuda":
        results["gpu"] = torch.cuda.get_device_name(0)
    with tempfile.TemporaryDirectory(prefix="clipblind-bench-gpu-") as tmp:
        if args.images:  # before the GPU is touched: drawing and ingest fork this process
            corpus, ids, locations = prepare_corpus(Path(tmp) / "corpus", args.images, seed=args.seed)
        matmul = [matmul_gflops(args.device, args.matmul_size)]
        report(f"{PROG}: {results.get('gpu', args.device)}, torch {torch.__version__}: dense bf16 matmul "
               f"{matmul[0] / 1e3:.1f} TFLOP/s")
        if args.images:
            clip, dino = (replace(p, device=args.device) for p in encoders)
            embed = embed_check(Path(tmp), corpus, ids, locations, clip, dino, args.batch_size, args.sample, seed=args.seed)
            results["embed"] = embed
            report(f"embed stage: {embed['images_embedded']} images at {embed['stage_images_per_s']:.0f} img/s")
            for name, m in embed["models"].items():
                report(f"  {name}: {m['gflop_per_image']:.1f} GFLOP/img, {m['images_per_s_alone']:.0f} img/s alone; "
                       f"vs CPU fp32 on {embed['sample']} images: pairwise cosines differ by ≤ "
                       f"{m['pairwise_cosine_drift']:.4f} (bound {COSINE_LIMIT})")
        if args.vectors:
            search = search_check(args.vectors, args.subset, args.dim, args.threshold, args.planted, args.block_size,
                                  args.device, seed=args.seed)
            results["search"] = search
            report(f"exact search: {search['vectors']:,} × {search['dim']} in {search['seconds']:.1f} s = "
                   f"{search['gflops'] / 1e3:.1f} TFLOP/s; {search['pairs_found']} pairs, planted missed "
                   f"{search['planted_missed']}, unplanted {search['unplanted_found']}; first {search['subset']:,} rows "
                   f"vs FAISS on CPU: {search['subset_pairs']} vs {search['faiss_subset_pairs']} pairs, "
                   f"{search['subset_differing_beyond_rounding']} differ beyond float32 rounding")
        # The reference is the best of two matmul windows, before and after: shares are never flattered by a slow window.
        matmul.append(matmul_gflops(args.device, args.matmul_size))
    results["bf16_matmul_gflops"] = round(max(matmul), 1)
    results["bf16_matmul_gflops_windows"] = [round(m, 1) for m in matmul]
    report(f"dense bf16 matmul rate (best of before/after): {max(matmul) / 1e3:.1f} TFLOP/s; achieved shares:")
    for name, gflops in _achieved(results):
        report(f"  {name}: {gflops / max(matmul):.1%}")
    results["share_of_bf16_matmul"] = {name: round(gflops / max(matmul), 3) for name, gflops in _achieved(results)}
    ok = all(results[k]["ok"] for k in ("embed", "search") if k in results)
    results["ok"] = ok
    if args.json:
        from pipeline.core.atomic import write_json

        write_json(args.json, results)
    report(json.dumps(results, indent=2, sort_keys=True))
    if not ok:
        print(f"{PROG}: a check failed (see 'ok' above)", file=sys.stderr)
    return 0 if ok else EXIT_CHECK_FAILED


def _achieved(results: dict[str, Any]) -> list[tuple[str, float]]:
    """(what, achieved GFLOP/s) for the embed stage, each model alone, and the search."""
    achieved = []
    if "embed" in results:
        achieved.append(("embed stage (both models)", results["embed"]["stage_gflops"]))
        achieved += [(f"{name} alone", m["gflops_alone"]) for name, m in results["embed"]["models"].items()]
    if "search" in results:
        achieved.append(("exact search", results["search"]["gflops"]))
    return achieved


if __name__ == "__main__":
    from pipeline.core.errors import run_command

    raise SystemExit(run_command(main, "bench gpu"))
