"""The package stage as users run it: a real DVC repo, the pipeline up to mine, then `dvc repro package`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from pipeline.core import schemas
from pipeline.release import folder as release
from tests.conftest import REPO, TINY_CLIP_TEXT_CONFIG, tiny_params
from tests.helpers.release_world import accepted_rows

pytestmark = pytest.mark.slow


def _dvc(args: list[str], cwd: Path, ok: bool = True) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=env, capture_output=True, text=True)
    assert (result.returncode == 0) == ok, result.stdout + result.stderr
    return result.stdout + result.stderr


def test_dvc_repro_gate_package_evaluate(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    for folder in ("pipeline", "data_cards", "annotation", "labels"):
        shutil.copytree(REPO / folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__"))
    dvc_yaml = yaml.safe_load((REPO / "dvc.yaml").read_text())
    dvc_yaml["stages"]["sample_corpus"]["cmd"] = dvc_yaml["stages"]["sample_corpus"]["cmd"].replace("--scenes 40", "--scenes 2")
    (repo / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml, sort_keys=False))
    project_params = yaml.safe_load((REPO / "params.yaml").read_text())
    evaluate_params = {"clip": [{**project_params["evaluate"]["clip"][0], "kind": "open_clip", "model": "tiny-clip-text",
                                 "weights": "random", "image_size": 32, "config": TINY_CLIP_TEXT_CONFIG, "seed": 0}],
                       "vlm": []}
    (repo / "params.yaml").write_text(yaml.safe_dump(tiny_params(  # diagnose reads the statements with CLIP's text tower
        package=project_params["package"], gate=project_params["gate"], evaluate=evaluate_params,
        embed={"clip": {"config": TINY_CLIP_TEXT_CONFIG}})))
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    _dvc(["init", "-q"], repo)
    _dvc(["repro", "accept"], repo)  # the shipped labels are empty: no accepted pairs, metrics/accept.json written
    # the annotation stages' output (stage `accept`), fabricated over the real images table: the
    # stages below run one by one (`repro -s`) so that `accept` does not overwrite it
    ids = schemas.read_table(repo / "data/images.parquet", "images").column("image_id").to_pylist()
    accepted = pa.Table.from_pylist(accepted_rows(sorted(ids)), schema=schemas.ACCEPTED)
    schemas.write_table(accepted, repo / "data/accepted.parquet", "accepted")
    _dvc(["commit", "-f", "accept"], repo)  # dvc.lock records it as accept's output, as if accept had written it
    out = _dvc(["repro", "-s", "gate"], repo) + _dvc(["repro", "-s", "diagnose"], repo) + _dvc(["repro", "-s", "package"], repo)
    assert "Running stage 'gate'" in out and "Running stage 'package'" in out and "RANDOMLY INITIALISED" in out
    assert "Running stage 'diagnose'" in out and (repo / "data/release/diagnostics").is_dir()  # its tables ship
    assert release.verify(repo / "data/release").ok
    manifest = release.read_manifest(repo / "data/release")
    assert manifest["version"] == project_params["package"]["version"] and manifest["counts"]["pairs"] == 4
    assert manifest["provenance"]["funnel"]["images"] == len(ids)
    assert manifest["gate"] is None  # the project's params run no VLM offline; the card says so
    assert "The blind gate did not run" in (repo / "data/release/README.md").read_text()
    assert "Running stage" not in _dvc(["repro", "-s", "package"], repo)
    # the first release becomes public: `clipblind tag` records it in data_cards/RELEASED.json and commits
    # that file alone; the tag is on that commit
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "first build")
    sums = (repo / "data/release/SHA256SUMS").read_bytes()
    elsewhere = tmp_path / "copy"
    shutil.copytree(repo / "data/release", elsewhere)
    refused = _clipblind(repo, "tag", str(elsewhere))  # not what the pipeline builds
    assert refused.returncode == 1 and "is not an output of any stage in" in refused.stderr, refused.stderr
    tagged = _clipblind(repo, "tag", "data/release")
    assert tagged.returncode == 0, tagged.stdout + tagged.stderr
    assert "`dvc status` now reports diagnose and package changed" in tagged.stdout
    assert _git(repo, "status", "--porcelain") == ""
    assert _git(repo, "rev-parse", "clipblind-benchmark@v1.0.0^{commit}") == _git(repo, "rev-parse", "HEAD")
    assert "1.0.0" in _git(repo, "show", "clipblind-benchmark@v1.0.0:data_cards/RELEASED.json")
    # what the README says follows: package is changed (its dep, the record), and rebuilding it gives the same
    # release bytes; only dvc.lock moves (the record's hash), for the user to commit
    status = _dvc(["status", "package"], repo)
    assert "package:" in status and "modified: data_cards/RELEASED.json" in " ".join(status.split()), status
    assert "Running stage 'diagnose'" in _dvc(["repro", "-s", "diagnose"], repo)
    assert "Running stage 'package'" in _dvc(["repro", "-s", "package"], repo)
    assert (repo / "data/release/SHA256SUMS").read_bytes() == sums
    assert release.read_manifest(repo / "data/release")["release"]["status"] == release.RELEASABLE
    assert _git(repo, "status", "--porcelain").split() == ["M", "dvc.lock"]
    _git(repo, "commit", "-q", "-m", "dvc.lock: the release record of 1.0.0", "dvc.lock")
    # a corrected answer: iterating works, the build is marked unreleased with the change listed
    rows = accepted.to_pylist()
    fixed = next(r for r in rows if r["pattern"] == "state")
    fixed["answer_a"], fixed["answer_b"] = fixed["answer_b"], fixed["answer_a"]
    schemas.write_table(pa.Table.from_pylist(rows, schema=schemas.ACCEPTED), repo / "data/accepted.parquet", "accepted")
    _dvc(["commit", "-f", "accept"], repo)
    out = _dvc(["repro", "-s", "gate"], repo) + _dvc(["repro", "-s", "diagnose"], repo) + _dvc(["repro", "-s", "package"], repo)
    assert "set package.version in params.yaml to 1.1.0" in out
    dev = release.read_manifest(repo / "data/release")
    assert dev["version"] == "1.1.0-dev" and dev["release"]["status"] == release.UNRELEASED
    # the pair keeps its released answer letters (answer balance): the corrected answers show as the options reversed
    assert dev["changes"]["changed_items"] == {f"{fixed['pair_id']}-a": ["options"], f"{fixed['pair_id']}-b": ["options"]}
    assert "UNRELEASED BUILD 1.1.0-dev" in (repo / "data/release/README.md").read_text()
    assert json.loads((repo / "metrics/package.json").read_text())["status"] == release.UNRELEASED
    refused = _clipblind(repo, "tag", "data/release")
    assert refused.returncode == 1 and "set package.version in params.yaml to 1.1.0" in refused.stderr
    # bump + a changelog line naming the pair: releasable, and `tag` succeeds
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["package"]["version"] = "1.1.0"
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    changelog = repo / "data_cards/CHANGELOG.md"
    changelog.write_text(changelog.read_text().replace("## 1.0.0", f"## 1.1.0\n\n- Corrected the answers of pair {fixed['pair_id']}.\n\n## 1.0.0"))
    _dvc(["repro", "-s", "package"], repo)
    built = release.read_manifest(repo / "data/release")
    assert built["version"] == "1.1.0" and built["release"]["status"] == release.RELEASABLE
    assert built["changes"]["previous_version"] == manifest["version"]
    assert sorted(built["changes"]["changed_items"]) == [f"{fixed['pair_id']}-a", f"{fixed['pair_id']}-b"]
    # not committed yet: the tagged commit would not rebuild 1.1.0 (params.yaml there says 1.0.0)
    refused = _clipblind(repo, "tag", "data/release")
    assert refused.returncode == 1, refused.stdout
    assert ("uncommitted changes to tracked files (data_cards/CHANGELOG.md, dvc.lock, metrics/headline/package.json, "
            "metrics/package.json, params.yaml)") in refused.stderr
    assert "clipblind-benchmark@v1.1.0" not in _git(repo, "tag", "--list")
    # committed, then an input edited and committed without `dvc repro`: the release is not what that commit builds
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "build 1.1.0")
    changelog.write_text(changelog.read_text().replace("- Corrected", "- Corrected (in adjudication)"))
    _git(repo, "commit", "-q", "-a", "-m", "changelog wording")
    refused = _clipblind(repo, "tag", "data/release")
    assert refused.returncode == 1 and "`dvc status` is not clean for package" in refused.stderr, refused.stderr
    assert "data_cards/CHANGELOG.md" in refused.stderr and "Run `dvc repro`" in refused.stderr
    _dvc(["repro", "-s", "package"], repo)
    _git(repo, "commit", "-q", "-a", "-m", "dvc.lock: build 1.1.0")
    tagged = _clipblind(repo, "tag", "data/release")
    assert tagged.returncode == 0, tagged.stdout + tagged.stderr
    assert "clipblind-benchmark@v1.1.0" in _git(repo, "tag", "--list")
    out = _dvc(["repro", "-s", "evaluate"], repo)
    assert "Running stage 'evaluate'" in out
    shown = _dvc(["metrics", "show", "--json"], repo)  # the headline; the scores are in the full record
    assert "metrics/headline/evaluate.json" in shown and "pair_accuracy" not in shown
    evaluated = (repo / "metrics/evaluate.json").read_text()
    assert "open_clip:tiny-clip-text:random" in evaluated and "pair_accuracy" in evaluated
    assert (repo / "metrics/evaluate.md").read_text().startswith("| model |")
    # an experiment on a mining param runs the whole pipeline through package
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "release 1.1.0")
    _dvc(["exp", "run", "-S", "mine.dino_threshold=0.995"], repo)
    assert json.loads((repo / "metrics/package.json").read_text())["status"] in (release.AWAITING, *release.RELEASE_STATUSES)


def _git(repo: Path, *args: str) -> str:
    base = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    return subprocess.run([*base, *args], check=True, capture_output=True, text=True).stdout


def _clipblind(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid"}
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=repo, env=env, capture_output=True, text=True)
