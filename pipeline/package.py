"""package: accepted annotations + images → a versioned, checksummed benchmark release folder.

Inputs: the accepted-annotations table (`accepted`), the images table and the corpus source
(images are re-read and passed through the canonical decode, then encoded exactly as the
display copies annotators judged: `export.display_bytes` with the `export` params), the pairs
table (its metadata: encoders, thresholds, search mode), the mine and ingest metrics (the
funnel), the project CHANGELOG and the card template; optionally the blind gate's flags and
the previous release (to name every change since it). Params section `package`.
Outputs: the release folder (see `pipeline.release`): Hugging Face parquet with embedded
images and a card, MMVP and MMVP-VLM layouts, webdataset shards, withheld-image list and
fetch script, manifest.json, CHANGELOG.md, SHA256SUMS.
Metrics: inputs, packaged, rejected, rejected_by_reason (closed set `PackageReject`), items,
images_withheld, version, random_init_encoders; packaged + rejected == inputs (pairs).
"""

from __future__ import annotations

import argparse
import enum
import json
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pyarrow as pa

from pipeline import card, mmvp, release, schemas
from pipeline.config import load_section
from pipeline.corpus import Corpus
from pipeline.decode import DecodeError
from pipeline.export import ExportParams, display_bytes
from pipeline.ingest import IngestParams
from pipeline.report import progress, summary, warn, write_metrics

STAGE = "package"


@dataclass(frozen=True)
class PackageParams:
    """Params of the package stage (section `package`)."""

    version: str  # semantic version of this release; CHANGELOG needs a section for it
    name: str = "clipblind-benchmark"
    pretty_name: str = "clipblind CLIP-blind pairs"
    # Source licences (SPDX ids) whose images may be redistributed as bytes; others are withheld.
    redistributable_licenses: tuple[str, ...] = ("CC0-1.0", "PDDL-1.0", "CC-BY-4.0", "CC-BY-SA-4.0")
    exclude: tuple[str, ...] = ()  # pair ids or image sha256s taken down (each needs a changelog line)
    shard_size: int = 1000  # webdataset items per tar shard
    citation: str = ""


class PackageReject(str, enum.Enum):
    """Why an accepted pair was not packaged. Closed set."""

    UNKNOWN_PATTERN = "unknown_pattern"
    BAD_ANSWERS = "bad_answers"  # not "(a)"/"(b)", or the same for both images
    EMPTY_TEXT = "empty_text"  # question or an option is blank
    DUPLICATE_PAIR = "duplicate_pair"
    MISSING_IMAGE = "missing_image"  # image id not in the images table
    UNREADABLE_IMAGE = "unreadable_image"  # corpus bytes could not be read or decoded
    EXCLUDED = "excluded"  # taken down (params package.exclude)
    GATE_DROPPED = "gate_dropped"  # flagged by the blind gate and the gate drops flagged items


@dataclass(frozen=True)
class Rejected:
    """An accepted pair left out of the release, with the reason and what to fix."""

    pair_id: str
    reason: PackageReject
    detail: str


@dataclass(frozen=True)
class GateDecision:
    """The blind gate's verdict: flags per item_id, pairs to drop, and its summary for the card."""

    flags: Mapping[str, tuple[str, ...]]
    drop_pairs: frozenset[str]
    summary: Mapping[str, Any]


def image_encoder(export_params: ExportParams, max_pixels: int) -> Callable[[bytes], bytes]:
    """Original bytes → released image bytes: the canonical decode, encoded as the annotators' display copy."""

    def encode(data: bytes) -> bytes:
        return display_bytes(data, export_params, max_pixels)

    return encode


