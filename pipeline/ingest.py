"""ingest: a corpus source → the images table, a rejects table and metrics.

Inputs: a folder (recursive) or a parquet/CSV manifest of paths (`ingest.source` in params).
Outputs: images table (one row per distinct content, keyed by sha256 of the bytes, sorted by
image_id, every location of the same bytes kept), rejects table (location, reason, detail).
Metrics: inputs, accepted, duplicates, rejected, rejected_by_reason;
accepted + duplicates + rejected == inputs.
"""

from __future__ import annotations

import argparse
import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pyarrow as pa

from pipeline import schemas
from pipeline.config import load_section
from pipeline.corpus import Corpus, SourceParams
from pipeline.decode import DEFAULT_MAX_PIXELS, DecodeError, decode
from pipeline.report import progress, summary, write_metrics

STAGE = "ingest"


@dataclass(frozen=True)
class IngestParams:
    """Params of the ingest stage (section `ingest`)."""

    source: SourceParams
    max_pixels: int = DEFAULT_MAX_PIXELS


@dataclass(frozen=True)
class IngestResult:
    """The ingest stage's tables and counts."""

    images: pa.Table
    rejects: pa.Table
    metrics: dict[str, Any]


def ingest(corpus: Corpus, params: IngestParams) -> IngestResult:
    """Read, hash and decode every item of `corpus`; collapse exact duplicates."""
    images: dict[str, dict[str, Any]] = {}
    rejects: list[dict[str, str]] = []
    inputs = duplicates = 0
    source = params.source.name
    for item in progress(corpus.items(), desc="ingest", unit="img"):
        inputs += 1
        try:
            data = corpus.read(item.location)
            image_id = hashlib.sha256(data).hexdigest()
            if image_id in images:
                images[image_id]["locations"].append(item.location)
                duplicates += 1
                continue
            decoded = decode(data, max_pixels=params.max_pixels)
        except DecodeError as err:
            rejects.append({"source": source, "location": item.location, "reason": err.reason.value, "detail": err.detail})
            continue
        images[image_id] = {
            "image_id": image_id,
            "source": source,
            "source_path": item.location,
            "locations": [item.location],
            "source_license": item.license,
            "format": decoded.format,
            "width": decoded.image.width,
            "height": decoded.image.height,
            "n_bytes": len(data),
            "frame_count": decoded.frame_count,
        }
    rows = [images[key] for key in sorted(images)]
    images_table = pa.Table.from_pylist(rows, schema=schemas.IMAGES)
    rejects.sort(key=lambda r: (r["source"], r["location"]))
    rejects_table = pa.Table.from_pylist(rejects, schema=schemas.REJECTS)
    by_reason = Counter(r["reason"] for r in rejects)
    metrics = {
        "inputs": inputs,
        "accepted": len(rows),
        "duplicates": duplicates,
        "rejected": len(rejects),
        "rejected_by_reason": dict(sorted(by_reason.items())),
    }
    return IngestResult(images_table, rejects_table, metrics)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: `python -m pipeline.ingest --source DIR_OR_MANIFEST --images OUT ...`."""
    parser = argparse.ArgumentParser(prog="clipblind ingest", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--source", required=True, help="corpus folder or manifest file")
    parser.add_argument("--images", required=True, help="output images table (parquet)")
    parser.add_argument("--rejects", required=True, help="output rejects table (parquet)")
    parser.add_argument("--metrics", required=True, help="output metrics JSON")
    args = parser.parse_args(argv)
    params = load_section(args.params, STAGE, IngestParams)
    result = ingest(Corpus(params.source, args.source), params)
    schemas.write_table(result.images, args.images, "images")
    schemas.write_table(result.rejects, args.rejects, "rejects")
    write_metrics(args.metrics, result.metrics)
    m = result.metrics
    summary(
        STAGE,
        f"{m['inputs']} inputs → {m['accepted']} images, {m['duplicates']} duplicates, "
        f"{m['rejected']} rejected {m['rejected_by_reason'] or ''} → {args.images}",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
