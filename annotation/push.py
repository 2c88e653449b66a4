"""push: Label Studio tasks → the question-writing project on the local server.

Inputs: the task JSON the export stage writes (one task per pair), the display folder it
fills, the drafts file `clipblind draft` writes when there is one (data/drafts.json); params
section `labelstudio`.
Effect: creates or updates the project (labeling config, guidelines as instructions, drafts
shown as pre-annotations), connects local-files storage to the display folder, imports tasks for
pairs not yet there, each with an empty `feedback` data field (`clipblind feedback` fills it) and
its pair's draft, if any, as a prediction: the writer sees the form filled in and submits it as
it is, edits it or discards it; a draft is never an annotation. A task pushed before its pair had
a draft gets the draft on the next push while nobody has annotated it.
A task is identified by its pair_id, so pushing twice adds nothing. Tasks whose pair is gone
after re-mining are marked stale (meta.stale) when annotated and deleted when not; a stale
task whose pair returns is marked live again.
Metrics: inputs, accepted (pushable tasks), rejected by reason (bad image URL, missing
display image), imported, already_present, stale_marked, stale_deleted, revived, drafted (tasks
given a draft by this push), drafts_left_out (drafts the labeling config does not fit),
drafts_invalid (drafts validate's check refuses, e.g. in a file edited by hand: never pushed).
"""

from __future__ import annotations

import argparse
import functools
import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from annotation.draft import read_drafts, still_valid
from annotation.labelstudio.client import Client
from annotation.labelstudio.roles import WRITING, server
from annotation.labelstudio.server import load_params
from annotation.snapshot import FEEDBACK_FIELD
from pipeline.core import patterns
from pipeline.core.config import command_params
from pipeline.core.errors import ClipblindError
from pipeline.core.report import summary, write_metrics
from pipeline.params import LabelStudioParams, ValidateParams

STAGE = "push"
HERE = Path(__file__).parent
WRITING_CONFIG = HERE / "writing.xml"
GUIDELINES = HERE / "guidelines.html"  # the writers'; verifiers get their own (push_verification)
IMAGE_FIELDS = ("image_a", "image_b")
# The closed sets a labeling config template offers, each filling a `<!-- choices: NAME -->` line.
CONFIG_CHOICES: dict[str, tuple[str, ...]] = {"patterns": patterns.PAPER_NAMES, "answers": patterns.ANSWERS}
_CHOICES_LINE = re.compile(r"^(?P<indent>[ \t]*)<!-- choices: (?P<name>\w+) -->[ \t]*$", re.MULTILINE)


