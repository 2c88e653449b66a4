"""The package stage as users run it: a real DVC repo, the pipeline up to mine, then `dvc repro package`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from pipeline import release, schemas
from tests.conftest import REPO, tiny_params
from tests.release_world import accepted_rows

pytestmark = pytest.mark.slow


def _dvc(args: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def test_dvc_repro_package_builds_a_verified_release_once(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    for folder in ("pipeline", "data_cards"):
        shutil.copytree(REPO / folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__"))
    dvc_yaml = yaml.safe_load((REPO / "dvc.yaml").read_text())
    dvc_yaml["stages"]["sample_corpus"]["cmd"] = dvc_yaml["stages"]["sample_corpus"]["cmd"].replace("--scenes 40", "--scenes 2")
    (repo / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml, sort_keys=False))
    project_params = yaml.safe_load((REPO / "params.yaml").read_text())
    (repo / "params.yaml").write_text(yaml.safe_dump(tiny_params(package=project_params["package"])))
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    _dvc(["init", "-q"], repo)
    _dvc(["repro", "mine"], repo)
    # the annotation import's output, over the real images table
    ids = schemas.read_table(repo / "data/images.parquet", "images").column("image_id").to_pylist()
    accepted = pa.Table.from_pylist(accepted_rows(sorted(ids)), schema=schemas.ACCEPTED)
    schemas.write_table(accepted, repo / "data/accepted.parquet", "accepted")
    out = _dvc(["repro", "package"], repo)
    assert "Running stage 'package'" in out and "RANDOMLY INITIALISED" in out
    assert release.verify(repo / "data/release").ok
    manifest = release.read_manifest(repo / "data/release")
    assert manifest["version"] == project_params["package"]["version"] and manifest["counts"]["pairs"] == 4
    assert manifest["provenance"]["funnel"]["images"] == len(ids)
    assert "Running stage" not in _dvc(["repro", "package"], repo)
