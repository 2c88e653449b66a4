"""push planning, task checks, admin secrets and pull snapshots, without a server."""

from __future__ import annotations

import copy
import json
import stat
from pathlib import Path

import pytest

from annotation import pull, push, results, snapshot
from annotation.labelstudio import roles, server
from tests.helpers.params import demo_params

SAMPLE = Path("/work/shared/reference/labelstudio_export_sample.json")


def _sample_export() -> list[dict]:
    if not SAMPLE.exists():
        pytest.skip(f"{SAMPLE} (a real Label Studio export) is not on this machine")
    data = json.loads(SAMPLE.read_text())
    return data if isinstance(data, list) else [data]


def test_pull_snapshot_of_a_real_export_keeps_submitted_and_drops_skipped() -> None:
    export = _sample_export()
    task = export[0]
    skipped = copy.deepcopy(task["annotations"][0])
    skipped.update(id=99, was_cancelled=True, completed_by=2, result=[])
    task["annotations"].append(skipped)
    snap, metrics = pull.snapshot(export, {1: "writer@example.org", 2: "other@example.org"}, "writing")
    assert [len(t["annotations"]) for t in snap["tasks"]] == [1]
    kept = snap["tasks"][0]["annotations"][0]
    assert kept["annotator"] == "writer@example.org" and kept["lead_time"] == 42.5
    values = results.fields(kept["result"])
    assert results.choice(values, "pattern") == "Orientation and Direction"
    assert results.text(values, "question") == "Is the arrow pointing to the left or to the right?"
    assert (results.choice(values, "answer_a"), results.choice(values, "answer_b")) == ("(a)", "(b)")
    assert metrics["inputs"] == 2 and metrics["accepted"] == 1 and metrics["rejected"] == 1
    assert metrics["annotators"]["other@example.org"]["skipped"] == 1
    assert metrics["annotators"]["writer@example.org"]["seconds_per_task_mean"] == 42.5
    # the prediction and volatile task fields stay out: the snapshot changes only when answers do
    assert "prediction" not in kept and "updated_at" not in snap["tasks"][0]
    assert pull.encode(snap) == pull.encode(pull.snapshot(list(reversed(export)), {1: "writer@example.org",
                                                                                  2: "other@example.org"}, "writing")[0])


def test_write_snapshot_reports_change_only_when_bytes_differ(tmp_path: Path) -> None:
    snap = {"version": 1, "project": "writing", "tasks": []}
    out = tmp_path / "w.json"
    assert pull.write_snapshot(out, snap) is True
    assert pull.write_snapshot(out, snap) is False
    assert snapshot.read_snapshot(out) == snap
    out.write_text(json.dumps({"version": 0}))
    with pytest.raises(ValueError, match="pull again"):
        snapshot.read_snapshot(out)


def _task(pair: str, task_id: int, annotations: int = 0, stale: bool = False) -> dict:
    return {"id": task_id, "data": {"pair_id": pair}, "meta": {"stale": True} if stale else {},
            "total_annotations": annotations, "cancelled_annotations": 0}


def test_plan_imports_new_pairs_marks_annotated_gone_pairs_stale_and_deletes_the_rest() -> None:
    wanted = [{"data": {"pair_id": p}} for p in ("a", "b", "e")]
    existing = [_task("a", 1), _task("c", 2, annotations=1), _task("d", 3), _task("e", 4, annotations=2, stale=True),
                _task("f", 5, annotations=1, stale=True)]
    todo = push.plan(wanted, existing)
    assert [t["data"]["pair_id"] for t in todo.new] == ["b"]
    assert todo.already_present == 2
    assert (todo.stale_mark, todo.stale_delete, todo.revive) == ([2], [3], [4])
    # applying it and planning again changes nothing
    settled = [_task("a", 1), _task("b", 6), _task("c", 2, 1, True), _task("e", 4, 2), _task("f", 5, 1, True)]
    again = push.plan(wanted, settled)
    assert (again.new, again.stale_mark, again.stale_delete, again.revive) == ([], [], [], [])


