"""pull: a Label Studio project → a versioned export snapshot the import stages depend on.

Inputs: the running server (params section `labelstudio`), which project (`writing` or
`verification`).
Output: a JSON snapshot (default `labels/<project>.json`, tracked by git): every task that
has at least one submitted annotation, with its data (validation's feedback left out) and those
annotations (annotator email, times, lead time, result), and its draft when it was pushed with
one (annotation.snapshot). Skipped (cancelled) annotations are left out. The file is
canonical JSON (sorted keys and tasks), so pulling twice writes the same bytes.
Metrics: inputs (annotations in the export), accepted (kept), rejected (skipped), tasks,
annotated_tasks, stale_tasks, and per annotator: tasks done, rejects, skipped, seconds per task.
The writing project's metrics add `drafts`: drafted_tasks, annotated (kept annotations of drafted
tasks) = unchanged + edited + discarded (snapshot.DRAFT_OUTCOMES), the same per pattern key of the
draft, and seconds_per_task (lead time: mean, median, annotations) with_draft and without_draft.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from annotation import results
from annotation.labelstudio.client import Client, LabelStudioError
from annotation.labelstudio.roles import SERVERS, WRITING, server
from annotation.labelstudio.server import load_params
from annotation.snapshot import (
    DRAFT_OUTCOMES,
    KEPT_ANNOTATION_KEYS,
    SNAPSHOT_VERSION,
    VOLATILE_DATA_FIELDS,
    draft_of,
    draft_outcome,
    kept_result,
)
from pipeline.core import patterns
from pipeline.core.atomic import write_bytes
from pipeline.core.report import summary, write_metrics

STAGE = "pull"


def snapshot(export: list[dict[str, Any]], users: dict[int, str], project: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Turn a Label Studio JSON export into (snapshot, metrics)."""
    tasks = []
    per_annotator: dict[str, dict[str, Any]] = defaultdict(lambda: {"tasks_done": 0, "rejects": 0, "skipped": 0, "lead_times": []})
    inputs = kept = skipped = stale = 0
    for task in sorted(export, key=lambda t: t["id"]):
        is_stale = bool((task.get("meta") or {}).get("stale"))
        stale += is_stale
        annotations = []
        for ann in sorted(task.get("annotations", []), key=lambda a: a["id"]):
            inputs += 1
            who = users.get(ann.get("completed_by"), f"user-{ann.get('completed_by')}")
            stats = per_annotator[who]
            if ann.get("was_cancelled"):
                skipped += 1
                stats["skipped"] += 1
                continue
            kept += 1
            stats["tasks_done"] += 1
            values = results.fields(ann.get("result", []))
            stats["rejects"] += bool(results.choice(values, "reject"))
            if ann.get("lead_time") is not None:
                stats["lead_times"].append(float(ann["lead_time"]))
            annotations.append({
                **{k: ann.get(k) for k in KEPT_ANNOTATION_KEYS},
                "annotator": who,
                "result": kept_result(ann.get("result", [])),
            })
        if annotations:
            data = {k: v for k, v in task["data"].items() if k not in VOLATILE_DATA_FIELDS}
            kept_task = {"task_id": task["id"], "data": data, "stale": is_stale, "annotations": annotations}
            draft = draft_of(task)
            if draft is not None:
                kept_task["draft"] = draft
            tasks.append(kept_task)
    tasks.sort(key=lambda t: (str(t["data"].get("pair_id", t["data"].get("question_id", ""))), t["task_id"]))
    annotators = {}
    for who, stats in sorted(per_annotator.items()):
        times = stats.pop("lead_times")
        annotators[who] = {
            **stats,
            "seconds_per_task_mean": round(statistics.fmean(times), 2) if times else None,
            "seconds_per_task_median": round(statistics.median(times), 2) if times else None,
        }
    metrics = {
        "project": project,
        "inputs": inputs,
        "accepted": kept,
        "rejected": skipped,
        "rejected_by_reason": {"skipped": skipped},
        "tasks": len(export),
        "annotated_tasks": len(tasks),
        "stale_tasks": stale,
        "annotators": annotators,
    }
    if project == WRITING:
        metrics["drafts"] = draft_metrics(export, tasks)
    return {"version": SNAPSHOT_VERSION, "project": project, "tasks": tasks}, metrics


