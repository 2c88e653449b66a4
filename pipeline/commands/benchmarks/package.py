"""package benchmark: building a release against the image work it cannot avoid, in one run.

Generates the sample corpus, ingests it, pairs consecutive images into accepted annotations,
then times (1) the baseline: the canonical decode + display JPEG encoding of every released
image, the work any packager must do; (2) a full `package` build (every layout, card,
checksums); (3) a second build into another folder (compared byte for byte); (4) `verify`.
Reports the ratio build / baseline: the cost of writing five layouts and SHA256SUMS on top of
producing the images.

usage: clipblind bench package [--scenes 40]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.core import patterns, schemas
from pipeline.images.corpus import Corpus
from pipeline.ingest import ingest
from pipeline.package import package
from pipeline.params import ExportParams, IngestParams, PackageParams, repository_params
from pipeline.release import card
from pipeline.release import folder as release
from pipeline.sample_corpus import generate
from pipeline.vlm.gate_rules import image_encoder

MAX_PIXELS = 50_000_000
CHANGELOG = "# Changelog\n\n## 1.0.0\n\n- Benchmark build.\n"


def accepted_over(image_ids: Sequence[str]) -> pa.Table:
    """Accepted annotations pairing consecutive images (a benchmark's stand-in for annotators)."""
    rows = []
    for k in range(0, len(image_ids) - 1, 2):
        a, b = sorted(image_ids[k : k + 2])
        rows.append({
            "pair_id": schemas.pair_id(a, b), "image_a": a, "image_b": b, "clip_sim": 0.96, "dino_sim": 0.5,
            "pattern": patterns.by_key("color").key, "tags": [], "question": "Is the shape red or blue?", "option_a": "Red", "option_b": "Blue",
            "answer_a": "(a)", "answer_b": "(b)", "statement_a": "The shape is red.", "statement_b": "The shape is blue.",
            "writer": "bench", "verification": "verified", "verifier_answers_a": ["(a)"], "verifier_answers_b": ["(b)"],
        })
    return pa.Table.from_pylist(rows, schema=schemas.ACCEPTED)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(prog="clipblind bench package", description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=40)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="clipblind-bench-package-") as tmp:
        root = Path(tmp)
        generate(root / "corpus", scenes=args.scenes, seed=0)
        ingest_params = repository_params("ingest", IngestParams)
        source = replace(ingest_params.sources[0], kind="folder", name="sample", license="CC0-1.0")
        corpus = Corpus(source, root / "corpus")
        images = ingest(corpus, replace(ingest_params, source=source)).images
        accepted = accepted_over(images.column("image_id").to_pylist())
        export_params = repository_params("export", ExportParams)
        encode = image_encoder(export_params, MAX_PIXELS)
        location = dict(zip(images.column("image_id").to_pylist(), images.column("source_path").to_pylist()))
        needed = accepted.column("image_a").to_pylist() + accepted.column("image_b").to_pylist()

        start = time.perf_counter()
        for image_id in needed:
            encode(corpus.read(location[image_id]))
        baseline = time.perf_counter() - start

        params = replace(repository_params("package", PackageParams), version="1.0.0", shard_size=100)
        render = card.renderer()
        release.features()  # import `datasets` outside the timings (≈ 2 s, once per process)
        provenance: dict[str, Any] = {"encoders": {}, "random_init_encoders": [], "search": "exhaustive", "funnel": {},
                      "clip_threshold": None, "dino_threshold": None,
                      "image_encoding": {"max_side": export_params.display_max_side,
                                         "jpeg_quality": export_params.jpeg_quality, "max_pixels": MAX_PIXELS}}
        timings = []
        for name in ("first", "second"):
            start = time.perf_counter()
            package(accepted, images, corpus.read, root / name, params, export_params, MAX_PIXELS, CHANGELOG,
                    provenance, render)
            timings.append(time.perf_counter() - start)
        start = time.perf_counter()
        report = release.verify(root / "first")
        verify_seconds = time.perf_counter() - start
        first = {p.relative_to(root / "first"): p.read_bytes() for p in (root / "first").rglob("*") if p.is_file()}
        second = {p.relative_to(root / "second"): p.read_bytes() for p in (root / "second").rglob("*") if p.is_file()}
        identical = first == second
        size = sum(len(v) for v in first.values())
    items = len(needed)
    print(f"package bench: {accepted.num_rows} pairs, {items} items, {len(first)} files, {size / 1e6:.1f} MB")
    print(f"  baseline (decode + JPEG encode of every image): {baseline:.2f} s ({items / baseline:.0f} items/s)")
    print(f"  package build: {timings[0]:.2f} s, again {timings[1]:.2f} s ({items / timings[0]:.0f} items/s)")
    print(f"  ratio build / baseline: {timings[0] / baseline:.2f} (first), {timings[1] / baseline:.2f} (second)")
    print(f"  verify: {verify_seconds:.2f} s, ok={report.ok}; two builds byte-identical: {identical}")
    return 0 if identical and report.ok else 1


if __name__ == "__main__":
    from pipeline.core.errors import run_command

    raise SystemExit(run_command(main, "bench package"))