def build_items(
    accepted: pa.Table,
    images: pa.Table,
    read_bytes: Callable[[str], bytes],
    encode: Callable[[bytes], bytes],
    params: PackageParams,
    gate: GateDecision | None = None,
) -> tuple[list[dict[str, Any]], list[Rejected]]:
    """Release items (two per accepted pair) and the pairs left out, each with its reason."""
    image_rows = {r["image_id"]: r for r in images.to_pylist()}
    excluded = set(params.exclude)
    allowed = {lic.lower() for lic in params.redistributable_licenses}
    items: list[dict[str, Any]] = []
    rejected: list[Rejected] = []
    seen: set[str] = set()
    rows = sorted(accepted.to_pylist(), key=lambda r: r["pair_id"])
    for row in progress(rows, desc="package", unit="pair"):
        pair_id = row["pair_id"]
        problem = _check_row(row, seen, excluded, image_rows, gate)
        seen.add(pair_id)
        if problem is not None:
            rejected.append(Rejected(pair_id, *problem))
            continue
        pattern = mmvp.canonical_pattern(row["pattern"])
        has_statements = bool((row["statement_a"] or "").strip() and (row["statement_b"] or "").strip())
        pair_items = []
        try:
            for member in release.MEMBERS:
                image_id = row[f"image_{member}"]
                meta = image_rows[image_id]
                redistributed = (meta["source_license"] or "").lower() in allowed
                image = encode(read_bytes(meta["source_path"])) if redistributed else None
                item_id = f"{pair_id}-{member}"
                pair_items.append(
                    {
                        "item_id": item_id,
                        "pair_id": pair_id,
                        "member": member,
                        "image": image,
                        "image_sha256": image_id,
                        "question": row["question"].strip(),
                        "options": [row["option_a"].strip(), row["option_b"].strip()],
                        "answer": row[f"answer_{member}"],
                        "pattern": pattern,
                        "tags": sorted({mmvp.canonical_pattern(t) for t in row["tags"] if t.strip()} - {pattern}),
                        "statement": row[f"statement_{member}"].strip() if has_statements else None,
                        "source": meta["source"],
                        "source_path": meta["source_path"],
                        "source_license": meta["source_license"],
                        "redistributed": redistributed,
                        "clip_sim": float(row["clip_sim"]),
                        "dino_sim": float(row["dino_sim"]),
                        "verification": row["verification"],
                        "verifier_answers": list(row[f"verifier_answers_{member}"]),
                        "gate_flags": sorted(gate.flags.get(item_id, ())) if gate else [],
                    }
                )
        except (DecodeError, OSError) as err:
            rejected.append(Rejected(pair_id, PackageReject.UNREADABLE_IMAGE, f"{err}; check the corpus and rerun ingest"))
            continue
        except mmvp.PatternError as err:
            rejected.append(Rejected(pair_id, PackageReject.UNKNOWN_PATTERN, f"tags: {err}"))
            continue
        items.extend(pair_items)
    return items, rejected


def _check_row(
    row: Mapping[str, Any], seen: set[str], excluded: set[str], image_rows: Mapping[str, Any], gate: GateDecision | None
) -> tuple[PackageReject, str] | None:
    pair_id = row["pair_id"]
    if pair_id in seen:
        return PackageReject.DUPLICATE_PAIR, "the accepted table holds this pair twice; keep one row"
    if pair_id in excluded or row["image_a"] in excluded or row["image_b"] in excluded:
        return PackageReject.EXCLUDED, "listed in package.exclude"
    if gate is not None and pair_id in gate.drop_pairs:
        return PackageReject.GATE_DROPPED, "flagged by the blind gate (gate.flagged: drop)"
    try:
        mmvp.canonical_pattern(row["pattern"])
    except mmvp.PatternError as err:
        return PackageReject.UNKNOWN_PATTERN, str(err)
    answers = (row["answer_a"], row["answer_b"])
    if not all(a in mmvp.ANSWERS for a in answers) or answers[0] == answers[1]:
        return PackageReject.BAD_ANSWERS, f"answers {answers}: each must be (a) or (b) and they must differ"
    if not all((row[k] or "").strip() for k in ("question", "option_a", "option_b")):
        return PackageReject.EMPTY_TEXT, "question and both options must be non-empty"
    for member in release.MEMBERS:
        if row[f"image_{member}"] not in image_rows:
            return PackageReject.MISSING_IMAGE, f"image_{member} {row[f'image_{member}']} is not in the images table"
    return None


# Fields whose change alters what a score means: each change must be named in the changelog.
COMPARED_FIELDS = ("image_sha256", "question", "options", "answer", "pattern", "statement")


