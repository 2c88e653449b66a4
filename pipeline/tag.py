"""tag: record a verified release in git as `<name>@v<version>`, the tag DVC artifacts use.

Input: a release folder (its manifest names the artifact and version) and the git repository
that built it. The version is added to the record of released versions (`data_cards/RELEASED.json`,
which the next `package` build compares with), that file alone is committed ("Release
<name>@v<version>"), and the commit gets the annotated tag, whose message holds the sha256 of
the release's SHA256SUMS, so the tag pins every file's bytes and the tagged commit holds its own
release record. An existing tag is never moved. An unreleased build (`<version>-dev`: it differs
from the last released version and its version or changelog does not say so yet) is refused
with the steps that make it releasable; so is a repository with staged changes or uncommitted
edits to the record (the release commit must hold the record and nothing else).
After tagging, `dvc status` reports `package` changed: its dep `data_cards/RELEASED.json` now
names this version. `dvc repro` rebuilds the same release bytes (a build equal to the last
release keeps its version and changes) and updates `dvc.lock`, to be committed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from pipeline import release
from pipeline.atomic import write_bytes
from pipeline.report import summary

STAGE = "tag"


def git_tag_name(name: str, version: str) -> str:
    """The git tag of a release: the DVC artifact name and the version."""
    return f"{name}@v{version}"


def _git(repo: Path, *args: str) -> str:
    """stdout of `git <args>` in `repo`; ReleaseError with git's own message when it fails."""
    result = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise release.ReleaseError(f"git {' '.join(args)} failed in {repo}: {(result.stderr or result.stdout).strip()}")
    return result.stdout


def _record_in_repo(repo: Path, record: Path) -> str:
    """The record's path relative to the repository's top level; ReleaseError when it lies outside."""
    top = Path(_git(repo, "rev-parse", "--show-toplevel").strip()).resolve()
    try:
        return record.resolve().relative_to(top).as_posix()
    except ValueError:
        raise release.ReleaseError(f"the release record {record} is outside the git repository {top}: the tagged "
                                   "commit must hold it; use the repository's own record") from None


def _check_clean(repo: Path, record: str) -> None:
    """Refuse when a commit of the record alone would also take, or leave behind, other changes to it."""
    staged = _git(repo, "diff", "--cached", "--name-only").split()
    if staged:
        raise release.ReleaseError(f"staged changes ({', '.join(staged[:5])}{' ...' if len(staged) > 5 else ''}): the "
                                   "release commit holds the release record only; commit or unstage them "
                                   "(`git restore --staged <file>`) first")
    if _git(repo, "status", "--porcelain", "--", record).strip():
        raise release.ReleaseError(f"{record} has uncommitted changes: commit them or restore it (`git checkout -- "
                                   f"{record}`) first, so that the release commit adds only this version")


def tag(release_dir: str | Path, repo: str | Path = ".", released: str | Path | None = None) -> str:
    """Record a verified, releasable release, commit the record alone and tag that commit in `repo`; return the tag.

    `released` is the record of released versions (default: `data_cards/RELEASED.json` in `repo`),
    a file inside the repository. On any failure the record is left as it was and nothing is tagged.
    """
    repo = Path(repo)
    record = Path(released) if released is not None else repo / release.RELEASED_RECORD
    manifest = release.check_releasable(release_dir, release.read_released(record))
    name = git_tag_name(manifest["name"], manifest["version"])
    if _git(repo, "tag", "--list", name).strip():
        raise release.ReleaseError(f"git tag {name} exists: a released version never changes; bump package.version")
    rel = _record_in_repo(repo, record)
    _check_clean(repo, rel)
    before = record.read_bytes() if record.exists() else None
    try:
        if release.record_release(record, release_dir):
            _git(repo, "add", "--", rel)
            _git(repo, "commit", "-q", "-m", f"Release {name}", "-m", f"Record {manifest['version']} in {rel}.", "--", rel)
        sums = release.file_sha256(Path(release_dir) / release.SUMS)
        _git(repo, "tag", "-a", name, "-m", f"{manifest['name']} {manifest['version']}\n\nSHA256SUMS sha256: {sums}\n")
    except release.ReleaseError:
        if _git(repo, "status", "--porcelain", "--", rel).strip():  # not committed: put the record back
            if before is None:  # it was new (an untracked record is refused above)
                _git(repo, "rm", "-q", "--cached", "--ignore-unmatch", "--", rel)
                record.unlink(missing_ok=True)
            else:
                _git(repo, "reset", "-q", "--", rel)
                write_bytes(record, before)
        raise
    return name


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: `clipblind tag <release> [--repo DIR]`."""
    parser = argparse.ArgumentParser(prog="clipblind tag", description=__doc__.splitlines()[0])
    parser.add_argument("release", help="release folder")
    parser.add_argument("--repo", default=".", help="git repository to tag (default: here)")
    parser.add_argument("--released", help=f"record of released versions, inside the repository (default: "
                                           f"<repo>/{release.RELEASED_RECORD})")
    args = parser.parse_args(argv)
    try:
        name = tag(args.release, args.repo, args.released)
    except release.ReleaseError as err:
        print(f"[{STAGE}] {err}", file=sys.stderr)
        return 1
    record = args.released or release.RELEASED_RECORD
    summary(STAGE, f"committed {record} (\"Release {name}\") and tagged that commit {name}; push both "
                   f"(`git push origin HEAD {name}`). `dvc status` now reports package changed ({record} is its dep): "
                   "`dvc repro` rebuilds the same release bytes and updates dvc.lock; commit it")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