def render_config(template: str) -> str:
    """A labeling config with each `<!-- choices: NAME -->` line replaced by the Choice elements of that set.

    Label Studio shows and stores a Choice's value: patterns appear by the paper's names (validate maps
    them to keys), answers as the answer letters. Text without such lines comes back unchanged.
    """

    def fill(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in CONFIG_CHOICES:
            raise ValueError(f"labeling config asks for choices {name!r}; known sets: {sorted(CONFIG_CHOICES)}")
        return "\n".join(f'{match["indent"]}<Choice value="{escape(v, quote=True)}"/>' for v in CONFIG_CHOICES[name])

    return _CHOICES_LINE.sub(fill, template)


_PATTERN_MARK = re.compile(r"<!-- pattern: (?P<key>\w+) -->|<!-- pattern names -->")


def render_guidelines(template: str) -> str:
    """The annotator guidelines with `<!-- pattern: KEY -->` replaced by that pattern's name as writers
    see it, and `<!-- pattern names -->` by all nine, in order."""

    def fill(match: re.Match[str]) -> str:
        if match["key"] is None:
            return "; ".join(escape(p.paper) for p in patterns.PATTERNS) + "."
        return escape(patterns.by_key(match["key"]).paper)

    return _PATTERN_MARK.sub(fill, template)


def writing_config() -> str:
    """The writing project's labeling config, as pushed to Label Studio."""
    return render_config(WRITING_CONFIG.read_text())


@dataclass(frozen=True)
class PushPlan:
    """What a push changes, computed from the wanted tasks and the project's current tasks."""

    new: list[dict[str, Any]] = field(default_factory=list)
    already_present: int = 0
    stale_mark: list[int] = field(default_factory=list)  # task ids: annotated, pair gone
    stale_delete: list[int] = field(default_factory=list)  # task ids: unannotated, pair gone
    revive: list[int] = field(default_factory=list)  # task ids: marked stale, pair back
    undrafted: dict[int, str] = field(default_factory=dict)  # task id → key: present, untouched, no prediction


def image_problem(url: str, display_dir: Path) -> str | None:
    """Why Label Studio could not serve this task image URL from the display folder (None if it can)."""
    parts = urlsplit(url)
    rel = parse_qs(parts.query).get("d", [""])[0]
    if parts.path != LOCAL_FILES_PATH or not rel:
        return "bad_image_url"
    root = display_dir.resolve().parent  # the document root the launcher gives Label Studio
    target = (root / rel).resolve()
    if target.parent != display_dir.resolve():
        return "bad_image_url"
    if not target.is_file():
        return "missing_display_image"
    return None


def check_tasks(tasks: list[dict[str, Any]], display_dir: Path) -> tuple[list[dict[str, Any]], Counter[str], list[str]]:
    """Split tasks into pushable ones and rejects; return (ok, reasons, messages naming each reject)."""
    ok: list[dict[str, Any]] = []
    reasons: Counter[str] = Counter()
    messages: list[str] = []
    for index, task in enumerate(tasks):
        data = task.get("data", {})
        problems: list[tuple[str, str]] = []
        for f in IMAGE_FIELDS:
            problem = image_problem(str(data.get(f, "")), display_dir)
            if problem:
                problems.append((f, problem))
        if not data.get("pair_id"):
            problems.append(("pair_id", "missing_pair_id"))
        if problems:
            field_name, reason = problems[0]
            reasons[reason] += 1
            messages.append(
                f"task {index} (pair {data.get('pair_id')!r}): {field_name}={data.get(field_name)!r} is {reason}: "
                f"the URL must be {LOCAL_FILES_PATH}?d={display_dir.name}/<file> for a file in {display_dir} "
                "(export.url_prefix in params.yaml; rerun `dvc repro export`)"
            )
        else:
            ok.append(task)
    return ok, reasons, messages


def plan(wanted: list[dict[str, Any]], existing: list[dict[str, Any]], key: str = "pair_id") -> PushPlan:
    """Compare wanted tasks with the project's tasks by the task data field `key`."""
    present = {t["data"].get(key): t for t in existing}
    wanted_ids = {t["data"][key] for t in wanted}
    new = [t for t in wanted if t["data"][key] not in present]
    stale_mark, stale_delete, revive = [], [], []
    undrafted = {}
    for pair, task in sorted(present.items(), key=lambda kv: kv[1]["id"]):
        is_stale = bool((task.get("meta") or {}).get("stale"))
        touched = task.get("total_annotations", 0) + task.get("cancelled_annotations", 0) > 0
        if pair in wanted_ids and not touched and not task.get("total_predictions", 0):
            undrafted[task["id"]] = pair
        if pair not in wanted_ids:
            if touched and not is_stale:
                stale_mark.append(task["id"])
            elif not touched:
                stale_delete.append(task["id"])
        elif is_stale:
            revive.append(task["id"])
    return PushPlan(new, len(wanted) - len(new), stale_mark, stale_delete, revive, undrafted)


def confirm_untouched(export: list[dict[str, Any]], todo: PushPlan) -> PushPlan:
    """The plan with each task it would delete checked against the project's export: a task that holds an
    annotation (submitted or skipped) or an unsubmitted draft is marked stale instead of deleted.

    plan() reads the server's per-task annotation counters, which the server keeps apart from the
    annotations themselves; on SQLite under concurrent submissions they were seen to lag. Deleting a
    task deletes its annotations, so the export's own rows decide.
    """
    if not todo.stale_delete:
        return todo
    by_id = {task["id"]: task for task in export}
    keep = [task_id for task_id in todo.stale_delete
            if by_id.get(task_id, {}).get("annotations") or by_id.get(task_id, {}).get("drafts")]
    if not keep:
        return todo
    for task_id in keep:
        print(f"[{STAGE}] task {task_id} left the pairs and holds work the server's counters missed: marked stale, "
              "not deleted")
    return replace(todo, stale_delete=[t for t in todo.stale_delete if t not in keep],
                   stale_mark=sorted(todo.stale_mark + keep))


@functools.cache
def writing_controls() -> dict[str, tuple[str, str]]:
    """Each choice and text control of the writing config: name → (result type, the object it labels)."""
    import xml.etree.ElementTree as ElementTree

    root = ElementTree.fromstring(writing_config())
    return {e.attrib["name"]: (e.tag.lower(), e.attrib["toName"]) for e in root.iter() if e.tag in ("Choices", "TextArea")}


def prediction(draft: dict[str, str], model_version: str) -> dict[str, Any]:
    """A Label Studio pre-annotation of the writing form from a draft (its non-empty fields)."""
    controls = writing_controls()
    result = []
    for name, value in draft.items():
        if not value or name not in controls:
            continue
        kind, to_name = controls[name]
        key = "choices" if kind == "choices" else "text"
        result.append({"from_name": name, "to_name": to_name, "type": kind, "value": {key: [value]}})
    return {"model_version": model_version, "result": result}


def push(
    client: Client,
    params: LabelStudioParams,
    tasks: list[dict[str, Any]],
    display_dir: Path,
    drafts: dict[str, dict[str, str]] | None = None,
    model_version: str = "",
) -> dict[str, Any]:
    """Push tasks to the writing project, each with an empty feedback field and its draft as a prediction;
    return the metrics. `model_version` names the drafts' model (the project shows its predictions)."""
    # show_collab_predictions: the editor opens a task with its prediction filled into the form
    settings: dict[str, Any] = {"maximum_annotations": 1, "show_collab_predictions": True}
    if model_version:
        settings["model_version"] = model_version
    tasks = [{**task, "data": {**task["data"], FEEDBACK_FIELD: ""}} for task in tasks]
    return sync(client, params.writing_project, writing_config(), GUIDELINES.read_text(), settings, tasks,
                display_dir, drafts=drafts, model_version=model_version)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: `clipblind push [--tasks data/tasks.json] [--display data/display] [--drafts data/drafts.json]`."""
    parser = argparse.ArgumentParser(prog="clipblind push", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--tasks", default="data/tasks.json")
    parser.add_argument("--display", default="data/display")
    parser.add_argument("--drafts", default="data/drafts.json",
                        help="drafts file from `clipblind draft` (none there: tasks go without drafts)")
    parser.add_argument("--metrics", default="metrics/push.json")
    args = parser.parse_args(argv)
    params = load_params(args.params, parser)
    if not Path(args.tasks).exists():
        raise ClipblindError(f"no task file at {args.tasks}: run `dvc repro export` first")
    tasks = json.loads(Path(args.tasks).read_text())
    model_version, drafts = read_drafts(args.drafts) if Path(args.drafts).exists() else ("", {})
    drafts, refused = still_valid(drafts, command_params(parser, args.params, "validate", ValidateParams))
    for line in refused:
        print(f"[{STAGE}] {line}")
    metrics = push(Client.from_params(params, WRITING), params, tasks, Path(args.display), drafts, model_version)
    metrics["drafts_invalid"] = len(refused)
    write_metrics(args.metrics, metrics)
    summary(STAGE, f"{metrics['imported']} imported, {metrics['already_present']} already there, "
                   f"{metrics['stale_marked']} marked stale, {metrics['stale_deleted']} stale deleted, "
                   f"{metrics['rejected']} skipped, {metrics['drafted']} given a draft"
                   f"{'' if Path(args.drafts).exists() else f' (no drafts file at {args.drafts})'} "
                   f"→ {server(params, WRITING).url}/projects/{metrics['project_id']}")
    return 0


if __name__ == "__main__":
    from pipeline.core.errors import run_command

    raise SystemExit(run_command(main, "push"))


LOCAL_FILES_PATH = "/data/local-files/"


def ensure_project(client: Client, title: str, label_config: str, instructions: str, extra: dict[str, Any]) -> int:
    """Create the project or bring its config and instructions up to date; return its id."""
    # Label Studio stores both stripped; comparing stripped text keeps a second push from patching
    wanted = {"title": title, "label_config": label_config.strip(), "expert_instruction": instructions.strip(),
              "show_instruction": True, "show_skip_button": True, **extra}
    project = client.project_by_title(title)
    if project is None:
        return client.create_project(wanted)
    changed = {k: v for k, v in wanted.items() if project.get(k) != v}
    if changed:
        client.update_project(project["id"], changed)
    return project["id"]


def ensure_storage(client: Client, project_id: int, display_dir: Path) -> None:
    """Connect the display folder as the project's local-files storage (once)."""
    path = str(display_dir.resolve())
    if any(s["path"].rstrip("/") == path for s in client.local_storages(project_id)):
        return
    client.add_local_storage(project_id, path=path, title="display images", use_blob_urls=False,
                             regex_filter=r".*\.jpg$")


def apply(client: Client, project_id: int, todo: PushPlan, drafts: dict[str, dict[str, str]] | None = None,
          model_version: str = "") -> tuple[int, int]:
    """Carry out a push plan; return (tasks given a draft, drafts left out)."""
    drafts = drafts or {}
    drafted = left = 0
    if todo.new:
        payload = []
        for task in todo.new:
            item = {"data": task["data"]}
            draft = drafts.get(task["data"]["pair_id"])
            if draft:
                item["predictions"] = [prediction(draft, model_version)]
            payload.append(item)
        problems_of = client.import_tasks(project_id, payload)
        for index, problems in problems_of.items():
            print(f"[{STAGE}] draft for pair {todo.new[index]['data']['pair_id']!r} left out: "
                  f"{'; '.join(problems)}: fix it in the --drafts file (pattern names as the writing "
                  "config lists them) or run `clipblind draft` again")
        drafted += sum("predictions" in item for item in payload) - len(problems_of)
        left += len(problems_of)
    late = {task_id: drafts[key] for task_id, key in todo.undrafted.items() if key in drafts}
    if late:
        problems_of_late = client.add_predictions(project_id, {t: prediction(d, model_version)
                                                                 for t, d in late.items()})
        for task_id, problems in problems_of_late.items():
            print(f"[{STAGE}] draft for pair {todo.undrafted[task_id]!r} left out: {'; '.join(problems)}")
        drafted += len(late) - len(problems_of_late)
        left += len(problems_of_late)
    for task_id in todo.stale_mark:
        client.set_task_meta(task_id, {"stale": True})
    for task_id in todo.revive:
        client.set_task_meta(task_id, {"stale": False})
    for task_id in todo.stale_delete:
        client.delete_task(task_id)
    return drafted, left


def sync(
    client: Client,
    title: str,
    label_config: str,
    guidelines: str,
    settings: dict[str, Any],
    tasks: list[dict[str, Any]],
    display_dir: Path,
    key: str = "pair_id",
    drafts: dict[str, dict[str, str]] | None = None,
    model_version: str = "",
) -> dict[str, Any]:
    """Bring project `title` (labeling config `label_config` and instructions `guidelines`, both templates
    rendered here) in line with `tasks` (identified by data field `key`); return the metrics."""
    ok, reasons, messages = check_tasks(tasks, display_dir)
    for message in messages:
        print(f"[{STAGE}] skipped {message}")
    project_id = ensure_project(client, title, render_config(label_config), render_guidelines(guidelines), settings)
    ensure_storage(client, project_id, display_dir)
    todo = plan(ok, client.tasks(project_id), key=key)
    if todo.stale_delete:
        todo = confirm_untouched(client.export(project_id), todo)
    drafted, drafts_left_out = apply(client, project_id, todo, drafts, model_version)
    return {
        "project_id": project_id,
        "inputs": len(tasks),
        "accepted": len(ok),
        "rejected": sum(reasons.values()),
        "rejected_by_reason": dict(sorted(reasons.items())),
        "imported": len(todo.new),
        "already_present": todo.already_present,
        "stale_marked": len(todo.stale_mark),
        "stale_deleted": len(todo.stale_delete),
        "revived": len(todo.revive),
        "drafted": drafted,
        "drafts_left_out": drafts_left_out,
    }
