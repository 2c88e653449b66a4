"""status: `next:` follows the state the real stages leave (accept's and package's metrics, the release record)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from annotation import accept, validate
from pipeline.commands import status
from pipeline.core import schemas
from pipeline.core.report import write_metrics
from pipeline.release import folder as release
from tests.annotation.test_annotation_validate_accept import (
    GOOD,
    REASON_CASES,
    _pairs,
    verification_snapshot,
    writing_snapshot,
)
from tests.conftest import REPO
from tests.helpers.params import demo_params
from tests.helpers.release_world import build_inputs, package_args


@pytest.fixture(scope="module")
def inputs(sample_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_inputs(sample_corpus, tmp_path_factory.mktemp("status") / "inputs")


def workspace(tmp_path: Path) -> Path:
    """A folder with the project's dvc.yaml: status reads the stages and their metrics paths from it."""
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    return tmp_path / "dvc.yaml"


def run_accept(root: Path, verifications: dict[str, list[tuple[str, str, str]]] | None, pairs: int = 2,
               written: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """validate and accept on `pairs` good questions (or the `written` ones, by pair id); verifications by pair id
    (None: nothing written)."""
    cases = (written or {f"p{k}": GOOD for k in range(pairs)}) if verifications is not None else {}
    pair_table = _pairs(*cases)
    table = validate.validate(writing_snapshot(cases), pair_table, demo_params("validate"))
    qid = {r["pair_id"]: r["question_id"] for r in table.to_pylist()}
    snapshot = verification_snapshot({qid[p]: given for p, given in (verifications or {}).items()})
    *_, metrics = accept.accept(table, pair_table, snapshot, {}, demo_params("accept"))
    write_metrics(root / "metrics" / "accept.json", metrics)
    return metrics


def run_package(root: Path, inputs: dict[str, Path], accepted: Path | None = None) -> None:
    """The package stage into the workspace's release folder, metrics and release record."""
    from pipeline import package

    given = dict(inputs, accepted=accepted) if accepted else inputs
    assert package.main(package_args(given, root / "data" / "release", root / "metrics" / "package.json",
                                     "--released", str(root / release.RELEASED_RECORD))) == 0


def next_lines(dvc_yaml: Path, capsys: pytest.CaptureFixture[str]) -> str:
    assert status.main(["--dvc-yaml", str(dvc_yaml)]) == 0
    out = capsys.readouterr().out
    return out[out.index("\nnext:"):]


AGREE = [("v@example.org", "(a)", "(b)")]
SWAPPED = [("v@example.org", "(b)", "(a)")]


def test_before_the_pipeline_ran_next_is_dvc_repro(tmp_path, capsys):
    text = next_lines(workspace(tmp_path), capsys)
    assert "`dvc repro`" in text and "clipblind push" not in text


def test_awaiting_annotations_next_is_push_and_annotate(tmp_path, inputs, capsys):
    dvc_yaml = workspace(tmp_path)
    assert run_accept(tmp_path, None)["written"] == 0
    empty = tmp_path / "accepted.parquet"
    schemas.write_table(schemas.empty("accepted"), empty, "accepted")
    run_package(tmp_path, inputs, empty)
    assert release.is_awaiting(tmp_path / "data" / "release")
    text = next_lines(dvc_yaml, capsys)
    assert "`clipblind push`" in text and "Annotate" in text
    assert "push-verification" not in text and "clipblind tag" not in text


def test_a_fresh_clone_next_is_dvc_repro_not_what_the_committed_metrics_say(tmp_path, inputs, capsys):
    dvc_yaml = workspace(tmp_path)
    run_accept(tmp_path, None)
    empty = tmp_path / "accepted.parquet"
    schemas.write_table(schemas.empty("accepted"), empty, "accepted")
    run_package(tmp_path, inputs, empty)
    shutil.rmtree(tmp_path / "data" / "release")  # a clone holds the committed metrics, not the DVC outputs
    text = next_lines(dvc_yaml, capsys)
    assert "`dvc repro`" in text and "`clipblind push`" not in text


def test_questions_awaiting_verification_next_is_push_verification(tmp_path, inputs, capsys):
    dvc_yaml = workspace(tmp_path)
    metrics = run_accept(tmp_path, {"p0": AGREE})
    assert metrics["pending_by_reason"]["awaiting_verification"] == 1
    empty = tmp_path / "accepted.parquet"
    schemas.write_table(schemas.empty("accepted"), empty, "accepted")
    run_package(tmp_path, inputs, empty)
    text = next_lines(dvc_yaml, capsys)
    assert "1 valid questions await verification: `clipblind push-verification`" in text
    assert "`clipblind pull verification`" in text and "`clipblind push` them" not in text


def test_questions_failing_validation_next_is_feedback_to_their_writers(tmp_path, inputs, capsys):
    dvc_yaml = workspace(tmp_path)
    written = {"p0": GOOD, "p1": REASON_CASES["same_answer"], "p2": REASON_CASES["pair_rejected"]}
    metrics = run_accept(tmp_path, {"p0": AGREE}, written=written)
    assert metrics["invalid_by_reason"]["same_answer"] == 1 and metrics["invalid_by_reason"]["pair_rejected"] == 1
    run_package(tmp_path, inputs)
    text = next_lines(dvc_yaml, capsys)
    # a rejected pair is the writer's own verdict: nothing to send back
    assert "1 questions failed validation (1 same_answer): `clipblind feedback`" in text
    assert "pair_rejected" not in text


def test_questions_awaiting_adjudication_next_is_adjudicate(tmp_path, inputs, capsys):
    dvc_yaml = workspace(tmp_path)
    metrics = run_accept(tmp_path, {"p0": AGREE, "p1": SWAPPED})
    assert metrics["pending_by_reason"] == {"awaiting_verification": 0, "awaiting_adjudication": 1}
    run_package(tmp_path, inputs)
    text = next_lines(dvc_yaml, capsys)
    assert "1 questions await adjudication: `clipblind adjudicate`" in text and "push-verification" not in text


def test_releasable_then_tagged_then_unreleased(tmp_path, inputs, capsys):
    dvc_yaml = workspace(tmp_path)
    run_accept(tmp_path, {"p0": AGREE, "p1": AGREE})
    run_package(tmp_path, inputs)
    folder = tmp_path / "data" / "release"
    assert release.read_manifest(folder)["version"] == "1.0.0"
    text = next_lines(dvc_yaml, capsys)
    assert "1.0.0 is releasable: commit what the run changed" in text and "then `clipblind tag data/release`" in text
    assert "Annotate" not in text and "unreleased" not in text

    release.record_release(tmp_path / release.RELEASED_RECORD, folder)  # what `clipblind tag` records
    run_package(tmp_path, inputs)  # dvc repro after tagging: the same bytes
    text = next_lines(dvc_yaml, capsys)
    assert "1.0.0 is released" in text and "clipblind tag" not in text
    record = tmp_path / release.RELEASED_RECORD
    kept = record.read_bytes()
    record.write_text("[]")  # damaged: status says how to restore it instead of failing
    assert "restore it from git" in next_lines(dvc_yaml, capsys)
    record.write_bytes(kept)

    rows = schemas.read_table(inputs["accepted"], "accepted").to_pylist()
    fewer = tmp_path / "fewer.parquet"  # a pair dropped since the release: the build is 1.0.1-dev
    schemas.write_table(pa.Table.from_pylist(rows[1:], schema=schemas.ACCEPTED), fewer, "accepted")
    run_package(tmp_path, inputs, fewer)
    todo = release.read_manifest(folder)["release"]["todo"]
    assert todo and release.read_manifest(folder)["version"].endswith(release.DEV_SUFFIX)
    text = next_lines(dvc_yaml, capsys)
    assert all(step in text for step in todo) and "is unreleased; to release it:" in text
    assert "clipblind tag" not in text and "is released" not in text
