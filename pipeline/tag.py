"""tag: record a verified release in git as `<name>@v<version>`, the tag DVC artifacts use.

Input: a release folder (its manifest names the artifact and version) and the git repository
that built it. The tag is annotated with the sha256 of the release's SHA256SUMS, so the tag
pins every file's bytes. An existing tag is never moved. An unreleased build (`<version>-dev`:
it differs from the last released version and its version or changelog does not say so yet)
is refused with the steps that make it releasable.
Output: the tag, and the version added to the record of released versions
(`data_cards/RELEASED.json`), which the next `package` build compares with: commit it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from pipeline import release
from pipeline.report import summary

STAGE = "tag"


def git_tag_name(name: str, version: str) -> str:
    """The git tag of a release: the DVC artifact name and the version."""
    return f"{name}@v{version}"


def tag(release_dir: str | Path, repo: str | Path = ".", released: str | Path | None = None) -> str:
    """Create the annotated git tag of a verified, releasable release in `repo` and record it; return its name.

    `released` is the record of released versions (default: `data_cards/RELEASED.json` in `repo`).
    """
    record = Path(released) if released is not None else Path(repo) / release.RELEASED_RECORD
    manifest = release.check_releasable(release_dir, release.read_released(record))
    name = git_tag_name(manifest["name"], manifest["version"])
    existing = subprocess.run(["git", "-C", str(repo), "tag", "--list", name], capture_output=True, text=True, check=True)
    if existing.stdout.strip():
        raise release.ReleaseError(f"git tag {name} exists: a released version never changes; bump package.version")
    sums = release.file_sha256(Path(release_dir) / release.SUMS)
    message = f"{manifest['name']} {manifest['version']}\n\nSHA256SUMS sha256: {sums}\n"
    subprocess.run(["git", "-C", str(repo), "tag", "-a", name, "-m", message], check=True, capture_output=True)
    release.record_release(record, release_dir)
    return name


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: `clipblind tag <release> [--repo DIR]`."""
    parser = argparse.ArgumentParser(prog="clipblind tag", description=__doc__.splitlines()[0])
    parser.add_argument("release", help="release folder")
    parser.add_argument("--repo", default=".", help="git repository to tag (default: here)")
    parser.add_argument("--released", help=f"record of released versions (default: <repo>/{release.RELEASED_RECORD})")
    args = parser.parse_args(argv)
    try:
        name = tag(args.release, args.repo, args.released)
    except (release.ReleaseError, subprocess.CalledProcessError) as err:
        print(f"[{STAGE}] {err}", file=sys.stderr)
        return 1
    record = args.released or release.RELEASED_RECORD
    summary(STAGE, f"tagged {name} and recorded it in {record}; commit that file "
                   f"(`git add {record} && git commit -m 'Release {name}'`) and push the tag (`git push origin {name}`)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
