"""What a stage tells people and DVC: a progress bar, a metrics JSON, a one-line summary."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from pipeline.core.atomic import write_json

T = TypeVar("T")


def progress(items: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """Wrap `items` in a progress bar on a terminal; plain iteration otherwise."""
    from tqdm.auto import tqdm

    yield from tqdm(items, desc=desc, total=total, unit=unit, disable=not sys.stderr.isatty(), leave=False)


# What `dvc metrics show` lists for a stage: a few flat numbers in one shared vocabulary, so the table
# of every stage reads as the funnel and fits a terminal (DVC prints one column per distinct key).
# Each stage's full record (breakdowns by reason, per source, per pattern) is its metrics JSON, an
# uncached output beside it; the headline copies these fields of it.
HEADLINE_KEYS: tuple[str, ...] = ("inputs", "outputs", "rejected", "pending", "status", "version")

# stage → {headline key: the record's field, dotted for a nested one}
HEADLINES: dict[str, dict[str, str]] = {
    "ingest": {"inputs": "inputs", "outputs": "accepted", "rejected": "rejected"},
    "embed": {"inputs": "images_to_embed", "outputs": "images_embedded", "rejected": "images_failed"},
    "search": {"inputs": "images", "outputs": "candidates"},
    "mine": {"inputs": "candidates", "outputs": "pairs"},
    "calibrate": {"inputs": "candidates"},
    "export": {"inputs": "pairs", "outputs": "tasks", "rejected": "pairs_skipped"},
    "gallery": {"inputs": "pairs", "outputs": "shown"},
    "validate": {"inputs": "written", "outputs": "valid", "rejected": "invalid"},
    "accept": {"inputs": "valid", "outputs": "accepted", "rejected": "rejected", "pending": "pending"},
    "gate": {"inputs": "inputs", "outputs": "passed", "rejected": "dropped"},
    "package": {"inputs": "inputs", "outputs": "packaged", "rejected": "rejected", "status": "status",
                "version": "version"},
    "diagnose": {"inputs": "pairs", "outputs": "questions"},
    "evaluate": {"inputs": "benchmark.pairs"},
}


# The mark every picture and page made from a run with randomly initialised encoders carries (plots,
# charts, the gallery), so a screenshot of it is never taken for a result.
RANDOM_WEIGHTS_MARK = "random weights: not a real model"


def write_metrics(path: str | Path, metrics: Mapping[str, Any]) -> None:
    """Write a stage's metrics JSON (counts in, out, rejected by reason) atomically."""
    write_json(path, dict(metrics))


def headline(stage: str, record: Mapping[str, Any]) -> dict[str, Any]:
    """The headline metrics of `stage` (HEADLINES) taken from its full metrics record."""
    if stage not in HEADLINES:
        raise KeyError(f"no headline metrics for stage {stage!r}: add it to report.HEADLINES (stages: {sorted(HEADLINES)})")
    out = {}
    for key, field in HEADLINES[stage].items():
        value: Any = record
        for part in field.split("."):
            if not isinstance(value, Mapping) or part not in value:
                raise KeyError(f"{stage}'s metrics record has no {field!r} for its headline {key!r}: "
                               f"write it or change report.HEADLINES[{stage!r}]")
            value = value[part]
        out[key] = value
    return out


def write_headline(path: str | Path | None, stage: str, record: Mapping[str, Any]) -> None:
    """Write `stage`'s headline metrics (what `dvc metrics show` lists) to `path`; nothing when `path` is None."""
    if path is not None:
        write_json(path, headline(stage, record))


def summary(stage: str, text: str) -> None:
    """Print the stage's closing line."""
    print(f"[{stage}] {text}", flush=True)


def warn(stage: str, text: str) -> None:
    """Print a warning a person must not miss (e.g. random weights) to stderr."""
    print(f"[{stage}] WARNING: {text}", file=sys.stderr, flush=True)
