"""Bring your own CLIP embeddings: clip-retrieval's output as the CLIP side of the embed stage.

clip-retrieval (`clip-retrieval inference`) writes, per output partition k,

    img_emb/img_emb_k.npy        float16 [rows, dim], L2-normalised
    metadata/metadata_k.parquet  one row per vector, in the same order; `image_path` names the file

This module matches each metadata row to the images table by location (a path relative to
the corpus root, as ingest recorded it, after removing `config.strip_prefix`, the folder
clip-retrieval was pointed at) and writes the
vectors in this project's embedding format (`pipeline.embedding.store`), re-normalised. The
encoder description records what the params say produced them and a digest of the files.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.errors import ClipblindError
from pipeline.embedding import store as embeddings
from pipeline.embedding.encoders import library_versions
from pipeline.params import EncoderParams

DEFAULT_PATH_COLUMN = "image_path"


class ClipRetrievalError(ClipblindError, ValueError):
    """A clip-retrieval output folder is missing files or does not fit together."""


def partitions(folder: Path) -> list[tuple[Path, Path]]:
    """(img_emb_k.npy, metadata_k.parquet) pairs of a clip-retrieval output folder, by k."""
    emb = {int(p.stem.rsplit("_", 1)[1]): p for p in (folder / "img_emb").glob("img_emb_*.npy")}
    meta = {int(p.stem.rsplit("_", 1)[1]): p for p in (folder / "metadata").glob("metadata_*.parquet")}
    if not emb:
        raise ClipRetrievalError(f"{folder}/img_emb/ has no img_emb_*.npy: is {folder} a clip-retrieval output folder?")
    if set(emb) != set(meta):
        raise ClipRetrievalError(
            f"{folder}: partitions {sorted(set(emb) ^ set(meta))} have vectors or metadata but not both; "
            "rerun clip-retrieval or remove the incomplete partitions"
        )
    return [(emb[k], meta[k]) for k in sorted(emb)]


def import_clip_retrieval(
    folder: Path, images: pa.Table, out_dir: Path, params: EncoderParams, shard_size: int
) -> dict[str, Any]:
    """Write the CLIP vectors of every image of `images` found in `folder` to `out_dir`; return counts."""
    column = params.config.get("path_column", DEFAULT_PATH_COLUMN)
    strip = str(params.config.get("strip_prefix", "")).rstrip("/")
    location_to_id = {
        loc: image_id
        for image_id, locs in zip(images.column("image_id").to_pylist(), images.column("locations").to_pylist())
        for loc in locs
    }
    found: dict[str, tuple[int, int]] = {}  # image_id → (partition, row)
    rows = unmatched = duplicates = 0
    digest = hashlib.sha256()
    dim = None
    parts = partitions(folder)
    for k, (emb_path, meta_path) in enumerate(parts):
        vectors = np.load(emb_path, mmap_mode="r")
        paths = pq.read_table(meta_path, columns=[column]).column(column).to_pylist() if _has(meta_path, column) else None
        if paths is None:
            raise ClipRetrievalError(
                f"{meta_path} has no {column!r} column (columns: {pq.read_schema(meta_path).names}); "
                "set embed.clip.config.path_column"
            )
        if len(paths) != vectors.shape[0] or vectors.ndim != 2:
            raise ClipRetrievalError(f"{emb_path} holds {vectors.shape} vectors for {len(paths)} metadata rows in {meta_path}")
        if dim is not None and vectors.shape[1] != dim:
            raise ClipRetrievalError(f"{emb_path} has dim {vectors.shape[1]}, earlier partitions {dim}")
        dim = int(vectors.shape[1])
        digest.update(emb_path.read_bytes())
        digest.update(meta_path.read_bytes())
        for row, path in enumerate(paths):
            rows += 1
            image_id = location_to_id.get(_location(str(path), strip))
            if image_id is None:
                unmatched += 1
            elif image_id in found:
                duplicates += 1
            else:
                found[image_id] = (k, row)
    description = {
        "name": "clip",
        "kind": "clip_retrieval",
        "model": params.model,
        "weights": params.weights,
        "random_init": params.weights == "random",
        "dim": dim,
        "source_sha256": digest.hexdigest(),
        "partitions": len(parts),
        "versions": library_versions(),
    }
    fp = embeddings.fingerprint(description)
    out_dir.mkdir(parents=True, exist_ok=True)
    embeddings.write_description(out_dir, description)
    image_ids = images.column("image_id").to_pylist()
    plan = embeddings.sync_plan([out_dir], image_ids, shard_size)
    loaded = [np.load(e, mmap_mode="r") for e, _ in parts]
    written = 0
    for shard in plan:
        shard = embeddings.ShardPlan(shard.index, tuple(i for i in shard.image_ids if i in found))
        if not shard.image_ids or embeddings.shard_complete(out_dir, shard, fp):
            continue
        block = np.stack([loaded[found[i][0]][found[i][1]] for i in shard.image_ids]).astype(np.float32)
        block /= np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-12)
        embeddings.write_shard(out_dir, shard, block, fp)
        written += 1
    missing = sorted(set(image_ids) - set(found))
    return {
        "rows": rows,
        "rows_matched": len(found),
        "rows_unmatched": unmatched,  # files ingest rejected or never saw
        "rows_duplicate": duplicates,  # a second location of bytes already matched
        "images_missing": len(missing),
        "missing": missing[:100],
        "shards_written": written,
    }


def _has(path: Path, column: str) -> bool:
    return column in pq.read_schema(path).names


def _location(path: str, strip: str) -> str:
    if strip and path.startswith(strip + "/"):
        return path[len(strip) + 1 :]
    return path.removeprefix("./")
