"""Label Studio export snapshots (labels/*.json): the committed record the offline stages read.

A writing task pushed with a draft keeps it in the snapshot (`draft`: the model version and the
prediction's result, as the annotations' results are kept); `draft_outcome` says what the writer
did with it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from annotation import results

SNAPSHOT_VERSION = 1


KEPT_ANNOTATION_KEYS = ("id", "created_at", "updated_at", "lead_time")
KEPT_RESULT_KEYS = ("from_name", "to_name", "type", "value")

# Writing task data: validation's message to the task's writer ("" when none; `clipblind feedback`).
FEEDBACK_FIELD = "feedback"
# Task data the snapshot leaves out: it changes on the server while no annotation changes.
VOLATILE_DATA_FIELDS: tuple[str, ...] = (FEEDBACK_FIELD,)

# What a writer did with a task's draft, judged on each submitted annotation of a drafted task:
DRAFT_UNCHANGED = "unchanged"  # every control holds exactly what the draft filled in
DRAFT_EDITED = "edited"  # the draft's question kept (same words, case and spacing aside), something else changed
DRAFT_DISCARDED = "discarded"  # the pair rejected, or the draft's question replaced
DRAFT_OUTCOMES: tuple[str, ...] = (DRAFT_UNCHANGED, DRAFT_EDITED, DRAFT_DISCARDED)


def kept_result(result: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A Label Studio result as the snapshot keeps it: the control, its object, type and value, in a stable order."""
    return sorted(({k: r.get(k) for k in KEPT_RESULT_KEYS} for r in result),
                  key=lambda r: (r["from_name"], json.dumps(r["value"], sort_keys=True)))


def draft_of(task: dict[str, Any]) -> dict[str, Any] | None:
    """The draft of an exported task (its newest prediction: model version and result), or None."""
    predictions = [p for p in task.get("predictions") or [] if isinstance(p, dict) and p.get("result")]
    if not predictions:
        return None
    newest = max(predictions, key=lambda p: p.get("id") or 0)
    return {"model_version": str(newest.get("model_version") or ""), "result": kept_result(newest["result"])}


def _filled(result: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Each control with what it holds, stripped, empty entries and controls left out."""
    values = {name: sorted(v.strip() for v in entries if v.strip()) for name, entries in results.fields(result).items()}
    return {name: entries for name, entries in values.items() if entries}


def _words(text: str) -> str:
    return " ".join(text.casefold().split())


def draft_outcome(draft: list[dict[str, Any]], annotation: list[dict[str, Any]]) -> str:
    """What the writer did with a draft (DRAFT_OUTCOMES), from the draft's result and the annotation's."""
    drafted, written = _filled(draft), _filled(annotation)
    if results.choice(written, "reject") or _words(results.text(written, "question")) != _words(
            results.text(drafted, "question")):
        return DRAFT_DISCARDED
    return DRAFT_UNCHANGED if drafted == written else DRAFT_EDITED


def read_snapshot(path: str | Path) -> dict[str, Any]:
    """Read a snapshot written by `pull`."""
    snap = json.loads(Path(path).read_text())
    if snap.get("version") != SNAPSHOT_VERSION:
        raise ValueError(f"{path}: snapshot version {snap.get('version')!r}, expected {SNAPSHOT_VERSION}: pull again")
    return snap
