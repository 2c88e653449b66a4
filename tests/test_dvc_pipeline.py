"""The pipeline as users run it: a real DVC repo in a temp dir, `dvc repro` twice, a threshold change,
the README's own-corpus recipe, a change to the decode rules; a forced rerun leaves the committed tree clean."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from pipeline.images.decode import digest_of, rules_digest
from tests.conftest import REPO, tiny_params

pytestmark = pytest.mark.slow

CORPUS_READERS = {"ingest", "embed", "export", "gallery", "gate", "diagnose", "package"}


def _run(args, cwd, stdout_only=False):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout if stdout_only else result.stdout + result.stderr


def _ran(output):
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


def _dvc(*args):
    return [sys.executable, "-m", "dvc", *args]


def _git(*args):
    return ["git", "-c", "user.name=test", "-c", "user.email=test@example.org", *args]


def _changed_stages(repo):
    return set(json.loads(_run(_dvc("status", "--json"), repo, stdout_only=True)))


def _make_repo(repo, dvc_yaml):
    repo.mkdir()
    (repo / "data").mkdir()
    for ignores in (".gitignore", "data/.gitignore"):  # what the repository ignores beside what DVC adds
        shutil.copy(REPO / ignores, repo / ignores)
    shutil.copytree(REPO / "pipeline", repo / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    for extra in ("annotation", "labels", "data_cards"):  # annotation stages: their code and the committed (empty) snapshots
        shutil.copytree(REPO / extra, repo / extra, ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml, sort_keys=False))
    (repo / "params.yaml").write_text(yaml.safe_dump(tiny_params()))
    _run(["git", "init", "-q"], repo)
    _run(_dvc("init", "-q"), repo)
    return repo


@pytest.fixture
def dvc_repo(tmp_path):
    dvc_yaml = yaml.safe_load((REPO / "dvc.yaml").read_text())
    dvc_yaml["stages"]["sample_corpus"]["cmd"] = dvc_yaml["stages"]["sample_corpus"]["cmd"].replace("--scenes 40", "--scenes 4")
    return _make_repo(tmp_path / "repo", dvc_yaml)


def test_repro_runs_every_stage_once_reproducibly_and_reruns_only_what_a_param_touches(dvc_repo):
    first = _run(_dvc("repro"), dvc_repo)
    assert _ran(first) == {"sample_corpus", "ingest", "embed", "search", "mine", "calibrate", "export", "gallery",
                           "validate", "accept", "gate", "diagnose", "package", "evaluate"}
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
    # `dvc metrics show` lists each stage's headline: flat scalars, one narrow table
    shown = _run(_dvc("metrics", "show"), dvc_repo, stdout_only=True)
    assert max(map(len, shown.splitlines())) <= 160, shown
    for headline in (dvc_repo / "metrics" / "headline").iterdir():
        assert all(isinstance(v, (int, float, str, bool)) for v in json.loads(headline.read_text()).values()), headline

    assert _ran(_run(_dvc("repro"), dvc_repo)) == set()

    # every stage again, persisted outputs removed as on a fresh clone: the tracked metrics, plots
    # and dvc.lock (the hashes of every output) come out byte for byte as committed
    _run(_git("add", "-A"), dvc_repo)
    _run(_git("commit", "-q", "-m", "first run"), dvc_repo)
    for persisted in ("data/ingest_state", "data/embeddings", "data/release"):
        shutil.rmtree(dvc_repo / persisted)
    assert _ran(_run(_dvc("repro", "-f"), dvc_repo)) >= CORPUS_READERS
    status = _run(["git", "status", "--porcelain"], dvc_repo)
    assert status == "", status + _run(["git", "diff"], dvc_repo)

    params = yaml.safe_load((dvc_repo / "params.yaml").read_text())
    params["mine"]["clip_threshold"] = 0.95
    (dvc_repo / "params.yaml").write_text(yaml.safe_dump(params))
    # a new threshold reruns mining and stages downstream of it, never ingest, embed or the search
    rerun = _ran(_run(_dvc("repro"), dvc_repo))
    assert {"mine", "calibrate", "export", "gallery", "validate", "accept", "package"} <= rerun
    assert not rerun & {"sample_corpus", "ingest", "embed", "search"}
    assert json.loads((dvc_repo / "metrics/mine.json").read_text())["clip_threshold"] == 0.95


def _readme_corpus_recipe():
    """The `dvc.yaml` snippet of README's "Your own corpus" section, parsed."""
    section = (REPO / "README.md").read_text().split("## Your own corpus", 1)[1].split("\n## ", 1)[0]
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", section, re.S)]
    recipe = [b for b in blocks if "vars" in b]
    assert len(recipe) == 1, "README's own-corpus section should show the dvc.yaml `vars` line that names the corpus"
    assert "delete the `sample_corpus` stage" in section
    return recipe[0]


