"""embed: images table + corpus → CLIP and DINOv2 embeddings, one shard directory per encoder.

Inputs: the images table, the corpus source it was read from, params section `embed`;
optionally `--clip-from DIR`, a clip-retrieval output (img_emb/*.npy + metadata/*.parquet)
used as the CLIP side instead of computing it (`embed.clip.kind: clip_retrieval`).
Outputs: `--clip DIR` and `--dino DIR` in the format of `pipeline.embedding.store` (float16,
L2-normalised, keyed by image id, resumable shard by shard, grown incrementally).
Metrics: images, shards (planned, owned by this worker, written, reused), images embedded,
failed images (accepted + failed == images to embed), engine, dtype and random_init per encoder.

Each image is decoded once (the canonical decode) and preprocessed for every encoder that
still needs it. Work is split into shards; `--shard i/n` runs only shards k with k % n == i,
so n independent workers (a Slurm job array, any scheduler) share one output directory.
The engine is a param: `local` overlaps decoding with the model in loader threads; `ray`
runs an actor pool of encoders on a Ray cluster (`pipeline.embedding.ray_engine`). Both give the same
vectors: a shard is always encoded in the same batches.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from pipeline.core import schemas
from pipeline.core.config import command_params
from pipeline.core.report import summary, write_headline, write_metrics
from pipeline.embedding.clip_retrieval import import_clip_retrieval
from pipeline.embedding.engine import EmbedFailure, ShardResult, ShardSlice, embed_corpus, load_encoders, run_local
from pipeline.embedding.ray_engine import run_ray
from pipeline.images.corpus import Corpus
from pipeline.params import EmbedParams, IngestParams

STAGE = "embed"


def _engine(kind: str) -> Callable[..., Iterable[ShardResult]]:
    """The runner of `embed.engine.kind`: the local engine, or the actor pool on Ray Data."""
    return run_ray if kind == "ray" else run_local


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: `python -m pipeline.embed --images T --source S --clip DIR --dino DIR --metrics M`."""
    parser = argparse.ArgumentParser(prog="clipblind embed", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--images", required=True)
    parser.add_argument("--source", required=True, nargs="+", help="the corpus source(s) ingest read")
    parser.add_argument("--clip", required=True, help="output directory for CLIP embeddings")
    parser.add_argument("--dino", required=True, help="output directory for DINOv2 embeddings")
    parser.add_argument("--metrics", required=True)
    parser.add_argument("--headline", help="output headline metrics JSON (what `dvc metrics show` lists: report.HEADLINES)")
    parser.add_argument("--shard", default="0/1", help="i/n: run only shards k with k %% n == i (default 0/1: all)")
    parser.add_argument("--clip-from", help="clip-retrieval output to import as the CLIP side (embed.clip.kind: clip_retrieval)")
    args = parser.parse_args(argv)
    params = command_params(parser, args.params, STAGE, EmbedParams)
    ingest_params = command_params(parser, args.params, "ingest", IngestParams)
    worker = ShardSlice.parse(args.shard)
    if params.threads:
        import torch

        torch.set_num_threads(params.threads)
    images = schemas.read_table(args.images, "images")
    image_ids = images.column("image_id").to_pylist()
    out_dirs = {"clip": Path(args.clip), "dino": Path(args.dino)}
    metrics: dict[str, Any] = {}
    names = ["clip", "dino"]
    if params.clip.kind == "clip_retrieval":
        if not args.clip_from:
            parser.error("embed.clip.kind is clip_retrieval: give --clip-from DIR (the clip-retrieval output folder)")
        metrics["clip_import"] = import_clip_retrieval(
            Path(args.clip_from), images, out_dirs["clip"], params.clip, params.shard_size
        )
        names = ["dino"]
    encoders = load_encoders(params, names)
    metrics.update(embed_corpus(
        image_ids,
        images.column("source_path").to_pylist(),
        Corpus(ingest_params.source, args.source),
        encoders,
        {n: out_dirs[n] for n in names},
        params,
        ingest_params.max_pixels,
        worker,
        engine=_engine(params.engine.kind),
    ))
    write_metrics(args.metrics, metrics)
    write_headline(args.headline, STAGE, metrics)
    random_note = [n for n, r in metrics["random_init"].items() if r]
    summary(
        STAGE,
        f"{metrics['images_embedded']} of {metrics['images']} images embedded by {', '.join(names)} "
        f"(worker {metrics['worker']}, {metrics['engine']} engine): {metrics['shards_written']} shards written, "
        f"{metrics['shards_reused']} reused, {metrics['images_failed']} images failed"
        + (f"; RANDOM weights: {', '.join(random_note)}" if random_note else ""),
    )
    problems = []
    if metrics["images_failed"]:
        examples = "; ".join(f"{f['image_id'][:12]} {f['error']}" for f in metrics["failures"][:3])
        problems.append(
            f"{metrics['images_failed']} images no longer decode (e.g. {examples}); the corpus changed since "
            "ingest: rerun `dvc repro` so ingest sees it"
        )
    missing = metrics.get("clip_import", {}).get("images_missing", 0)
    if missing:
        problems.append(
            f"{missing} images have no vector in {args.clip_from} (listed in {args.metrics}); rerun clip-retrieval "
            "on them or set embed.clip to an open_clip encoder"
        )
    if problems:
        raise EmbedFailure(" | ".join(problems))
    return 0


if __name__ == "__main__":
    from pipeline.core.errors import run_command

    raise SystemExit(run_command(main, "embed"))
