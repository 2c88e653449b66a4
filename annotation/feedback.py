"""feedback: validation's verdicts → the writing tasks, so that each writer sees why a question came back.

Inputs: the annotations table validate writes (data/annotations.parquet); the writing project on
the server (params section `labelstudio`).
Effect: each writing task with a question validate rejected for something its writer can fix
(every reason but `pair_rejected` and `stale_pair`) gets its data field `feedback` set to what
the reason means (validate.MESSAGES) and the check's detail, one line per rejected question; every
other task gets it cleared (""). The writing form shows the field as a notice above the form. The
project's data manager gets a tab, `RETURNED_TAB`, listing the tasks whose feedback is not empty:
the writer opens one, fixes the question and presses Update; the next `clipblind pull` and
`dvc repro validate` judge it again, and the next `clipblind feedback` clears the notice once it
is valid. Run it after every `dvc repro validate`, next to `clipblind push-verification`. Only the
writing project is touched: verification tasks are built from the table and never carry feedback.
Metrics: inputs (questions in the table), returned (tasks whose feedback is not empty now),
set (tasks whose feedback this run changed to a message), cleared (changed to ""), unchanged,
missing_tasks (questions whose task is no longer in the project).
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from annotation import validate
from annotation.labelstudio.client import Client, LabelStudioError
from annotation.labelstudio.roles import WRITING, server
from annotation.labelstudio.server import load_params
from annotation.snapshot import FEEDBACK_FIELD
from annotation.tables import NOT_RETURNED
from pipeline.core import schemas
from pipeline.core.report import summary, write_metrics
from pipeline.params import LabelStudioParams

STAGE = "feedback"
# The writing project's data manager tab of the tasks returned to their writers.
RETURNED_TAB = "Returned by validation"


def message(reason: str, detail: str | None) -> str:
    """What the writer reads about one rejected question: the reason's meaning, then the check's detail."""
    return f"{validate.MESSAGES[reason]} ({detail})" if detail else validate.MESSAGES[reason]


def feedback_by_task(annotations: pa.Table) -> dict[int, str]:
    """Writing task id → its feedback, for tasks with a question returned to its writer."""
    lines: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for row in annotations.to_pylist():
        if not row["valid"] and row["reason"] not in NOT_RETURNED:
            lines[row["task_id"]].append((row["annotation_id"], message(row["reason"], row["detail"])))
    return {task: "\n".join(text for _, text in sorted(entries)) for task, entries in lines.items()}


def ensure_returned_tab(client: Client, project_id: int) -> None:
    """Give the project's data manager a tab listing the tasks whose feedback is not empty (once)."""
    views = client.request("GET", "/api/dm/views/", params={"project": project_id}) or []
    if any((view.get("data") or {}).get("title") == RETURNED_TAB for view in views):
        return
    not_empty = {"filter": f"filter:tasks:data.{FEEDBACK_FIELD}", "operator": "regex", "type": "String", "value": "."}
    client.request("POST", "/api/dm/views/", json={"project": project_id, "data": {
        "title": RETURNED_TAB,
        "filters": {"conjunction": "and", "items": [not_empty]},
        "hiddenColumns": {"explore": [], "labeling": []},
    }})


def feedback(client: Client, params: LabelStudioParams, annotations: pa.Table) -> dict[str, Any]:
    """Set or clear each writing task's feedback from the annotations table; return the metrics."""
    project = client.project_by_title(params.writing_project)
    if project is None:
        raise LabelStudioError(f"no project {params.writing_project!r} on {server(params, WRITING).url}: "
                               "run `clipblind push` first")
    wanted = feedback_by_task(annotations)
    tasks = client.tasks(project["id"])
    present = {task["id"] for task in tasks}
    counts = {"set": 0, "cleared": 0, "unchanged": 0}
    for task in tasks:
        text = wanted.get(task["id"], "")
        if task["data"].get(FEEDBACK_FIELD) == text:
            counts["unchanged"] += 1
            continue
        client.request("PATCH", f"/api/tasks/{task['id']}/", json={"data": {**task["data"], FEEDBACK_FIELD: text}})
        counts["set" if text else "cleared"] += 1
    ensure_returned_tab(client, project["id"])
    missing = sorted({row["task_id"] for row in annotations.to_pylist()} - present)
    for task_id in missing:
        print(f"[{STAGE}] task {task_id} of the annotations table is not in project {params.writing_project!r}: "
              "pull again (`clipblind pull`) and rerun `dvc repro validate`")
    return {
        "project_id": project["id"],
        "inputs": annotations.num_rows,
        "returned": sum(1 for task_id in wanted if task_id in present),
        **counts,
        "missing_tasks": len(missing),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: `clipblind feedback [--annotations data/annotations.parquet]`."""
    parser = argparse.ArgumentParser(prog="clipblind feedback", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--annotations", default="data/annotations.parquet", help="validate's annotations table")
    parser.add_argument("--metrics", default="metrics/feedback.json")
    args = parser.parse_args(argv)
    params = load_params(args.params, parser)
    annotations = schemas.read_table(args.annotations, "annotations")
    metrics = feedback(Client.from_params(params, WRITING), params, annotations)
    write_metrics(args.metrics, metrics)
    summary(STAGE, f"{metrics['returned']} tasks returned to their writers ({metrics['set']} newly, "
                   f"{metrics['cleared']} cleared, {metrics['unchanged']} unchanged) → "
                   f"{server(params, WRITING).url}/projects/{metrics['project_id']} (tab {RETURNED_TAB!r})")
    return 0


if __name__ == "__main__":
    from pipeline.core.errors import run_command

    raise SystemExit(run_command(main, "feedback"))