def test_own_corpus_by_the_readme_recipe_runs_through_package(tmp_path):
    photos = tmp_path / "my photos"  # a folder outside the repository, with a space in its name
    for index in range(12):
        image = Image.new("RGB", (40, 30), (20 * index, 255 - 20 * index, 90))
        for x in range(index + 2):
            image.putpixel((3 * x, 5 + index), (255, 255, 255))
        folder = photos / f"set{index % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"photo{index}.{'png' if index % 2 else 'jpg'}")
    recipe = _readme_corpus_recipe()
    (entry,) = recipe["vars"]
    (name,) = entry
    recipe["vars"] = [{name: str(photos)}]  # the README's one line, pointing at our folder
    dvc_yaml = yaml.safe_load((REPO / "dvc.yaml").read_text())
    del dvc_yaml["stages"]["sample_corpus"]
    dvc_yaml.update(recipe)
    repo = _make_repo(tmp_path / "repo", dvc_yaml)

    ran = _ran(_run(_dvc("repro"), repo))
    assert ran >= CORPUS_READERS | {"search", "mine", "validate", "accept", "evaluate"}
    assert not (repo / "data/corpus").exists()
    assert json.loads((repo / "metrics/ingest.json").read_text())["inputs"] == 12
    assert (repo / "data/release/manifest.json").exists()
    locked = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    for stage in CORPUS_READERS:
        assert str(photos) in {d["path"] for d in locked[stage]["deps"]}, stage
    # a new photo reruns what reads the corpus
    Image.new("RGB", (40, 30), (1, 2, 3)).save(photos / "set0" / "new.png")
    assert _changed_stages(repo) >= {"ingest", "embed", "export", "gallery", "gate", "package"}


def test_a_failing_stage_reads_in_dvc_repro_as_from_clipblind(tmp_path):
    not_a_folder = tmp_path / "photos.txt"  # the README's corpus line pointing at a file
    not_a_folder.write_text("not a folder")
    recipe = _readme_corpus_recipe()
    ((name,),) = recipe["vars"]
    recipe["vars"] = [{name: str(not_a_folder)}]
    dvc_yaml = yaml.safe_load((REPO / "dvc.yaml").read_text())
    del dvc_yaml["stages"]["sample_corpus"]
    dvc_yaml.update(recipe)
    repo = _make_repo(tmp_path / "repo", dvc_yaml)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    env.pop("CLIPBLIND_DEBUG", None)
    result = subprocess.run(_dvc("repro", "ingest"), cwd=repo, env=env, capture_output=True, text=True)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in output, output
    assert re.search(rf"^clipblind ingest: corpus source '[^']+': no folder at {re.escape(str(not_a_folder))}$",
                     output, re.M), output


def test_changing_the_decode_rules_reruns_every_stage_that_sees_pixels_and_reuses_none(dvc_repo):
    _run(_dvc("repro"), dvc_repo)
    tasks_before = json.loads((dvc_repo / "data/tasks.json").read_text())
    decode_py = dvc_repo / "pipeline/images/decode.py"
    decode_py.write_text(decode_py.read_text() + "\n# a changed rule\n")
    assert _changed_stages(dvc_repo) >= {"ingest", "embed", "export", "gallery", "gate", "package"}

    _run(_dvc("repro"), dvc_repo)
    # embeddings persist between runs, yet no shard made under the old rules is reused
    embed = json.loads((dvc_repo / "metrics/embed.json").read_text())
    assert embed["shards_reused"] == 0 and embed["shards_written"] == embed["shards"] > 0
    encoder = json.loads((dvc_repo / "data/embeddings/clip/encoder.json").read_text())
    new_digest = digest_of(decode_py.read_bytes())
    assert encoder["decode_rules"] == new_digest != rules_digest()
    # the tasks and the display copies name the rules that made their pixels
    tasks = json.loads((dvc_repo / "data/tasks.json").read_text())
    assert {t["data"]["decode_rules"] for t in tasks} == {new_digest}
    assert {t["data"]["decode_rules"] for t in tasks_before} == {rules_digest()}
    copy = next((dvc_repo / "data/display").glob("*.jpg"))
    with Image.open(copy) as image:
        assert json.loads(image.info["comment"])["decode_rules"] == new_digest
