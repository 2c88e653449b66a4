"""Under `dvc repro` a grown corpus embeds only its new images (the outputs persist between runs)."""

import json
import sys

import pytest
import yaml

from pipeline.core import schemas
from tests.test_dvc_pipeline import _ran, _run, dvc_repo  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow


def test_dvc_repro_after_the_corpus_grows_embeds_only_new_images(dvc_repo):  # noqa: F811
    _run([sys.executable, "-m", "dvc", "repro"], dvc_repo)
    before = set(schemas.read_table(dvc_repo / "data/images.parquet", "images").column("image_id").to_pylist())
    first = json.loads((dvc_repo / "metrics/embed.json").read_text())

    dvc_yaml = yaml.safe_load((dvc_repo / "dvc.yaml").read_text())
    dvc_yaml["stages"]["sample_corpus"]["cmd"] = dvc_yaml["stages"]["sample_corpus"]["cmd"].replace("--scenes 4", "--scenes 6")
    (dvc_repo / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml, sort_keys=False))
    assert "embed" in _ran(_run([sys.executable, "-m", "dvc", "repro"], dvc_repo))
    after = set(schemas.read_table(dvc_repo / "data/images.parquet", "images").column("image_id").to_pylist())
    metrics = json.loads((dvc_repo / "metrics/embed.json").read_text())
    assert before < after
    assert metrics["images_to_embed"] == metrics["images_embedded"] == len(after - before)
    assert metrics["shards_reused"] == first["shards_written"]
