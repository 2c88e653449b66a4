"""tag: record a verified release in git as `<name>@v<version>`, the tag DVC artifacts use.

Input: a release folder (its manifest names the artifact and version) and the git repository
that built it. The version is added to the record of released versions (`data_cards/RELEASED.json`,
which the next `package` build compares with), that file alone is committed ("Release
<name>@v<version>"), and the commit gets the annotated tag, whose message holds the sha256 of
the release's SHA256SUMS, so the tag pins every file's bytes and the tagged commit holds its own
release record. An existing tag is never moved. An unreleased build (`<version>-dev`: it differs
from the last released version and its version or changelog does not say so yet) is refused
with the steps that make it releasable. The tagged commit must rebuild the release, so tagging
is refused, naming the files and the fix, while any tracked file has uncommitted changes (the
record's own aside: the release commit holds the record and nothing else), and, in a DVC
repository, while the release is not what the committed pipeline produces: it must be an output
of a stage in dvc.lock, and `dvc status --with-deps` of that stage must be clean (inputs,
params, code and outputs as dvc.lock records them). `clipblind publish` records its version
through the same steps (`check_committed`, `commit_record`).
After tagging, `dvc status` reports `diagnose` and `package` changed: their dep
`data_cards/RELEASED.json` now names this version. `dvc repro` rebuilds the same release bytes (a build equal to the last
release keeps its version and changes) and updates `dvc.lock`, to be committed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from pipeline.core.atomic import write_bytes
from pipeline.core.report import summary
from pipeline.release import folder as release

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


def _listed(paths: Sequence[str]) -> str:
    return ", ".join(paths[:8]) + (f" and {len(paths) - 8} more" if len(paths) > 8 else "")


# What the README's Versions section says to do, in order; the refusals point at it.
SEQUENCE = ("set package.version in params.yaml, add its section to data_cards/CHANGELOG.md, `dvc repro`, commit "
            "everything it changed (`git commit -a`: params.yaml, data_cards/CHANGELOG.md, labels/, dvc.lock, metrics/), "
            "`clipblind tag data/release`, "
            "`git push origin HEAD <tag>`")


def _check_clean(repo: Path, record: str) -> None:
    """Refuse when the commit of the record alone would leave other changes out of the tagged commit."""
    staged = _git(repo, "diff", "--cached", "--name-only").split()
    if staged:
        raise release.ReleaseError(f"staged changes ({_listed(staged)}): the release commit holds the release record "
                                   "only; commit or unstage them (`git restore --staged <file>`) first")
    if _git(repo, "status", "--porcelain", "--", record).strip():
        raise release.ReleaseError(f"{record} has uncommitted changes: commit them or restore it (`git checkout -- "
                                   f"{record}`) first, so that the release commit adds only this version")
    changed = sorted(line[3:].split(" -> ")[-1] for line in
                     _git(repo, "status", "--porcelain", "--untracked-files=no").splitlines() if line.strip())
    if changed:
        raise release.ReleaseError(f"uncommitted changes to tracked files ({_listed(changed)}): the tagged commit must "
                                   f"rebuild this release; commit them (`git commit -a`) first. The sequence: {SEQUENCE}")


def _dvc_status(top: Path, stage: str) -> dict[str, Any]:
    """`dvc status --with-deps <stage>` as JSON ({} when the stage and everything upstream match dvc.lock)."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    result = subprocess.run([sys.executable, "-m", "dvc", "status", "--json", "--with-deps", stage], cwd=top, env=env,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise release.ReleaseError(f"`dvc status {stage}` failed in {top}: {(result.stderr or result.stdout).strip()}")
    start = result.stdout.find("{")  # DVC may print notices before the JSON
    try:
        return json.loads(result.stdout[start:] if start >= 0 else result.stdout)
    except ValueError as err:
        raise release.ReleaseError(f"`dvc status --json {stage}` printed no JSON ({err}): {result.stdout[:200]!r}; "
                                   "run `dvc status` to see why") from err


def _stage_of(top: Path, release_dir: Path) -> str:
    """The dvc.lock stage whose output is `release_dir`; ReleaseError when none is."""
    lock = top / "dvc.lock"
    if not lock.exists():
        raise release.ReleaseError(f"{top} has dvc.yaml but no dvc.lock: run `dvc repro` and commit dvc.lock first")
    try:
        rel = release_dir.resolve().relative_to(top.resolve()).as_posix()
    except ValueError:
        rel = None
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    for name, stage in stages.items():
        if rel is not None and any(out.get("path") == rel for out in stage.get("outs", [])):
            return name
    raise release.ReleaseError(f"{release_dir} is not an output of any stage in {lock}: tag the release folder the "
                               "pipeline builds (package's output, data/release) after `dvc repro`")


