"""The pipeline as users run it: a real DVC repo in a temp dir, `dvc repro` twice, a threshold change."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, tiny_params

pytestmark = pytest.mark.slow


def _run(args, cwd):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def _ran(output):
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


@pytest.fixture
def dvc_repo(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copytree(REPO / "pipeline", repo / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    for extra in ("annotation", "labels", "data_cards"):  # annotation stages: their code and the committed (empty) snapshots
        shutil.copytree(REPO / extra, repo / extra, ignore=shutil.ignore_patterns("__pycache__"))
    dvc_yaml = yaml.safe_load((REPO / "dvc.yaml").read_text())
    dvc_yaml["stages"]["sample_corpus"]["cmd"] = dvc_yaml["stages"]["sample_corpus"]["cmd"].replace("--scenes 40", "--scenes 4")
    (repo / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml, sort_keys=False))
    (repo / "params.yaml").write_text(yaml.safe_dump(tiny_params()))
    _run(["git", "init", "-q"], repo)
    _run([sys.executable, "-m", "dvc", "init", "-q"], repo)
    return repo


def test_repro_runs_every_stage_once_and_reruns_only_what_a_param_touches(dvc_repo):
    first = _run([sys.executable, "-m", "dvc", "repro"], dvc_repo)
    assert _ran(first) == {"sample_corpus", "ingest", "embed", "search", "mine", "calibrate", "export", "gallery",
                           "validate", "accept", "gate", "package", "evaluate"}
    for path in ["data/images.parquet", "data/embeddings/clip/encoder.json", "data/embeddings/dino/encoder.json",
                 "data/pairs.parquet", "data/tasks.json", "metrics/mine.json"]:
        assert (dvc_repo / path).exists(), path
    tasks = json.loads((dvc_repo / "data/tasks.json").read_text())
    assert tasks and len(list((dvc_repo / "data/display").iterdir())) > 0
    assert "RANDOM" in first
    # before anyone annotates, the release folder says so instead of holding an empty dataset
    manifest = json.loads((dvc_repo / "data/release/manifest.json").read_text())
    assert manifest["status"] == "awaiting_annotations" and manifest["counts"]["pairs"] == 0
    assert json.loads((dvc_repo / "metrics/evaluate.json").read_text())["benchmark"]["pairs"] == 0

    assert _ran(_run([sys.executable, "-m", "dvc", "repro"], dvc_repo)) == set()

    params = yaml.safe_load((dvc_repo / "params.yaml").read_text())
    params["mine"]["clip_threshold"] = 0.95
    (dvc_repo / "params.yaml").write_text(yaml.safe_dump(params))
    # a new threshold reruns mining and stages downstream of it, never ingest, embed or the search
    rerun = _ran(_run([sys.executable, "-m", "dvc", "repro"], dvc_repo))
    assert {"mine", "calibrate", "export", "gallery", "validate", "accept", "package"} <= rerun
    assert not rerun & {"sample_corpus", "ingest", "embed", "search"}
    assert json.loads((dvc_repo / "metrics/mine.json").read_text())["clip_threshold"] == 0.95
