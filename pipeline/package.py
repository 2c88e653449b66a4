"""package: accepted annotations + images → a versioned, checksummed benchmark release folder.

Inputs: the accepted-annotations table (`accepted`), the images table and the corpus source
(images are re-read and passed through the canonical decode, then encoded exactly as the
display copies annotators judged: `export.display_bytes` with the `export` params), the pairs
table (its metadata: encoders, thresholds, search mode), the mine and ingest metrics (the
funnel), the project CHANGELOG, the card template and the citation
(`data_cards/CITATION.cff`); optionally the blind gate's flags, the diagnose stage's folder
(`<config>.parquet` per configuration of `pipeline.diagnostics.records.CONFIGS`, about exactly the
items released, else a ReleaseError) and the record of released versions
(`data_cards/RELEASED.json`, written by `clipblind tag` and `publish`). Params section `package`
(and `diagnose.text_bias.threshold`, which the card states).
Versions never block a build: one that differs from the last released version is marked
unreleased (`<next>-dev`, manifest `release.todo` says what to do) until `package.version` is
bumped and the CHANGELOG names every change; `tag` and `publish` refuse it until then.
Outputs: the release folder (see `pipeline.release.folder`): Hugging Face parquet with embedded
images and a card, MMVP and MMVP-VLM layouts, webdataset shards, withheld-image list and
fetch script (`pipeline.release.withheld`), each non-empty diagnostics table as a configuration
of its own (summed up in the card), croissant.json (`pipeline.release.croissant`), manifest.json,
CHANGELOG.md, SHA256SUMS.
Metrics: inputs, packaged, rejected, rejected_by_reason (closed set `PackageReject`), items,
images_withheld, version, status (releasable | unreleased | awaiting_annotations), todo,
pending_changes, random_init_encoders, configs (rows per configuration); packaged + rejected == inputs (pairs).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core import schemas
from pipeline.core.config import command_params
from pipeline.core.report import summary, warn, write_headline, write_metrics
from pipeline.diagnostics import records
from pipeline.diagnostics.summary import release_account
from pipeline.images.corpus import Corpus
from pipeline.params import DiagnoseParams, ExportParams, IngestParams, PackageParams
from pipeline.release import card, citation, croissant
from pipeline.release import folder as release
from pipeline.release.encoding import encoding_record
from pipeline.release.items import PackageReject, answer_balance, build_items, released_first_answers
from pipeline.release.versions import VersionPlan, plan_version
from pipeline.vlm.gate_rules import GateDecision, image_encoder

STAGE = "package"


def provenance(pairs_meta: Mapping[str, Any], mine_metrics: Mapping[str, Any], ingest_metrics: Mapping[str, Any],
               accepted_rows: int, export_params: ExportParams, max_pixels: int,
               accept_metrics: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Encoders, thresholds, search mode, the funnel and the annotation figures, as the manifest records them.

    Every count is copied from the metrics file that holds it (ingest, mine, accept; package adds its
    own), so the card renders the numbers the stages' metrics records hold.
    """
    annotation = dict(accept_metrics or {})
    missing = [k for k in (*schemas.ACCEPT_FUNNEL_COUNTS, *schemas.ACCEPT_FIGURES) if accept_metrics and k not in annotation]
    if missing:
        raise release.ReleaseError(f"accept's metrics lack {missing}: rerun the accept stage (`dvc repro accept`) so the card "
                         f"can copy its counts")
    encoders = pairs_meta.get("encoders", {})
    return {
        "encoders": encoders,
        "random_init_encoders": sorted(name for name, d in encoders.items() if d.get("random_init")),
        "clip_threshold": pairs_meta.get("clip_threshold"),
        "dino_threshold": pairs_meta.get("dino_threshold"),
        "search": pairs_meta.get("search", "unknown"),
        # partitioned mode measures its recall against exact search on a sample; the card states it,
        # with its 95 % interval and whether the sample could tell 99 % from 95 % (search_details)
        "search_recall": pairs_meta.get("search_details", {}).get("recall_against_exact"),
        "search_details": dict(pairs_meta.get("search_details", {})),
        "funnel": {
            "corpus_files": ingest_metrics.get("inputs"),
            "images": ingest_metrics.get("accepted"),
            "pairs_possible": mine_metrics.get("pairs_possible"),
            "clip_candidates": mine_metrics.get("clip_candidates"),
            "pairs_mined": mine_metrics.get("pairs"),
            **{f"questions_{k}": annotation.get(k) for k in schemas.ACCEPT_FUNNEL_COUNTS},
            "pairs_accepted_by_annotation": accepted_rows,
        },
        "annotation": {k: annotation.get(k) for k in schemas.ACCEPT_FIGURES},
        "image_encoding": encoding_record(export_params, max_pixels),
    }


def read_diagnostics(folder: str | Path | None) -> dict[str, pa.Table]:
    """The diagnose stage's tables in `folder` (`<config>.parquet` per configuration it wrote); {} when it has none."""
    if folder is None or not Path(folder).is_dir():
        return {}
    paths = {config: Path(folder) / f"{config}.parquet" for config in records.CONFIGS}
    return {config: pq.read_table(path) for config, path in paths.items() if path.exists()}


