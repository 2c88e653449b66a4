"""Headline metrics: what `dvc metrics show` lists is a few flat numbers per stage, in one shared
vocabulary, copied from each stage's full record, which dvc.yaml declares as an uncached output."""

import json
import subprocess
import sys

import pytest
import yaml

from pipeline.core import report
from tests.conftest import REPO

SCALARS = (int, float, str, bool, type(None))


def _stages() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def _paths(entries) -> dict:
    return {next(iter(e)) if isinstance(e, dict) else e: (next(iter(e.values())) if isinstance(e, dict) else {})
            for e in entries or []}


def test_headlines_speak_one_vocabulary_and_name_every_stage_that_declares_metrics():
    with_metrics = {name for name, stage in _stages().items() if stage.get("metrics")}
    assert with_metrics == set(report.HEADLINES)
    for stage, fields in report.HEADLINES.items():
        assert set(fields) <= set(report.HEADLINE_KEYS), stage
        assert 0 < len(fields) <= len(report.HEADLINE_KEYS)


@pytest.mark.parametrize("name", sorted(report.HEADLINES))
def test_each_stage_declares_its_headline_as_metrics_and_its_record_as_an_uncached_out(name):
    stage = _stages()[name]
    headline = f"metrics/headline/{name}.json"
    assert list(_paths(stage["metrics"])) == [headline]
    assert f"--headline {headline}" in stage["cmd"]
    records = {p: o for p, o in _paths(stage["outs"]).items() if p.startswith("metrics/") and p.endswith(".json")}
    assert records == {f"metrics/{name}.json": records.get(f"metrics/{name}.json")}
    assert records[f"metrics/{name}.json"]["cache"] is False
    assert f"metrics/{name}.json" in stage["cmd"]  # the stage writes its full record there


def test_headline_copies_flat_fields_of_the_record_nested_ones_by_dotted_name():
    record = {"inputs": 364, "accepted": 360, "rejected": 3, "rejected_by_reason": {"corrupt": 3}, "sources": {"a": 1}}
    assert report.headline("ingest", record) == {"inputs": 364, "outputs": 360, "rejected": 3}
    assert report.headline("evaluate", {"benchmark": {"pairs": 7, "format": "mmvp"}, "models": {}}) == {"inputs": 7}


def test_a_record_without_a_headline_field_names_the_stage_the_field_and_the_fix():
    with pytest.raises(KeyError, match=r"mine's metrics record has no 'pairs' for its headline 'outputs'.*HEADLINES"):
        report.headline("mine", {"candidates": 3})
    with pytest.raises(KeyError, match="no headline metrics for stage 'nope'"):
        report.headline("nope", {})


def test_write_headline_writes_flat_scalars_and_nothing_without_a_path(tmp_path):
    record = {"inputs": 2, "packaged": 1, "rejected": 1, "rejected_by_reason": {"x": 1}, "rejects": ["p"],
              "status": "unreleased", "version": "1.1.0-dev", "items": 2}
    report.write_headline(tmp_path / "h.json", "package", record)
    written = json.loads((tmp_path / "h.json").read_text())
    assert written == {"inputs": 2, "outputs": 1, "rejected": 1, "status": "unreleased", "version": "1.1.0-dev"}
    assert all(isinstance(v, SCALARS) for v in written.values())
    report.write_headline(None, "package", record)
    assert [p.name for p in tmp_path.iterdir()] == ["h.json"]


def test_dvc_metrics_show_of_every_headline_fits_a_terminal(tmp_path):
    """The widest record values the demo writes, one headline file per stage: DVC prints one table
    with a column per distinct key, so the shared vocabulary keeps it narrow."""
    widest = {"inputs": 10**9, "outputs": 10**9, "rejected": 10**9, "pending": 10**9,
              "status": "awaiting_annotations", "version": "10.10.10-dev"}
    stages = {}
    for name, fields in report.HEADLINES.items():
        path = f"metrics/headline/{name}.json"
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(json.dumps({k: widest[k] for k in fields}))
        stages[name] = {"cmd": "true", "metrics": [{path: {"cache": False}}]}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True)
    shown = subprocess.run([sys.executable, "-m", "dvc", "metrics", "show"], cwd=tmp_path, capture_output=True,
                           text=True, check=True).stdout
    assert len(shown.splitlines()) == 1 + len(report.HEADLINES)
    assert max(map(len, shown.splitlines())) <= 160, shown
