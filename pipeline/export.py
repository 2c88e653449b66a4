"""export: pairs → display images for annotators + Label Studio task JSON.

Inputs: the pairs table, the images table, the corpus source; params section `export`.
Outputs: a display folder of JPEG copies made from the canonical decode (the folder Label
Studio serves, whatever the corpus source), and a task JSON list, one task per pair, whose
image URLs point into that folder.
Metrics: pairs, tasks, display_images, random_init_encoders.
"""

from __future__ import annotations

import argparse
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pyarrow as pa

from pipeline import schemas
from pipeline.atomic import write_bytes, write_json
from pipeline.config import load_section
from pipeline.corpus import Corpus
from pipeline.decode import decode
from pipeline.ingest import IngestParams
from pipeline.report import progress, summary, write_metrics

STAGE = "export"


@dataclass(frozen=True)
class ExportParams:
    """Params of the export stage (section `export`)."""

    # Label Studio local-files URL; `d=` is relative to the document root, the display folder's parent
    # (Label Studio refuses a storage folder equal to its document root).
    url_prefix: str = "/data/local-files/?d=display/"
    display_max_side: int = 1024
    jpeg_quality: int = 92


def display_name(image_id: str) -> str:
    """File name of an image's display copy inside the display folder."""
    return f"{image_id}.jpg"


def display_bytes(data: bytes, params: ExportParams, max_pixels: int) -> bytes:
    """The display copy of image bytes: canonical decode, downscaled to fit, JPEG."""
    image = decode(data, max_pixels=max_pixels).image
    if max(image.size) > params.display_max_side:
        image = image.copy()
        image.thumbnail((params.display_max_side, params.display_max_side))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=params.jpeg_quality, optimize=True)
    return out.getvalue()


def build_tasks(pairs: pa.Table, params: ExportParams, meta: dict[str, Any]) -> list[dict[str, Any]]:
    """One Label Studio task per pair, in pair_id order."""
    tasks = []
    for row in sorted(pairs.to_pylist(), key=lambda r: r["pair_id"]):
        tasks.append(
            {
                "data": {
                    "pair_id": row["pair_id"],
                    "image_a_id": row["image_a"],
                    "image_b_id": row["image_b"],
                    "image_a": params.url_prefix + display_name(row["image_a"]),
                    "image_b": params.url_prefix + display_name(row["image_b"]),
                    "clip_sim": round(float(row["clip_sim"]), 6),
                    "dino_sim": round(float(row["dino_sim"]), 6),
                    **meta,
                }
            }
        )
    return tasks


def write_display_images(
    image_ids: Sequence[str], images: pa.Table, corpus: Corpus, display_dir: Path, params: ExportParams, max_pixels: int
) -> int:
    """Write display copies of `image_ids` into `display_dir`; skip copies already there."""
    location = dict(zip(images.column("image_id").to_pylist(), images.column("source_path").to_pylist()))
    written = 0
    for image_id in progress(sorted(set(image_ids)), desc="display images", unit="img"):
        target = display_dir / display_name(image_id)
        if target.exists():
            continue
        write_bytes(target, display_bytes(corpus.read(location[image_id]), params, max_pixels))
        written += 1
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: `python -m pipeline.export --pairs P --images T --source S --display DIR --tasks OUT --metrics M`."""
    parser = argparse.ArgumentParser(prog="clipblind export", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--pairs", required=True)
    parser.add_argument("--images", required=True)
    parser.add_argument("--source", required=True, nargs="+")
    parser.add_argument("--display", required=True, help="output folder of display images")
    parser.add_argument("--tasks", required=True, help="output Label Studio task JSON")
    parser.add_argument("--metrics", required=True)
    args = parser.parse_args(argv)
    params = load_section(args.params, STAGE, ExportParams)
    ingest_params = load_section(args.params, "ingest", IngestParams)
    pairs = schemas.read_table(args.pairs, "pairs")
    pairs_meta = schemas.read_meta(args.pairs)
    random_init = sorted(
        name for name, d in pairs_meta.get("encoders", {}).items() if d.get("random_init")
    )
    images = schemas.read_table(args.images, "images")
    display_dir = Path(args.display)
    display_dir.mkdir(parents=True, exist_ok=True)
    needed = pairs.column("image_a").to_pylist() + pairs.column("image_b").to_pylist()
    corpus = Corpus(ingest_params.source, args.source)
    written = write_display_images(needed, images, corpus, display_dir, params, ingest_params.max_pixels)
    meta = {"random_init_encoders": ",".join(random_init)} if random_init else {}
    tasks = build_tasks(pairs, params, meta)
    write_json(args.tasks, tasks)
    metrics = {
        "pairs": pairs.num_rows,
        "tasks": len(tasks),
        "display_images": len(set(needed)),
        "display_images_written": written,
        "random_init_encoders": random_init,
    }
    write_metrics(args.metrics, metrics)
    summary(STAGE, f"{len(tasks)} tasks → {args.tasks}; {len(set(needed))} display images in {display_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
