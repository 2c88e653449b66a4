"""remove: take items out of a release (a takedown request) as a new version with a changelog line.

Input: a release folder, the ids to remove (item ids, pair ids, or image sha256s: the source
file's (`source_sha256`, the pipeline's image id) or the released bytes' (`image_sha256`); a pair leaves
whole, since MMVP scores pairs), a reason. Output: a new release folder whose version is the
next minor (or --bump) version, whose CHANGELOG names every removed pair and item, and whose
manifest lists the changes. The input release is left as it is.
Also add the pair ids to `package.exclude` in params.yaml so the next `dvc repro` keeps them out.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.core.report import summary
from pipeline.release import card
from pipeline.release import folder as release
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
    items = release.read_items(source)
    pairs = resolve(items, ids)
    kept = [i for i in items if i["pair_id"] not in pairs]
    if not kept:
        raise release.ReleaseError(f"removing {len(pairs)} pair(s) would leave {source} with none: nothing to release")
    version = release.bump(manifest["version"], bump_part)
    removed_items = sorted(i["item_id"] for i in items if i["pair_id"] in pairs)
    line = f"- Removed {len(pairs)} pair(s) ({reason.strip()}): " + ", ".join(pairs) + f" (items {', '.join(removed_items)})"
    sections = release.parse_changelog((Path(source) / release.CHANGELOG).read_text())
    new_section = release.ChangelogSection(version, ("", line))
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
    )
    shard_size = manifest["layouts"]["webdataset_shard_size"]
    return release.write_release(out, kept, spec, card.renderer(template), shard_size=shard_size)


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
    summary(STAGE, f"{manifest['name']} {manifest['version']} → {args.out}: removed pairs {', '.join(removed)}; "
                   f"add them to package.exclude in params.yaml and this line to the project CHANGELOG")
    return 0


if __name__ == "__main__":
    from pipeline.core.errors import run_command

    raise SystemExit(run_command(main, "remove"))
