"""The candidates and image-groups tables: reading them back with the search settings they were made under."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.core import schemas

ROW_GROUP_ROWS = 1 << 20


def read_candidates(path: str | Path, image_ids: Sequence[str], columns: Sequence[str] | None = None) -> tuple[pa.Table, dict[str, Any]]:
    """The candidates table and its metadata, refusing one made for another images table."""
    meta = schemas.read_meta(path)
    if meta.get("images_sha256") != ids_digest(image_ids):
        raise schemas.SchemaError(
            f"{path} indexes another images table (different image ids or order): rerun the search stage"
        )
    table = schemas.read_table(path, "candidates")
    return (table.select(list(columns)) if columns else table), meta


def read_groups(path: str | Path, image_ids: Sequence[str]) -> pa.Table:
    """The image_groups table, refusing one made for another images table."""
    if schemas.read_meta(path).get("images_sha256") != ids_digest(image_ids):
        raise schemas.SchemaError(f"{path} belongs to another images table: rerun the search stage")
    return schemas.read_table(path, "image_groups")


def ids_digest(image_ids: Sequence[str]) -> str:
    """Digest of the ordered image ids a candidates table indexes."""
    return hashlib.sha256("\n".join(image_ids).encode()).hexdigest()
