"""embed: images table + corpus → CLIP and DINOv2 embeddings, one shard directory per encoder.

Inputs: the images table, the corpus source it was read from, params section `embed`.
Outputs: `--clip DIR` and `--dino DIR` in the format of `pipeline.embeddings` (float16,
L2-normalised, row-aligned with the images table, resumable shard by shard).
Metrics: images, shards written, shards reused, decode failures, random_init per encoder.
Each image is decoded once (the canonical decode) and preprocessed for both encoders.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pipeline import embeddings, schemas
from pipeline.config import load_section
from pipeline.corpus import Corpus
from pipeline.decode import decode
from pipeline.encoders import Encoder, EncoderParams, load_encoder
from pipeline.ingest import IngestParams
from pipeline.report import progress, summary, warn, write_metrics

STAGE = "embed"


@dataclass(frozen=True)
class EmbedParams:
    """Params of the embed stage (section `embed`)."""

    clip: EncoderParams
    dino: EncoderParams
    batch_size: int = 16
    shard_size: int = 4096
    threads: int = 0  # torch intra-op threads; 0 = torch's default


class EmbedFailure(RuntimeError):
    """An image that ingest accepted could not be read or decoded again."""


def embed_corpus(
    image_ids: Sequence[str],
    locations: Sequence[str],
    corpus: Corpus,
    encoders: dict[str, Encoder],
    out_dirs: dict[str, Path],
    params: EmbedParams,
    max_pixels: int,
) -> dict[str, Any]:
    """Embed every image with every encoder into its shard directory; return the metrics."""
    fingerprints = {}
    for name, encoder in encoders.items():
        description = encoder.describe()
        fingerprints[name] = embeddings.fingerprint(description)
        out_dirs[name].mkdir(parents=True, exist_ok=True)
        embeddings.write_description(out_dirs[name], description)
    plans = embeddings.plan_shards(list(image_ids), params.shard_size)
    for name in encoders:
        embeddings.remove_stale(out_dirs[name], keep=len(plans))
    location_of = dict(zip(image_ids, locations))
    written = reused = 0
    for plan in progress(plans, desc="embed shards", unit="shard"):
        todo = [n for n in encoders if not embeddings.shard_complete(out_dirs[n], plan, fingerprints[n])]
        if not todo:
            reused += 1
            continue
        vectors = {n: [] for n in todo}
        for start in range(0, len(plan.image_ids), params.batch_size):
            batch_ids = plan.image_ids[start : start + params.batch_size]
            images = [_decode_again(corpus, location_of[i], i, max_pixels) for i in batch_ids]
            for n in todo:
                vectors[n].append(_encode(encoders[n], images))
        for n in todo:
            embeddings.write_shard(out_dirs[n], plan, np.concatenate(vectors[n]), fingerprints[n])
        written += 1
    return {
        "images": len(image_ids),
        "shards": len(plans),
        "shards_written": written,
        "shards_reused": reused,
        "random_init": {n: e.random_init for n, e in encoders.items()},
        "dims": {n: e.dim for n, e in encoders.items()},
    }


def _decode_again(corpus: Corpus, location: str, image_id: str, max_pixels: int) -> Any:
    try:
        return decode(corpus.read(location), max_pixels=max_pixels).image
    except Exception as err:
        raise EmbedFailure(
            f"image {image_id} at {location!r} no longer decodes ({err}); the corpus changed since ingest: "
            "rerun `dvc repro` so ingest sees it"
        ) from err


def _encode(encoder: Encoder, images: list[Any]) -> np.ndarray:
    import torch

    batch = torch.stack([encoder.preprocess(im) for im in images])
    return encoder.encode(batch)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: `python -m pipeline.embed --images T --source S --clip DIR --dino DIR --metrics M`."""
    parser = argparse.ArgumentParser(prog="clipblind embed", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--images", required=True)
    parser.add_argument("--source", required=True, nargs="+", help="the corpus source(s) ingest read")
    parser.add_argument("--clip", required=True, help="output directory for CLIP embeddings")
    parser.add_argument("--dino", required=True, help="output directory for DINOv2 embeddings")
    parser.add_argument("--metrics", required=True)
    args = parser.parse_args(argv)
    params = load_section(args.params, STAGE, EmbedParams)
    ingest_params = load_section(args.params, "ingest", IngestParams)
    if params.threads:
        import torch

        torch.set_num_threads(params.threads)
    images = schemas.read_table(args.images, "images")
    encoders = {"clip": load_encoder("clip", params.clip), "dino": load_encoder("dino", params.dino)}
    for name, encoder in encoders.items():
        if encoder.random_init:
            warn(STAGE, f"{name} encoder uses RANDOMLY INITIALISED weights (weights: random): "
                        "its similarities mean nothing about images")
    metrics = embed_corpus(
        images.column("image_id").to_pylist(),
        images.column("source_path").to_pylist(),
        Corpus(ingest_params.source, args.source),
        encoders,
        {"clip": Path(args.clip), "dino": Path(args.dino)},
        params,
        ingest_params.max_pixels,
    )
    write_metrics(args.metrics, metrics)
    random_note = [n for n, r in metrics["random_init"].items() if r]
    summary(
        STAGE,
        f"{metrics['images']} images × {len(encoders)} encoders in {metrics['shards']} shards "
        f"({metrics['shards_written']} written, {metrics['shards_reused']} reused)"
        + (f"; RANDOM weights: {', '.join(random_note)}" if random_note else ""),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
