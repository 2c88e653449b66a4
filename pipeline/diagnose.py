"""diagnose: why models fail, per question, on exactly the items the release will hold.

Inputs: the accepted-annotations table, the images table and the corpus source, the blind gate's
flags, the record of released versions: the release's items are built as `package` builds them (`release.items.build_items`: same
text, option order, image bytes), so every diagnostic is about what is released. Params sections
`diagnose` (shuffle grids and seeds, the encoder verdict, the text-bias audit), `evaluate.vlm` (the
models asked), `embed.clip` and `embed.dino` (the encoders judged), and those `package` reads.
Outputs: a folder with one parquet per table of `pipeline.diagnostics.records.CONFIGS`
(`diagnostics`, `encoders`, `models`, `predictions`; `package` ships the non-empty ones as release
configurations) and `summary.json`; the markdown report; a response cache per VLM shared with
`evaluate` (a question asked here is not asked again there).
Metrics: pairs, questions, pairs skipped (and why), per model its calls and calls per question, and
the summary (`pipeline.diagnostics.summary`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from pipeline.core import schemas
from pipeline.core.atomic import write_bytes
from pipeline.core.config import command_params
from pipeline.core.report import summary, warn, write_headline, write_metrics
from pipeline.diagnostics import report
from pipeline.diagnostics.features import feature_encoders
from pipeline.diagnostics.run import Diagnostics, diagnose, write_diagnostics
from pipeline.images.corpus import Corpus
from pipeline.params import DiagnoseParams, EmbedParams, EvaluateParams, ExportParams, IngestParams, PackageParams
from pipeline.release import folder as release
from pipeline.release.items import build_items, released_first_answers
from pipeline.vlm.backends import CachedBackend, cached_backend, load_backend
from pipeline.vlm.gate_rules import image_encoder, load_decision
from pipeline.vlm.pairs import pairs_from_items

STAGE = "diagnose"


def headline(result: Diagnostics, pairs: int, questions: int, backends: Sequence[CachedBackend]) -> dict[str, Any]:
    """The stage's metrics: counts, skipped pairs, per model its answers (`calls`), the calls this run made (the rest
    came from the reply cache) and calls per question, the summary."""
    made = {b.name: b.calls for b in backends}
    return {"pairs": pairs, "questions": questions, "skipped": result.skipped,
            "models": {m: {"calls": s["calls"], "new_calls": made.get(m, 0), "calls_per_question": s["calls_per_question"]}
                       for m, s in result.summary["models"].items()},
            "text_bias_flagged": len(result.summary["text_bias"]["flagged"]), "summary": result.summary}


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: `python -m pipeline.diagnose --accepted A --images T --source S --gate G --out DIR ...`."""
    parser = argparse.ArgumentParser(prog="clipblind diagnose", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--accepted", required=True, help="accepted-annotations table (parquet)")
    parser.add_argument("--images", required=True)
    parser.add_argument("--source", required=True, nargs="+", help="the corpus source(s) ingest read, as in params")
    parser.add_argument("--gate", help="blind-gate flags table (as package reads it)")
    parser.add_argument("--released", help="the record of released versions (as package reads it: pairs already released "
                                           "keep their option order)")
    parser.add_argument("--out", required=True, help="output folder: a parquet per diagnostics table, summary.json")
    parser.add_argument("--report", help="output markdown report")
    parser.add_argument("--metrics", required=True)
    parser.add_argument("--headline", help="output headline metrics JSON (what `dvc metrics show` lists: report.HEADLINES)")
    parser.add_argument("--cache", default=".cache/evaluate", help="folder of VLM response caches, shared with evaluate")
    args = parser.parse_args(argv)
    params = command_params(parser, args.params, STAGE, DiagnoseParams)
    package_params = command_params(parser, args.params, "package", PackageParams)
    export_params = command_params(parser, args.params, "export", ExportParams)
    ingest_params = command_params(parser, args.params, "ingest", IngestParams)
    embed_params = command_params(parser, args.params, "embed", EmbedParams)
    models = command_params(parser, args.params, "evaluate", EvaluateParams).vlm
    accepted = schemas.read_table(args.accepted, "accepted")
    images = schemas.read_table(args.images, "images")
    gate = load_decision(args.gate, args.params) if args.gate else None
    corpus = Corpus(ingest_params.source, args.source)
    last = release.last_released(release.read_released(args.released), package_params.name) if args.released else None
    items, rejected = build_items(accepted, images, corpus.read, image_encoder(export_params, ingest_params.max_pixels),
                                  package_params, gate, released_order=released_first_answers(last))
    pairs = pairs_from_items(items)
    encoders = feature_encoders(embed_params.clip, embed_params.dino) if pairs else []
    for encoder in encoders:
        if encoder.random_init:
            warn(STAGE, f"{encoder.name} has RANDOMLY INITIALISED weights: its verdicts check the pipeline, not the pairs")
    backends = [cached_backend(load_backend(p), args.cache) for p in models]
    result = diagnose(pairs, backends, encoders, params)
    write_diagnostics(result, args.out)
    if args.report:
        write_bytes(args.report, report.markdown(result.summary, [b.name for b in backends]).encode())
    metrics = headline(result, len(pairs), len(items), backends)
    metrics["rejected_pairs"] = len(rejected)  # package counts and names them
    write_metrics(args.metrics, metrics)
    write_headline(args.headline, STAGE, metrics)
    per_model = ", ".join(f"{m}: {s['calls_per_question']} calls per question ({metrics['models'][m]['new_calls']} new)"
                          for m, s in result.summary["models"].items())
    summary(STAGE, f"{len(pairs)} pairs, {len(items)} questions → {len(encoders)} encoders judged, "
                   f"{per_model or report.why_no_model([b.name for b in backends])}, "
                   f"{len(result.summary['text_bias']['flagged'])} questions flagged by the text-only audit → {args.out}")
    return 0


if __name__ == "__main__":
    from pipeline.core.errors import run_command

    raise SystemExit(run_command(main, "diagnose"))
