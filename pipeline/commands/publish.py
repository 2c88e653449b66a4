"""publish: push a verified release to the Hugging Face Hub as a tagged revision.

Input: a release folder, the Hub dataset repo id; the token comes from the environment
(`HF_TOKEN`). The release is verified first (SHA256SUMS); the folder is uploaded to the
repo's main branch and the commit is tagged `v<version>`, so `load_dataset(repo, revision=
"v<version>")` always returns the version a published number was measured on. An existing tag
is never moved. Offline (HF_HUB_OFFLINE=1, or the Hub unreachable) it fails at once, saying so.
An unreleased build (`<version>-dev`) is refused with the steps that make it releasable, and so
is a release the committed pipeline does not rebuild (uncommitted tracked files, `dvc status`
not clean: the checks of `clipblind tag`). A published version is recorded as `tag` records it:
added to `data_cards/RELEASED.json` and that file committed alone ("Release <name>@v<version>").
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from pipeline.commands import tag as git_tag
from pipeline.core.errors import ClipblindError
from pipeline.core.hub import HUB_HOST, hub_reachable
from pipeline.core.report import summary
from pipeline.release import folder as release

STAGE = "publish"
TOKEN_VARIABLES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


class PublishError(ClipblindError, RuntimeError):
    """A release cannot be published now; the message says why and what to do."""


def hub_tag(version: str) -> str:
    """The Hub tag of a release version."""
    return f"v{version}"


def publish(release_dir: str, repo_id: str, private: bool = False, released: str | None = None,
            repo: str | Path = ".") -> str:
    """Upload a verified, releasable release folder to `repo_id`, tag it and record it; return the tag.

    `released` is the record of released versions (default: `data_cards/RELEASED.json` in the git
    repository `repo`), committed alone after the upload as `clipblind tag` commits it.
    """
    record = Path(released) if released is not None else Path(repo) / release.RELEASED_RECORD
    try:
        release.check_releasable(release_dir, release.read_released(record))
    except release.ReleaseError as err:
        raise PublishError(str(err)) from err
    report = release.verify(release_dir)
    if report.fetched:
        raise PublishError(f"{release_dir} holds {len(report.fetched)} fetched withheld images whose licences forbid "
                           "redistribution: publish a fresh copy of the release without them")
    manifest = release.read_manifest(release_dir)
    token = next((os.environ[v] for v in TOKEN_VARIABLES if os.environ.get(v)), None)
    if token is None:
        raise PublishError(f"no Hub token: set {TOKEN_VARIABLES[0]} to a token with write access to {repo_id}")
    if not hub_reachable():
        raise PublishError(
            f"cannot publish: the Hugging Face Hub ({HUB_HOST}) is not reachable from here "
            "(offline, or HF_HUB_OFFLINE=1). The release folder is self-contained: copy it to a machine "
            "with network access and run `clipblind publish` there."
        )
    try:
        rel = git_tag.check_committed(repo, record, release_dir)
    except release.ReleaseError as err:
        raise PublishError(str(err)) from err
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    tag = hub_tag(manifest["version"])
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    if tag in {t.name for t in api.list_repo_refs(repo_id, repo_type="dataset").tags}:
        raise PublishError(f"{repo_id} already has tag {tag}: a published version never changes; bump package.version")
    commit = api.upload_folder(repo_id=repo_id, repo_type="dataset", folder_path=release_dir,
                               commit_message=f"{manifest['name']} {manifest['version']}")
    api.create_tag(repo_id, repo_type="dataset", tag=tag, revision=commit.oid,
                   tag_message=f"{manifest['name']} {manifest['version']}")
    git_tag.commit_record(repo, record, rel, release_dir, git_tag.git_tag_name(manifest["name"], manifest["version"]))
    return tag


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: `clipblind publish <release> --repo-id ORG/NAME` (token in HF_TOKEN)."""
    parser = argparse.ArgumentParser(prog="clipblind publish", description=__doc__.splitlines()[0])
    parser.add_argument("release", help="release folder")
    parser.add_argument("--repo-id", required=True, help="Hub dataset repo, e.g. my-org/clipblind-benchmark")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--released", help=f"record of released versions, inside the repository (default: "
                                           f"<repo>/{release.RELEASED_RECORD})")
    parser.add_argument("--repo", default=".", help="git repository that built the release (default: here)")
    args = parser.parse_args(argv)
    tag = publish(args.release, args.repo_id, args.private, args.released, args.repo)
    record = args.released or release.RELEASED_RECORD
    summary(STAGE, f"{args.release} → https://huggingface.co/datasets/{args.repo_id} at tag {tag}; recorded in "
                   f"{record} and committed (\"Release <name>@v<version>\"): push it (`git push origin HEAD`)")
    return 0


if __name__ == "__main__":
    from pipeline.core.errors import run_command

    raise SystemExit(run_command(main, "publish"))