def check_committed(repo: str | Path, record: str | Path, release_dir: str | Path) -> str:
    """The record's path in `repo`, once the commit of the record alone would pin a commit that rebuilds the release.

    ReleaseError naming the files and the fix otherwise: staged or uncommitted changes to tracked
    files (the record's aside), a record outside the repository, and in a DVC repository a release
    folder that is no stage's output or whose stage (or anything upstream) differs from dvc.lock.
    """
    repo = Path(repo)
    rel = _record_in_repo(repo, Path(record))
    _check_clean(repo, rel)
    top = Path(_git(repo, "rev-parse", "--show-toplevel").strip())
    if (top / "dvc.yaml").exists():
        stage = _stage_of(top, Path(release_dir))
        status = _dvc_status(top, stage)
        if status:
            stale = sorted(status)
            raise release.ReleaseError(
                f"`dvc status` is not clean for {stage} ({', '.join(stale)} changed: "
                f"{json.dumps(status, sort_keys=True)[:400]}): {release_dir} is not what the committed pipeline "
                f"produces. Run `dvc repro`, commit what it changes, then tag. The sequence: {SEQUENCE}")
    return rel


def commit_record(repo: str | Path, record: str | Path, rel: str, release_dir: str | Path, name: str) -> bool:
    """Add the release to the record and commit that file alone as "Release <name>"; False when already recorded.

    On failure the record is left as it was and the ReleaseError raised.
    """
    repo, record = Path(repo), Path(record)
    version = release.read_manifest(release_dir)["version"]
    before = record.read_bytes() if record.exists() else None
    try:
        if not release.record_release(record, release_dir):
            return False
        _git(repo, "add", "--", rel)
        _git(repo, "commit", "-q", "-m", f"Release {name}", "-m", f"Record {version} in {rel}.", "--", rel)
        return True
    except release.ReleaseError:
        _restore(repo, record, rel, before)
        raise


def _restore(repo: Path, record: Path, rel: str, before: bytes | None) -> None:
    """Put an uncommitted record back as it was (`before`: its bytes, None when it did not exist)."""
    if _git(repo, "status", "--porcelain", "--", rel).strip():
        if before is None:  # it was new (an untracked record is refused before)
            _git(repo, "rm", "-q", "--cached", "--ignore-unmatch", "--", rel)
            record.unlink(missing_ok=True)
        else:
            _git(repo, "reset", "-q", "--", rel)
            write_bytes(record, before)


def tag(release_dir: str | Path, repo: str | Path = ".", released: str | Path | None = None) -> str:
    """Record a verified, releasable release, commit the record alone and tag that commit in `repo`; return the tag.

    `released` is the record of released versions (default: `data_cards/RELEASED.json` in `repo`),
    a file inside the repository. On a failure before the record's commit the record is left as it was
    and nothing is tagged; should `git tag` itself fail after that commit, the commit stays and running
    `clipblind tag` again tags it.
    """
    repo = Path(repo)
    record = Path(released) if released is not None else repo / release.RELEASED_RECORD
    manifest = release.check_releasable(release_dir, release.read_released(record))
    name = git_tag_name(manifest["name"], manifest["version"])
    if _git(repo, "tag", "--list", name).strip():
        raise release.ReleaseError(f"git tag {name} exists: a released version never changes; bump package.version")
    rel = check_committed(repo, record, release_dir)
    commit_record(repo, record, rel, release_dir, name)
    sums = release.file_sha256(Path(release_dir) / release.SUMS)
    _git(repo, "tag", "-a", name, "-m", f"{manifest['name']} {manifest['version']}\n\nSHA256SUMS sha256: {sums}\n")
    return name


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: `clipblind tag <release> [--repo DIR]`."""
    parser = argparse.ArgumentParser(prog="clipblind tag", description=__doc__.splitlines()[0])
    parser.add_argument("release", help="release folder")
    parser.add_argument("--repo", default=".", help="git repository to tag (default: here)")
    parser.add_argument("--released", help=f"record of released versions, inside the repository (default: "
                                           f"<repo>/{release.RELEASED_RECORD})")
    args = parser.parse_args(argv)
    name = tag(args.release, args.repo, args.released)
    record = args.released or release.RELEASED_RECORD
    summary(STAGE, f"committed {record} (\"Release {name}\") and tagged that commit {name}; push both "
                   f"(`git push origin HEAD {name}`). `dvc status` now reports diagnose and package changed ({record} is their dep): "
                   "`dvc repro` rebuilds the same release bytes and updates dvc.lock; commit it")
    return 0


if __name__ == "__main__":
    from pipeline.core.errors import run_command

    raise SystemExit(run_command(main, "tag"))
