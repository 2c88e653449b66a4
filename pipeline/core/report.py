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


def write_metrics(path: str | Path, metrics: Mapping[str, Any]) -> None:
    """Write a stage's metrics JSON (counts in, out, rejected by reason) atomically."""
    write_json(path, dict(metrics))


def summary(stage: str, text: str) -> None:
    """Print the stage's closing line."""
    print(f"[{stage}] {text}", flush=True)


def warn(stage: str, text: str) -> None:
    """Print a warning a person must not miss (e.g. random weights) to stderr."""
    print(f"[{stage}] WARNING: {text}", file=sys.stderr, flush=True)