def diff_against(previous: Sequence[Mapping[str, Any]], items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Pairs added and removed, and items whose compared fields changed, since `previous`."""
    old = {i["item_id"]: i for i in previous}
    new = {i["item_id"]: i for i in items}
    old_pairs = {i["pair_id"] for i in previous}
    new_pairs = {i["pair_id"] for i in items}
    changed = {
        item_id: [f for f in COMPARED_FIELDS if old[item_id][f] != new[item_id][f]]
        for item_id in sorted(old.keys() & new.keys())
    }
    return {
        "added_pairs": sorted(new_pairs - old_pairs),
        "removed_pairs": sorted(old_pairs - new_pairs),
        "changed_items": {k: v for k, v in changed.items() if v},
    }


def check_changes(changes: Mapping[str, Any], section: release.ChangelogSection, previous_version: str,
                  version: str) -> None:
    """Refuse a silent change: every changed or removed pair must be named in this version's changelog."""
    touched = set(changes["removed_pairs"]) | {i.rsplit("-", 1)[0] for i in changes["changed_items"]}
    if not touched and not changes["added_pairs"]:
        return
    if release.check_version(version) <= release.check_version(previous_version):
        raise release.ReleaseError(
            f"items changed since {previous_version} but the version is {version}: bump package.version"
        )
    text = "\n".join(section.lines)
    unnamed = sorted(p for p in touched if p not in text)
    if unnamed:
        raise release.ReleaseError(
            f"CHANGELOG section {version} does not name these changed or removed pairs: {unnamed}; "
            "add a line per change (e.g. '- corrected the answer of pair <pair_id>')"
        )


def provenance(pairs_meta: Mapping[str, Any], mine_metrics: Mapping[str, Any], ingest_metrics: Mapping[str, Any],
               accepted_rows: int, export_params: ExportParams, max_pixels: int) -> dict[str, Any]:
    """Encoders, thresholds, search mode and the mining funnel, as the manifest records them."""
    encoders = pairs_meta.get("encoders", {})
    return {
        "encoders": encoders,
        "random_init_encoders": sorted(name for name, d in encoders.items() if d.get("random_init")),
        "clip_threshold": pairs_meta.get("clip_threshold"),
        "dino_threshold": pairs_meta.get("dino_threshold"),
        "search": pairs_meta.get("search", "unknown"),
        # partitioned mode measures its recall against exact search on a sample; the card states it
        "search_recall": pairs_meta.get("search_details", {}).get("recall_against_exact"),
        "funnel": {
            "corpus_files": ingest_metrics.get("inputs"),
            "images": ingest_metrics.get("accepted"),
            "pairs_possible": mine_metrics.get("pairs_possible"),
            "clip_candidates": mine_metrics.get("clip_candidates"),
            "pairs_mined": mine_metrics.get("pairs"),
            "pairs_accepted_by_annotation": accepted_rows,
        },
        "image_encoding": {
            "decode": "canonical (EXIF-upright 8-bit RGB)",
            "max_side": export_params.display_max_side,
            "jpeg_quality": export_params.jpeg_quality,
            "max_pixels": max_pixels,
        },
    }


def spec_for(
    params: PackageParams,
    sections: Sequence[release.ChangelogSection],
    provenance_info: Mapping[str, Any],
    gate: GateDecision | None,
    changes: Mapping[str, Any],
) -> release.ReleaseSpec:
    """What the release says about itself, from the stage's params and provenance."""
    return release.ReleaseSpec(
        name=params.name,
        version=params.version,
        pretty_name=params.pretty_name,
        changelog=tuple(sections),
        provenance=provenance_info,
        citation=params.citation,
        gate=gate.summary if gate else None,
        changes=changes,
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
    previous: str | Path | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Build the release folder; return (manifest, metrics)."""
    sections = release.changelog_for(changelog_text, params.version)
    items, rejected = build_items(accepted, images, read_bytes, image_encoder(export_params, max_pixels), params, gate)
    changes: dict[str, Any] = {}
    if previous is not None and not release.is_awaiting(previous):
        prev_manifest = release.read_manifest(previous)
        diff = diff_against(release.read_items(previous), items)
        current = next(s for s in sections if s.version == params.version)
        check_changes(diff, current, prev_manifest["version"], params.version)
        if prev_manifest["version"] == params.version:
            # a rebuild of the same version (same items): it keeps the record of what changed since its predecessor
            changes = dict(prev_manifest.get("changes", {}))
        else:
            changes = {**diff, "previous_version": prev_manifest["version"]}
    if accepted.num_rows == 0:
        # Before anyone annotates, the pipeline still runs end to end: the release says it is pending.
        manifest = release.write_awaiting(out_dir, spec_for(params, sections, provenance_info, gate, changes))
        metrics = {"inputs": 0, "packaged": 0, "rejected": 0, "rejected_by_reason": {}, "rejects": [], "items": 0,
                   "images_withheld": 0, "version": params.version, "status": release.AWAITING,
                   "random_init_encoders": provenance_info.get("random_init_encoders", [])}
        return manifest, metrics
    if not items:
        raise release.ReleaseError(
            f"no pairs to release ({accepted.num_rows} accepted, {len(rejected)} rejected): annotate and pull "
            "pairs first (README: 'Annotate'); an empty release would not even load with datasets"
        )
    excluded = [r.pair_id for r in rejected if r.reason == PackageReject.EXCLUDED]
    if excluded:
        # a takedown stays excluded in later versions: any section up to this one may name it
        all_lines = "\n".join(line for s in sections for line in s.lines)
        unnamed = [p for p in excluded if p not in all_lines]
        if unnamed:
            raise release.ReleaseError(
                f"pairs {unnamed} are excluded (package.exclude) but no CHANGELOG section names them: "
                "add a line such as '- removed pair <pair_id> (takedown request)'"
            )
    spec = spec_for(params, sections, provenance_info, gate, changes)
    manifest = release.write_release(out_dir, items, spec, render_card, params.shard_size)
    by_reason = Counter(r.reason.value for r in rejected)
    metrics = {
        "inputs": accepted.num_rows,
        "packaged": manifest["counts"]["pairs"],
        "rejected": len(rejected),
        "rejected_by_reason": dict(sorted(by_reason.items())),
        "rejects": [{"pair_id": r.pair_id, "reason": r.reason.value, "detail": r.detail} for r in rejected],
        "items": manifest["counts"]["items"],
        "images_withheld": manifest["counts"]["images_withheld"],
        "version": params.version,
        "random_init_encoders": provenance_info.get("random_init_encoders", []),
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
    parser.add_argument("--changelog", required=True, help="project CHANGELOG with a section per version")
    parser.add_argument("--card-template", default=str(card.DEFAULT_TEMPLATE))
    parser.add_argument("--gate", help="blind-gate flags table (optional)")
    parser.add_argument("--previous", help="the previous release folder: every change since must be in the changelog "
                                           "(default: the release already in --out, if any)")
    parser.add_argument("--out", required=True, help="output release folder")
    parser.add_argument("--metrics", required=True)
    args = parser.parse_args(argv)
    params = load_section(args.params, STAGE, PackageParams)
    export_params = load_section(args.params, "export", ExportParams)
    ingest_params = load_section(args.params, "ingest", IngestParams)
    accepted = schemas.read_table(args.accepted, "accepted")
    images = schemas.read_table(args.images, "images")
    corpus = Corpus(ingest_params.source, args.source)
    info = provenance(
        schemas.read_meta(args.pairs), _read_json(args.mine_metrics), _read_json(args.ingest_metrics),
        accepted.num_rows, export_params, ingest_params.max_pixels,
    )
    gate = None
    if args.gate:
        from pipeline.gate import load_decision

        gate = load_decision(args.gate, args.params)
    if info["random_init_encoders"]:
        warn(STAGE, f"release mined with RANDOMLY INITIALISED encoders ({', '.join(info['random_init_encoders'])}); "
                    "the card says so at the top")
    previous = args.previous
    if previous is None and (Path(args.out) / release.MANIFEST).exists():
        previous = args.out  # the last build: a version's items never change silently (dvc.yaml: persist)
    try:
        manifest, metrics = package(
            accepted, images, corpus.read, args.out, params, export_params, ingest_params.max_pixels,
            Path(args.changelog).read_text(), info, card.renderer(args.card_template), gate, previous,
        )
    except release.ReleaseError as err:
        print(f"[{STAGE}] ERROR: {err}", file=sys.stderr)
        return 1
    write_metrics(args.metrics, metrics)
    if metrics.get("status") == release.AWAITING:
        summary(STAGE, f"no accepted annotations yet: {args.out} says so (annotate, pull, then dvc repro)")
        return 0
    summary(
        STAGE,
        f"{metrics['inputs']} accepted pairs → {metrics['packaged']} packaged, {metrics['rejected']} rejected "
        f"{metrics['rejected_by_reason'] or ''}; {params.name} {params.version} → {args.out}",
    )
    return 0


def fetch_main(release_dir: Path, argv: Sequence[str]) -> int:
    """`fetch_images.py --root SOURCE=PATH_OR_URL`: fetch a release's withheld images into place."""
    parser = argparse.ArgumentParser(prog="fetch_images.py", description="fetch this release's withheld images")
    parser.add_argument("--root", action="append", default=[], metavar="SOURCE=PATH_OR_URL", required=True)
    args = parser.parse_args(argv)
    roots = {}
    for value in args.root:
        name, sep, where = value.partition("=")
        if not sep:
            parser.error(f"--root {value!r}: write SOURCE=PATH_OR_URL (sources: see withheld.csv)")
        roots[name] = where
    encoding = release.read_manifest(release_dir)["provenance"]["image_encoding"]
    export_params = ExportParams(display_max_side=encoding["max_side"], jpeg_quality=encoding["jpeg_quality"])
    try:
        counts = release.fetch_withheld(release_dir, roots, image_encoder(export_params, encoding["max_pixels"]))
    except release.FetchError as err:
        print(err)
        return 1
    print(f"fetched {counts.get('fetched', 0)} withheld images into {release_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