def spec_for(
    params: PackageParams,
    plan: VersionPlan,
    changelog_text: str,
    provenance_info: Mapping[str, Any],
    gate: GateDecision | None,
    citation_text: str,
    items: Sequence[Mapping[str, Any]] = (),
    diagnostics: Mapping[str, Any] | None = None,
) -> release.ReleaseSpec:
    """What the release says about itself, from the stage's params, its version plan, provenance and diagnostics."""
    return release.ReleaseSpec(
        name=params.name,
        version=plan.version,
        pretty_name=params.pretty_name,
        changelog=tuple(release.sections_up_to(changelog_text, plan.version)),
        provenance=provenance_info,
        citation=citation_text,
        mmvp_vlm_pairs_per_pattern=params.mmvp_vlm_pairs_per_pattern,
        gate=gate.summary if gate else None,
        changes=plan.changes,
        state=plan.state(),
        answer_balance=answer_balance(items, params.option_order_seed) if items else None,
        diagnostics=diagnostics,
    )


def package(
    accepted: pa.Table,
    images: pa.Table,
    read_bytes: Callable[[str], bytes],
    out_dir: str | Path,
    params: PackageParams,
    export_params: ExportParams,
    max_pixels: int,
    changelog_text: str,
    provenance_info: Mapping[str, Any],
    render_card: Callable[[Mapping[str, Any], str], str],
    gate: GateDecision | None = None,
    last: Mapping[str, Any] | None = None,
    citation_text: str = "",
    diagnostics: Mapping[str, pa.Table] | None = None,
    diagnose_params: DiagnoseParams | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Build the release folder, versioned against the last released version `last`; return (manifest, metrics).

    `diagnostics` (configuration → table, from the diagnose stage) ship beside the test split, summed
    up in the card; `diagnose_params` gives the text-bias threshold the card states. Everything is
    computed before the folder is replaced whole, so a refusal leaves the last build as it was.
    """
    items, rejected = build_items(accepted, images, read_bytes, image_encoder(export_params, max_pixels), params, gate,
                                  released_order=released_first_answers(last))
    excluded = [r.pair_id for r in rejected if r.reason == PackageReject.EXCLUDED]
    plan = plan_version(params, changelog_text, last, items, excluded)
    common = {"version": plan.version, "random_init_encoders": provenance_info.get("random_init_encoders", [])}
    if accepted.num_rows == 0:
        # Before anyone annotates, the pipeline still runs end to end: the release says it is pending.
        spec = spec_for(params, plan, changelog_text, provenance_info, gate, citation_text)
        manifest = release.write_awaiting(out_dir, spec)
        metrics = {"inputs": 0, "packaged": 0, "rejected": 0, "rejected_by_reason": {}, "rejects": [], "items": 0,
                   "images_withheld": 0, "status": release.AWAITING, "configs": {}, **common}
        return manifest, metrics
    if not items:
        raise release.ReleaseError(
            f"no pairs to release ({accepted.num_rows} accepted, {len(rejected)} rejected) "
            f"{dict(Counter(r.reason.value for r in rejected))}: fix the rejected pairs (metrics/package.json lists "
            "each with its reason) or annotate and pull more (README: 'Annotate'); an empty release would not even "
            "load with datasets. The last build is left as it was."
        )
    packaged = len({i["pair_id"] for i in items})
    # the funnel's last steps are this stage's own counts: the card and metrics/package.json show one number
    funnel = {**provenance_info.get("funnel", {}), "pairs_packaged": packaged, "pairs_rejected_at_packaging": len(rejected)}
    info = {**provenance_info, "funnel": funnel}
    tables = dict(diagnostics or {})
    if tables and diagnose_params is None:
        raise release.ReleaseError("diagnostics given without the diagnose params: pass diagnose_params (params.yaml "
                                   "section diagnose) so the card states the text-bias threshold")
    release.check_diagnostics(tables, items)
    account = release_account(tables, diagnose_params.text_bias.threshold) if diagnose_params else None
    spec = spec_for(params, plan, changelog_text, info, gate, citation_text, items, account)
    files, manifest = release.render_release(items, spec, render_card, params.shard_size, tables, croissant.describe)
    if last is not None and plan.version == last["version"]:
        # the same version must mean the same bytes: compare the whole release, not only its items
        replan = plan_version(params, changelog_text, last, items, excluded, release.sums_digest(files))
        if replan != plan:
            plan = replan
            spec = spec_for(params, plan, changelog_text, info, gate, citation_text, items, account)
            files, manifest = release.render_release(items, spec, render_card, params.shard_size, tables,
                                                     croissant.describe)
    release.write_files(files, out_dir)
    by_reason = Counter(r.reason.value for r in rejected)
    metrics = {
        "inputs": accepted.num_rows,
        "packaged": packaged,
        "rejected": len(rejected),
        "rejected_by_reason": dict(sorted(by_reason.items())),
        "rejects": [{"pair_id": r.pair_id, "reason": r.reason.value, "detail": r.detail} for r in rejected],
        "items": manifest["counts"]["items"],
        "images_withheld": manifest["counts"]["images_withheld"],
        "status": plan.status,
        "todo": list(plan.todo),
        "pending_changes": {k: len(plan.changes.get(k, ())) for k in ("added_pairs", "removed_pairs", "changed_items",
                                                                      "other_changes")}
        if plan.status == release.UNRELEASED else {},
        "configs": {name: c["rows"] for name, c in manifest["configs"].items()},
        **common,
    }
    return manifest, metrics


def _read_json(path: str | None) -> dict[str, Any]:
    return json.loads(Path(path).read_text()) if path else {}


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: `python -m pipeline.package --accepted A --images T --source S --pairs P --out DIR ...`."""
    parser = argparse.ArgumentParser(prog="clipblind package", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--accepted", required=True, help="accepted-annotations table (parquet)")
    parser.add_argument("--images", required=True)
    parser.add_argument("--source", required=True, nargs="+", help="the corpus source(s) ingest read, as in params")
    parser.add_argument("--pairs", required=True, help="pairs table (its metadata records encoders and thresholds)")
    parser.add_argument("--mine-metrics", help="metrics/mine.json (the funnel)")
    parser.add_argument("--ingest-metrics", help="metrics/ingest.json (the funnel's start)")
    parser.add_argument("--accept-metrics", help="metrics/accept.json (questions written, accepted, pending; "
                                                 "human verification accuracy)")
    parser.add_argument("--changelog", required=True, help="project CHANGELOG with a section per version")
    parser.add_argument("--card-template", default=str(card.DEFAULT_TEMPLATE))
    parser.add_argument("--citation", required=True, help="how to cite the release: a CITATION.cff file, rendered as "
                                                          "BibTeX into the card and manifest (data_cards/CITATION.cff)")
    parser.add_argument("--gate", help="blind-gate flags table (optional)")
    parser.add_argument("--released", help=f"the record of released versions ({release.RELEASED_RECORD}, written by "
                                           "`clipblind tag`/`publish`): a build that differs from the last one is "
                                           "marked unreleased (<version>-dev) until versioned")
    parser.add_argument("--diagnostics", help="the diagnose stage's folder (<config>.parquet per configuration); "
                                              "absent or empty: the release carries no diagnostics and says so")
    parser.add_argument("--out", required=True, help="output release folder")
    parser.add_argument("--metrics", required=True)
    parser.add_argument("--headline", help="output headline metrics JSON (what `dvc metrics show` lists: report.HEADLINES)")
    args = parser.parse_args(argv)
    params = command_params(parser, args.params, STAGE, PackageParams)
    export_params = command_params(parser, args.params, "export", ExportParams)
    ingest_params = command_params(parser, args.params, "ingest", IngestParams)
    accepted = schemas.read_table(args.accepted, "accepted")
    images = schemas.read_table(args.images, "images")
    corpus = Corpus(ingest_params.source, args.source)
    info = provenance(
        schemas.read_meta(args.pairs), _read_json(args.mine_metrics), _read_json(args.ingest_metrics),
        accepted.num_rows, export_params, ingest_params.max_pixels, _read_json(args.accept_metrics),
    )
    gate = None
    if args.gate:
        from pipeline.vlm.gate_rules import load_decision

        gate = load_decision(args.gate, args.params)
    if info["random_init_encoders"]:
        warn(STAGE, f"release mined with RANDOMLY INITIALISED encoders ({', '.join(info['random_init_encoders'])}); "
                    "the card says so at the top")
    last = release.last_released(release.read_released(args.released), params.name) if args.released else None
    tables = read_diagnostics(args.diagnostics)
    diagnose_params = command_params(parser, args.params, "diagnose", DiagnoseParams) if tables else None
    manifest, metrics = package(
        accepted, images, corpus.read, args.out, params, export_params, ingest_params.max_pixels,
        Path(args.changelog).read_text(), info, card.renderer(args.card_template), gate, last,
        citation.bibtex(citation.read_cff(args.citation), args.citation), tables, diagnose_params,
    )
    write_metrics(args.metrics, metrics)
    write_headline(args.headline, STAGE, metrics)
    if metrics.get("status") == release.AWAITING:
        summary(STAGE, f"no accepted annotations yet: {args.out} says so (annotate, pull, then dvc repro)")
        return 0
    extra = [name for name in metrics["configs"] if name != release.DEFAULT_CONFIG]
    summary(
        STAGE,
        f"{metrics['inputs']} accepted pairs → {metrics['packaged']} packaged, {metrics['rejected']} rejected "
        f"{metrics['rejected_by_reason'] or ''}; {params.name} {metrics['version']} ({metrics['status']}) → {args.out}; "
        f"diagnostics configurations: {', '.join(extra) if extra else 'none (diagnose not run)'}",
    )
    for step in metrics["todo"]:
        warn(STAGE, f"unreleased build; to release it: {step}")
    return 0


if __name__ == "__main__":
    from pipeline.core.errors import run_command

    raise SystemExit(run_command(main, "package"))
