"""tag: record a verified release in git as `<name>@v<version>`, the tag DVC artifacts use.

Input: a release folder (its manifest names the artifact and version) and the git repository
that built it. The tag is annotated with the sha256 of the release's SHA256SUMS, so the tag
pins every file's bytes. An existing tag is never moved.
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path
from typing import Sequence

from pipeline import release
from pipeline.report import summary

STAGE = "tag"


def git_tag_name(name: str, version: str) -> str:
    """The git tag of a release: the DVC artifact name and the version."""
    return f"{name}@v{version}"


def tag(release_dir: str | Path, repo: str | Path = ".") -> str:
    """Create the annotated git tag of a verified release in `repo`; return its name."""
    report = release.verify(release_dir)
    if not report.ok:
        raise release.ReleaseError(f"{release_dir} fails verification; rebuild it before tagging")
    manifest = release.read_manifest(release_dir)
    name = git_tag_name(manifest["name"], manifest["version"])
    existing = subprocess.run(["git", "-C", str(repo), "tag", "--list", name], capture_output=True, text=True, check=True)
    if existing.stdout.strip():
        raise release.ReleaseError(f"git tag {name} exists: a released version never changes; bump package.version")
    sums = release.file_sha256(Path(release_dir) / release.SUMS)
    message = f"{manifest['name']} {manifest['version']}\n\nSHA256SUMS sha256: {sums}\n"
    subprocess.run(["git", "-C", str(repo), "tag", "-a", name, "-m", message], check=True, capture_output=True)
    return name


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: `clipblind tag <release> [--repo DIR]`."""
    parser = argparse.ArgumentParser(prog="clipblind tag", description=__doc__.splitlines()[0])
    parser.add_argument("release", help="release folder")
    parser.add_argument("--repo", default=".", help="git repository to tag (default: here)")
    args = parser.parse_args(argv)
    try:
        name = tag(args.release, args.repo)
    except (release.ReleaseError, subprocess.CalledProcessError) as err:
        print(f"[{STAGE}] {err}")
        return 1
    summary(STAGE, f"tagged {name}; push it with `git push origin {name}`")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
