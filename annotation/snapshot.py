"""Label Studio export snapshots (labels/*.json): the committed record the offline stages read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SNAPSHOT_VERSION = 1


KEPT_ANNOTATION_KEYS = ("id", "created_at", "updated_at", "lead_time")


def read_snapshot(path: str | Path) -> dict[str, Any]:
    """Read a snapshot written by `pull`."""
    snap = json.loads(Path(path).read_text())
    if snap.get("version") != SNAPSHOT_VERSION:
        raise ValueError(f"{path}: snapshot version {snap.get('version')!r}, expected {SNAPSHOT_VERSION}: pull again")
    return snap