def _seconds(times: list[float]) -> dict[str, Any]:
    return {"annotations": len(times), "mean": round(statistics.fmean(times), 2) if times else None,
            "median": round(statistics.median(times), 2) if times else None}


def draft_metrics(export: list[dict[str, Any]], tasks: list[dict[str, Any]]) -> dict[str, Any]:
    """What writers did with drafts (per outcome, per pattern key of the draft) and their seconds per task
    with and without a draft, over the snapshot's tasks (`export`: every task, for drafted_tasks)."""
    outcomes = {o: 0 for o in DRAFT_OUTCOMES}
    per_pattern = {key: {o: 0 for o in DRAFT_OUTCOMES} for key in patterns.KEYS}
    times: dict[bool, list[float]] = {True: [], False: []}
    for task in tasks:
        draft = task.get("draft")
        for ann in task["annotations"]:
            if ann.get("lead_time") is not None:
                times[draft is not None].append(float(ann["lead_time"]))
            if draft is None:
                continue
            outcome = draft_outcome(draft["result"], ann["result"])
            outcomes[outcome] += 1
            try:
                pattern = patterns.lookup(results.choice(results.fields(draft["result"]), "pattern")).key
            except patterns.PatternError:
                continue  # a prediction made by hand, outside `clipblind draft`: counted above, in no pattern
            per_pattern[pattern][outcome] += 1
    return {
        "drafted_tasks": sum(draft_of(task) is not None for task in export),
        "annotated": sum(outcomes.values()),
        **outcomes,
        "per_pattern": per_pattern,
        "seconds_per_task": {"with_draft": _seconds(times[True]), "without_draft": _seconds(times[False])},
    }


def with_predictions(export: list[dict[str, Any]], predictions: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The export with each task's predictions (listed by id in it) replaced by the predictions themselves."""
    by_task: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for pred in predictions or []:
        by_task[pred["task"]].append(pred)
    return [{**task, "predictions": sorted(by_task.get(task["id"], []), key=lambda p: p["id"])} for task in export]


def encode(snap: dict[str, Any]) -> bytes:
    """The canonical bytes of a snapshot."""
    return (json.dumps(snap, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode()


def write_snapshot(path: str | Path, snap: dict[str, Any]) -> bool:
    """Write the snapshot unless the file already holds the same bytes; return whether it changed."""
    data = encode(snap)
    path = Path(path)
    if path.exists() and path.read_bytes() == data:
        return False
    write_bytes(path, data)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: `clipblind pull [writing|verification] [--out labels/<project>.json]`."""
    parser = argparse.ArgumentParser(prog="clipblind pull", description=__doc__.splitlines()[0])
    parser.add_argument("project", nargs="?", default=WRITING, choices=SERVERS)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", help="snapshot file (default labels/<project>.json)")
    parser.add_argument("--metrics", help="metrics file (default metrics/pull_<project>.json)")
    args = parser.parse_args(argv)
    params = load_params(args.params, parser)
    role_server = server(params, args.project)
    title = role_server.project
    out = Path(args.out or f"labels/{args.project}.json")
    metrics_path = Path(args.metrics or f"metrics/pull_{args.project}.json")
    client = Client.from_params(params, args.project)
    project = client.project_by_title(title)
    if project is None:
        raise LabelStudioError(f"no project {title!r} on {role_server.url}: run `clipblind push` first")
    export = client.export(project["id"])
    if args.project == WRITING:  # the export lists each task's predictions by id only: the drafts come apart
        export = with_predictions(export, client.request("GET", "/api/predictions/", params={"project": project["id"]}))
    snap, metrics = snapshot(export, client.users(), args.project)
    changed = write_snapshot(out, snap)
    write_metrics(metrics_path, metrics)
    summary(STAGE, f"{metrics['accepted']} annotations on {metrics['annotated_tasks']} tasks "
                   f"({metrics['rejected']} skipped left out) → {out} ({'updated' if changed else 'unchanged'})")
    return 0


if __name__ == "__main__":
    from pipeline.core.errors import run_command

    raise SystemExit(run_command(main, "pull"))