def test_a_task_whose_counters_lag_is_marked_stale_not_deleted() -> None:
    # The server's per-task counters were seen to lag its annotations on SQLite under ten concurrent writers
    # (tests/annotation/test_load.py); a lag cannot be produced on demand, so the export rows are written here.
    wanted = [{"data": {"pair_id": "a"}}]
    existing = [_task("a", 1), _task("gone-annotated", 2), _task("gone-drafted", 3), _task("gone-empty", 4)]
    todo = push.plan(wanted, existing)
    assert todo.stale_delete == [2, 3, 4]  # the counters say nobody touched them
    export = [{"id": 1, "annotations": []}, {"id": 2, "annotations": [{"id": 7, "result": []}], "drafts": []},
              {"id": 3, "annotations": [], "drafts": [{"id": 9}]}, {"id": 4, "annotations": [], "drafts": []}]
    checked = push.confirm_untouched(export, todo)
    assert (checked.stale_delete, checked.stale_mark) == ([4], [2, 3])
    assert push.confirm_untouched(export, checked) == checked


def test_check_tasks_rejects_urls_outside_the_display_folder(tmp_path: Path) -> None:
    display = tmp_path / "data" / "display"
    display.mkdir(parents=True)
    (display / "x.jpg").write_bytes(b"jpeg")
    (tmp_path / "data" / "y.jpg").write_bytes(b"jpeg")
    ok_url = "/data/local-files/?d=display/x.jpg"

    def task(pair: str, url: str) -> dict:
        return {"data": {"pair_id": pair, "image_a": ok_url, "image_b": url}}

    tasks = [task("ok", ok_url), task("outside", "/data/local-files/?d=y.jpg"),
             task("escape", "/data/local-files/?d=display/../y.jpg"), task("missing", "/data/local-files/?d=display/z.jpg"),
             task("foreign", "http://example.org/x.jpg"), {"data": {"image_a": ok_url, "image_b": ok_url}}]
    ok, reasons, messages = push.check_tasks(tasks, display)
    assert [t["data"]["pair_id"] for t in ok] == ["ok"]
    assert reasons == {"bad_image_url": 3, "missing_display_image": 1, "missing_pair_id": 1}
    assert len(messages) == 5 and "export.url_prefix" in messages[0] and "'outside'" in messages[0]


def test_admin_secret_is_generated_private_and_never_a_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in server.SECRET_ENV.values():
        monkeypatch.delenv(var, raising=False)
    params = roles.server(demo_params("labelstudio", data_dir=str(tmp_path / "a")), roles.WRITING)
    other = roles.server(demo_params("labelstudio", data_dir=str(tmp_path / "b")), roles.WRITING)
    first = server.admin(params)
    assert server.admin(params) == first  # stable once generated
    assert server.admin(other).password != first.password and len(first.password) >= 20
    assert stat.S_IMODE((tmp_path / "a" / roles.WRITING / "admin.json").stat().st_mode) == 0o600
    monkeypatch.setenv("CLIPBLIND_LS_PASSWORD", "only-this-one")
    with pytest.raises(server.ServerError, match="CLIPBLIND_LS_EMAIL"):
        server.admin(params)


def test_missing_labelstudio_venv_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(server.VENV_ENV, raising=False)
    with pytest.raises(server.ServerError, match="make labelstudio"):
        server.executable(demo_params("labelstudio", venv=str(tmp_path / "nope")))


def test_postgresql_needs_its_connection_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in server.POSTGRES_ENV:
        monkeypatch.delenv(var, raising=False)
    params = demo_params("labelstudio", database="postgresql")
    with pytest.raises(server.ServerError, match="POSTGRE_NAME"):
        server.database_env(roles.server(params, roles.WRITING))
    for var in server.POSTGRES_ENV:
        monkeypatch.setenv(var, "x")
    envs = {role: server.database_env(roles.server(params, role)) for role in roles.SERVERS}
    assert {env["DJANGO_DB"] for env in envs.values()} == {"postgresql"}
    # one database per server: the verification server never opens the writers' database
    assert envs[roles.WRITING]["POSTGRE_NAME"] != envs[roles.VERIFICATION]["POSTGRE_NAME"]


def test_suggestions_become_pre_annotations_in_the_writing_config_fields() -> None:
    pred = push.prediction({"pattern": "Text", "question": "What does the sign say?", "option_a": "STOP"}, "rules-v1")
    values = results.fields(pred["result"])
    assert pred["model_version"] == "rules-v1"
    assert (results.choice(values, "pattern"), results.text(values, "question"), results.text(values, "option_a")) == (
        "Text", "What does the sign say?", "STOP")
    config = push.WRITING_CONFIG.read_text()
    assert all(f'name="{r["from_name"]}"' in config for r in pred["result"])
    assert "option_b" not in values
