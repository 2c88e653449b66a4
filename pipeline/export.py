"""export: pairs → display images for annotators + Label Studio task JSON.

Inputs: the pairs table, the images table, the corpus source; params section `export`.
Outputs: a display folder of JPEG copies made from the canonical decode (the folder Label
Studio serves, whatever the corpus source), and a task JSON list, one task per pair, whose
image URLs point into that folder. Both carry the digest of the decode rules (each copy in its
JPEG comment, each task in its data), so they change when the rules do.
Metrics: pairs = tasks + pairs_skipped (a pair whose image no longer reads is skipped and
its image named in images_failed), display_images, random_init_encoders.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core import schemas
from pipeline.core.atomic import write_bytes, write_json
from pipeline.core.config import command_params
from pipeline.core.report import progress, summary, warn, write_headline, write_metrics
from pipeline.images.corpus import Corpus
from pipeline.images.decode import DecodeError, rules_digest
from pipeline.images.display import _stamp_of, display_bytes, display_name, display_stamp
from pipeline.params import ExportParams, IngestParams

STAGE = "export"


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
) -> tuple[int, dict[str, str]]:
    """Write display copies of `image_ids` into `display_dir`, skipping copies already made with these rules.

    Returns how many were written and, for each image that no longer reads or decodes, why.
    """
    location = dict(zip(images.column("image_id").to_pylist(), images.column("source_path").to_pylist()))
    written = 0
    failed: dict[str, str] = {}
    stamp = display_stamp(params)
    for image_id in progress(sorted(set(image_ids)), desc="display images", unit="img"):
        target = display_dir / display_name(image_id)
        if target.exists() and _stamp_of(target) == stamp:
            continue
        try:
            write_bytes(target, display_bytes(corpus.read(location[image_id]), params, max_pixels, comment=stamp))
        except DecodeError as err:
            failed[image_id] = err.reason.value
            continue
        written += 1
    return written, failed


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
    parser.add_argument("--headline", help="output headline metrics JSON (what `dvc metrics show` lists: report.HEADLINES)")
    args = parser.parse_args(argv)
    params = command_params(parser, args.params, STAGE, ExportParams)
    ingest_params = command_params(parser, args.params, "ingest", IngestParams)
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
    written, failed = write_display_images(needed, images, corpus, display_dir, params, ingest_params.max_pixels)
    # a pair whose image no longer reads (the corpus changed since ingest) costs only that pair
    usable = pc.invert(pc.or_(pc.is_in(pairs.column("image_a"), pa.array(list(failed), pa.string())),
                              pc.is_in(pairs.column("image_b"), pa.array(list(failed), pa.string()))))
    meta = {"decode_rules": rules_digest(), **({"random_init_encoders": ",".join(random_init)} if random_init else {})}
    tasks = build_tasks(pairs.filter(usable), params, meta)
    write_json(args.tasks, tasks)
    if failed:
        warn(STAGE, f"{len(failed)} image(s) no longer read or decode, e.g. {next(iter(failed))} "
                    f"({next(iter(failed.values()))}): their pairs were left out; rerun `dvc repro` so ingest sees the change")
    metrics = {
        "pairs": pairs.num_rows,
        "tasks": len(tasks),
        "pairs_skipped": pairs.num_rows - len(tasks),
        "images_failed": dict(sorted(failed.items())),
        "display_images": len(set(needed)),
        "display_images_written": written,
        "random_init_encoders": random_init,
    }
    write_metrics(args.metrics, metrics)
    write_headline(args.headline, STAGE, metrics)
    summary(STAGE, f"{len(tasks)} tasks → {args.tasks}; {len(set(needed))} display images in {display_dir}")
    return 0


if __name__ == "__main__":
    from pipeline.core.errors import run_command

    raise SystemExit(run_command(main, "export"))
