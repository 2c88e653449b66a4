"""The embedding format: L2-normalised float16 shards, keyed by image id, grown incrementally.

A directory per encoder holds, for shard k:

    shard-0000k.npy         float16 [rows, dim], L2-normalised
    shard-0000k.ids.parquet the image_id of each row (table kind `embedding_ids`)
    shard-0000k.done        completion marker, written last: rows, checksums, encoder fingerprint

plus `encoder.json` (the encoder's full description) and `plan.parquet` (table kind
`embedding_plan`: which image ids each shard covers). The plan only ever grows: image ids
it has not seen are appended as new shards, so a grown corpus embeds only its new images,
and a rerun after a kill recomputes exactly the shards without a marker, with the same rows
in the same batches: the result is byte-identical to an uninterrupted run.

A shard counts only when its marker matches the encoder fingerprint and the ids the shard
should hold now (its planned ids still in the images table), so no half-written shard is
ever read (every file is published atomically) and a changed encoder recomputes every shard.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.core import schemas
from pipeline.core.atomic import write_bytes, write_json
from pipeline.core.errors import ClipblindError

FORMAT_VERSION = 1
DESCRIPTION_FILE = "encoder.json"
PLAN_FILE = "plan.parquet"

EMBEDDING_PLAN = schemas.register(
    "embedding_plan",
    pa.schema(
        [
            pa.field("shard", pa.int32(), nullable=False),
            pa.field("image_id", pa.string(), nullable=False),
        ]
    ),
)


class EmbeddingsError(ClipblindError, ValueError):
    """An embeddings directory is incomplete or does not match the images it should cover."""


def fingerprint(description: dict[str, Any]) -> str:
    """A short hash of what determines the vectors (library versions excluded: they are recorded)."""
    stable = {k: v for k, v in description.items() if k not in ("versions", "format_version")}
    return hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()[:16]


def shard_name(index: int) -> str:
    """File stem of shard `index`."""
    return f"shard-{index:05d}"


@dataclass(frozen=True)
class ShardPlan:
    """Shard `index` covers these image ids, in order."""

    index: int
    image_ids: tuple[str, ...]

    def live(self, wanted: set[str] | frozenset[str]) -> ShardPlan:
        """The same shard restricted to the ids in `wanted` (images removed since it was planned drop out)."""
        return ShardPlan(self.index, tuple(i for i in self.image_ids if i in wanted))


def plan_shards(image_ids: Sequence[str], shard_size: int, first_index: int = 0) -> list[ShardPlan]:
    """Split ids into consecutive shards of `shard_size` rows, numbered from `first_index`."""
    if shard_size <= 0:
        raise ValueError(f"shard_size must be positive, got {shard_size}")
    return [
        ShardPlan(first_index + i // shard_size, tuple(image_ids[i : i + shard_size]))
        for i in range(0, len(image_ids), shard_size)
    ]


def extend_plan(plan: Sequence[ShardPlan], image_ids: Sequence[str], shard_size: int) -> list[ShardPlan]:
    """`plan` plus new shards for the ids it does not cover yet, in the order of `image_ids`."""
    covered = {i for shard in plan for i in shard.image_ids}
    new = [i for i in dict.fromkeys(image_ids) if i not in covered]
    first = max((s.index for s in plan), default=-1) + 1
    return list(plan) + plan_shards(new, shard_size, first)


def read_plan(directory: str | Path) -> list[ShardPlan]:
    """The shard plan stored in an embeddings directory (empty when there is none yet)."""
    path = Path(directory) / PLAN_FILE
    if not path.exists():
        return []
    table = schemas.read_table(path, "embedding_plan")
    shards: dict[int, list[str]] = {}
    for index, image_id in zip(table.column("shard").to_pylist(), table.column("image_id").to_pylist()):
        shards.setdefault(index, []).append(image_id)
    return [ShardPlan(index, tuple(ids)) for index, ids in sorted(shards.items())]


def write_plan(directory: str | Path, plan: Sequence[ShardPlan]) -> None:
    """Store the shard plan (atomically; workers sharing a directory write identical plans)."""
    shards = [s.index for s in plan for _ in s.image_ids]
    ids = [i for s in plan for i in s.image_ids]
    table = pa.table(
        {"shard": pa.array(shards, pa.int32()), "image_id": pa.array(ids, pa.string())}, schema=EMBEDDING_PLAN
    )
    schemas.write_table(table, Path(directory) / PLAN_FILE, "embedding_plan")


def sync_plan(directories: Iterable[str | Path], image_ids: Sequence[str], shard_size: int) -> list[ShardPlan]:
    """Extend the longest stored plan with the ids it lacks and store it in every directory.

    Plans of sibling directories (one per encoder) are equal or prefixes of one another;
    anything else means the directories were mixed up by hand and is an error.
    """
    paths = [Path(d) for d in directories]
    stored = [read_plan(d) for d in paths]
    base = max(stored, key=len)
    for directory, plan in zip(paths, stored):
        if plan != base[: len(plan)]:
            raise EmbeddingsError(
                f"{directory / PLAN_FILE} disagrees with the plan of {[str(d) for d in paths]}: "
                "the directories come from different runs; delete them and rerun the embed stage"
            )
    plan = extend_plan(base, image_ids, shard_size)
    for directory, old in zip(paths, stored):
        if old != plan:
            directory.mkdir(parents=True, exist_ok=True)
            write_plan(directory, plan)
    return plan


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


def remove_leftovers(directory: str | Path, shards: Iterable[int]) -> int:
    """Delete the temporary files a killed writer left for these shards; return how many."""
    directory = Path(directory)
    removed = 0
    for index in shards:
        for path in directory.glob(f".{shard_name(index)}.*.tmp"):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def load(directory: str | Path, image_ids: Sequence[str]) -> tuple[np.ndarray, dict[str, Any]]:
    """Vectors for `image_ids`, in that order, as float16 [n, dim], and the encoder description."""
    directory = Path(directory)
    description = read_description(directory)
    expected_fp = fingerprint(description)
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
        rows = [(row, position[i]) for row, i in enumerate(ids) if i in position]
        if not rows:
            continue
        vectors = np.load(directory / f"{name}.npy", mmap_mode="r")
        src, dst = (np.fromiter(c, dtype=np.int64, count=len(rows)) for c in zip(*rows))
        out[dst] = vectors[src]
        seen[dst] = True
    if not seen.all():
        missing = [image_ids[i] for i in np.flatnonzero(~seen)[:3]]
        raise EmbeddingsError(
            f"{directory}: {int((~seen).sum())} of {len(image_ids)} images have no finished embedding "
            f"(e.g. {missing}); rerun the embed stage"
        )
    return out, description


def _ids_digest(image_ids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(image_ids).encode()).hexdigest()
