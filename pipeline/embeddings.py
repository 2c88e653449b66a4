"""The embedding format: L2-normalised float16 shards, row-aligned with the images table.

A directory per encoder holds, for shard k:

    shard-0000k.npy        float16 [rows, dim], L2-normalised
    shard-0000k.ids.parquet the image_id of each row (table kind `embedding_ids`)
    shard-0000k.done       completion marker, written last: rows, checksums, encoder fingerprint

and `encoder.json`, the encoder's full description. A shard counts only when its marker
exists and matches the encoder fingerprint, so a killed run resumes at the first shard
without a marker and never reads a half-written one (every file is published atomically).
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from pipeline import schemas
from pipeline.atomic import write_bytes, write_json

FORMAT_VERSION = 1
DESCRIPTION_FILE = "encoder.json"


class EmbeddingsError(ValueError):
    """An embeddings directory is incomplete or does not match the images it should cover."""


def fingerprint(description: dict[str, Any]) -> str:
    """A short hash of what determines the vectors (library versions excluded: they are recorded)."""
    stable = {k: v for k, v in description.items() if k != "versions"}
    return hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()[:16]


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


@dataclass(frozen=True)
class ShardPlan:
    """Shard `index` covers these image ids, in images-table order."""

    index: int
    image_ids: tuple[str, ...]


def plan_shards(image_ids: Sequence[str], shard_size: int) -> list[ShardPlan]:
    """Split the images table's ids into consecutive shards of `shard_size` rows."""
    if shard_size <= 0:
        raise ValueError(f"shard_size must be positive, got {shard_size}")
    return [
        ShardPlan(i // shard_size, tuple(image_ids[i : i + shard_size]))
        for i in range(0, len(image_ids), shard_size)
    ]


def write_description(directory: str | Path, description: dict[str, Any]) -> None:
    """Record the encoder's description beside its shards."""
    write_json(Path(directory) / DESCRIPTION_FILE, {"format_version": FORMAT_VERSION, **description})


def read_description(directory: str | Path) -> dict[str, Any]:
    """The encoder description stored with an embeddings directory."""
    path = Path(directory) / DESCRIPTION_FILE
    if not path.exists():
        raise EmbeddingsError(f"{path} is missing: run the embed stage")
    return json.loads(path.read_text())


def shard_complete(directory: str | Path, plan: ShardPlan, encoder_fingerprint: str) -> bool:
    """Whether shard `plan` is on disk, finished, and made by the encoder with this fingerprint."""
    marker = Path(directory) / f"{shard_name(plan.index)}.done"
    if not marker.exists():
        return False
    done = json.loads(marker.read_text())
    return bool(
        done.get("fingerprint") == encoder_fingerprint
        and done.get("ids_sha256") == _ids_digest(plan.image_ids)
        and done.get("rows") == len(plan.image_ids)
    )


def write_shard(directory: str | Path, plan: ShardPlan, vectors: np.ndarray, encoder_fingerprint: str) -> None:
    """Publish one shard: vectors and ids first, the completion marker last."""
    if vectors.shape[0] != len(plan.image_ids):
        raise EmbeddingsError(f"shard {plan.index}: {vectors.shape[0]} vectors for {len(plan.image_ids)} ids")
    directory = Path(directory)
    name = shard_name(plan.index)
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(vectors, dtype=np.float16))
    vector_bytes = buffer.getvalue()
    write_bytes(directory / f"{name}.npy", vector_bytes)
    ids = pa.table({"image_id": pa.array(plan.image_ids, pa.string())}, schema=schemas.EMBEDDING_IDS)
    schemas.write_table(ids, directory / f"{name}.ids.parquet", "embedding_ids")
    write_json(
        directory / f"{name}.done",
        {
            "rows": len(plan.image_ids),
            "fingerprint": encoder_fingerprint,
            "ids_sha256": _ids_digest(plan.image_ids),
            "npy_sha256": hashlib.sha256(vector_bytes).hexdigest(),
        },
    )


def remove_stale(directory: str | Path, keep: int) -> None:
    """Delete shard files numbered `keep` and above (left by a larger earlier corpus)."""
    for path in Path(directory).glob("shard-*"):
        index = int(path.name.split(".")[0].split("-")[1])
        if index >= keep:
            path.unlink()


def load(directory: str | Path, image_ids: Sequence[str]) -> tuple[np.ndarray, dict[str, Any]]:
    """Vectors for `image_ids`, in that order, as float16 [n, dim], and the encoder description."""
    directory = Path(directory)
    description = read_description(directory)
    expected_fp = fingerprint({k: v for k, v in description.items() if k != "format_version"})
    position = {image_id: i for i, image_id in enumerate(image_ids)}
    dim = int(description["dim"])
    out = np.zeros((len(image_ids), dim), dtype=np.float16)
    seen = np.zeros(len(image_ids), dtype=bool)
    for marker in sorted(directory.glob("shard-*.done")):
        done = json.loads(marker.read_text())
        if done["fingerprint"] != expected_fp:
            continue
        name = marker.name[: -len(".done")]
        ids = schemas.read_table(directory / f"{name}.ids.parquet", "embedding_ids").column("image_id").to_pylist()
        vectors = np.load(directory / f"{name}.npy")
        for row, image_id in enumerate(ids):
            i = position.get(image_id)
            if i is not None:
                out[i] = vectors[row]
                seen[i] = True
    if not seen.all():
        missing = [image_ids[i] for i in np.flatnonzero(~seen)[:3]]
        raise EmbeddingsError(
            f"{directory}: {int((~seen).sum())} of {len(image_ids)} images have no finished embedding "
            f"(e.g. {missing}); rerun the embed stage"
        )
    return out, description


def _ids_digest(image_ids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(image_ids).encode()).hexdigest()
