"""remove: take items out of a release (a takedown request) as a new version with a changelog line.

Input: a release folder, the ids to remove (item ids, pair ids, or image sha256s: the source
file's (`source_sha256`, the pipeline's image id) or the released bytes' (`image_sha256`); a pair leaves
whole, since MMVP scores pairs), a reason. Output: a new release folder whose version is the
next minor (or --bump) version, whose CHANGELOG names every removed pair and item, and whose
manifest lists the changes. The input release is left as it is.

The new version keeps what the release says about its items, restricted to the kept pairs: each
diagnostics configuration (`records.CONFIGS`) without the rows about a removed pair (a question's,
an encoder's or a model's), left out where no row is left; the manifest's and card's `diagnostics`
summed up again from the kept rows (`summary.summarise`, with the release's text-bias threshold;
the rows themselves are as the diagnose stage computed them); `answer_balance` counted again over
the kept items with the release's seed (a removal never changes the option order of a kept pair, so
the letters may end up unbalanced, and the card says by how much); croissant.json written anew;
SHA256SUMS over all of it.
A release built before the diagnostics existed (no configurations beside the items, no
`answer_balance` in its manifest, items without `options_swapped`) is removable too: its derived
version carries no diagnostics (the card says they were not run), no answer balance (the card says
the release does not record it; its options were never reordered, so each item gets
`options_swapped` false), and a croissant.json describing it.
Also add the pair ids to `package.exclude` in params.yaml so the next `dvc repro` keeps them out.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core.report import summary
from pipeline.diagnostics.summary import release_account
from pipeline.release import card, croissant
from pipeline.release import folder as release
from pipeline.release.items import answer_balance
from pipeline.release.versions import diff_against

STAGE = "remove"


def resolve(items: Sequence[dict[str, Any]], ids: Sequence[str]) -> list[str]:
    """The pair ids that `ids` (item ids, pair ids, source or released image sha256s) name; ReleaseError for an unknown id."""
    by_key: dict[str, str] = {}
    for item in items:
        for key in (item["item_id"], item["pair_id"], item["source_sha256"], item["image_sha256"]):
            if key:  # image_sha256 is null for a withheld image
                by_key[key] = item["pair_id"]
    unknown = [i for i in ids if i not in by_key]
    if unknown:
        raise release.ReleaseError(f"not in this release: {unknown} (give item ids, pair ids or image sha256s)")
    return sorted({by_key[i] for i in ids})


def without_pairs(tables: Mapping[str, pa.Table], pairs: Sequence[str]) -> dict[str, pa.Table]:
    """Each diagnostics table without its rows about `pairs` (every configuration's rows name their pair)."""
    gone = pa.array(sorted(pairs), pa.string())
    return {config: table.filter(pc.invert(pc.is_in(table.column("pair_id"), value_set=gone)))
            for config, table in tables.items()}


def kept_diagnostics(manifest: Mapping[str, Any], tables: Mapping[str, pa.Table]) -> dict[str, Any] | None:
    """What the derived version says about its kept diagnostics tables: summed up again, with the release's threshold."""
    if not tables:
        return None
    said = manifest.get("diagnostics") or {}
    if "text_bias_threshold" not in said:
        raise release.ReleaseError(f"the release carries diagnostics configurations ({', '.join(tables)}) but its "
                                   "manifest has no diagnostics summary with their text_bias_threshold: it was not "
                                   "written by `clipblind package`; rebuild it with `dvc repro package`")
    return release_account(tables, said["text_bias_threshold"])


def kept_balance(manifest: Mapping[str, Any], kept: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Where the kept items' answers sit, with the release's seed; None for a release that does not record it."""
    balance = manifest.get("answer_balance")
    return answer_balance(kept, balance["seed"]) if balance else None


def remove(source: str | Path, out: str | Path, ids: Sequence[str], reason: str, bump_part: str = "minor",
           template: str | Path = card.DEFAULT_TEMPLATE) -> dict[str, Any]:
    """Write the release at `source` minus the pairs `ids` name as a new version at `out`; return its manifest."""
    if not reason.strip():
        raise release.ReleaseError("give a reason (it becomes the changelog line), e.g. --reason 'takedown request #12'")
    report = release.verify(source)
    if not report.ok:
        raise release.ReleaseError(f"{source} fails verification; restore it before deriving a new version")
    if Path(out).resolve() == Path(source).resolve():
        raise release.ReleaseError("--out must differ from the source release: a version is never rewritten in place")
    manifest = release.read_manifest(source)
    # a release built before answer balance never reordered options: each item's are as written
    items = [{"options_swapped": False, **i} for i in release.read_items(source)]
    pairs = resolve(items, ids)
    kept = [i for i in items if i["pair_id"] not in pairs]
    if not kept:
        raise release.ReleaseError(f"removing {len(pairs)} pair(s) would leave {source} with none: nothing to release")
    version = release.bump(manifest["version"], bump_part)
    removed_items = sorted(i["item_id"] for i in items if i["pair_id"] in pairs)
    line = f"- Removed {len(pairs)} pair(s) ({reason.strip()}): " + ", ".join(pairs) + f" (items {', '.join(removed_items)})"
    sections = release.parse_changelog((Path(source) / release.CHANGELOG).read_text())
    new_section = release.ChangelogSection(version, ("", line))
    tables = without_pairs(release.read_diagnostics(source), pairs)
    changes = diff_against(items, kept)
    changes["previous_version"] = manifest["version"]
    spec = release.ReleaseSpec(
        name=manifest["name"],
        version=version,
        pretty_name=manifest["pretty_name"],
        changelog=(new_section, *sections),
        provenance=manifest["provenance"],
        citation=manifest.get("citation", ""),
        gate=manifest.get("gate"),
        changes=changes,
        answer_balance=kept_balance(manifest, kept),
        diagnostics=kept_diagnostics(manifest, tables),
    )
    shard_size = manifest["layouts"]["webdataset_shard_size"]
    return release.write_release(out, kept, spec, card.renderer(template), shard_size, tables, croissant.describe)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: `clipblind remove <release> --ids ID... --reason TEXT --out NEW`."""
    parser = argparse.ArgumentParser(prog="clipblind remove", description=__doc__.splitlines()[0])
    parser.add_argument("release", help="the current release folder (left unchanged)")
    parser.add_argument("--ids", nargs="+", required=True, help="item ids, pair ids or image sha256s to remove")
    parser.add_argument("--reason", required=True, help="why (the changelog line), e.g. 'takedown request #12'")
    parser.add_argument("--out", required=True, help="folder for the new version")
    parser.add_argument("--bump", choices=("major", "minor", "patch"), default="minor")
    parser.add_argument("--card-template", default=str(card.DEFAULT_TEMPLATE))
    args = parser.parse_args(argv)
    manifest = remove(args.release, args.out, args.ids, args.reason, args.bump, args.card_template)
    removed = manifest["changes"]["removed_pairs"]
    configs = [f"{name} ({c['rows']} rows)" for name, c in manifest["configs"].items() if name != release.DEFAULT_CONFIG]
    summary(STAGE, f"{manifest['name']} {manifest['version']} → {args.out}: removed pairs {', '.join(removed)}, "
                   f"diagnostics kept: {', '.join(configs) or 'none'}; add the removed pairs to package.exclude "
                   "in params.yaml and this line to the project CHANGELOG")
    return 0


if __name__ == "__main__":
    from pipeline.core.errors import run_command

    raise SystemExit(run_command(main, "remove"))
