"""The tables handed from stage to stage: one pyarrow schema each, defined here only.

Every table is written with `write_table` and read with `read_table`, which check the
schema exactly (names, types, order) and the schema version stored in the file's
metadata. Nothing downstream infers a schema.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.atomic import atomic_path
from pipeline.core.errors import ClipblindError

SCHEMA_VERSION = "1"
_META_KIND = b"clipblind.table"
_META_VERSION = b"clipblind.schema_version"
_META_EXTRA = b"clipblind.meta"


class SchemaError(ClipblindError, ValueError):
    """A table on disk does not match the schema its stage expects."""


IMAGES = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),  # sha256 hex of the file bytes
        pa.field("source", pa.string(), nullable=False),  # which configured source it came from
        pa.field("source_path", pa.string(), nullable=False),  # first location, relative to its root
        pa.field("locations", pa.list_(pa.string()), nullable=False),  # every location with these bytes
        pa.field("source_license", pa.string(), nullable=True),
        pa.field("format", pa.string(), nullable=False),  # PIL format name of the original file
        pa.field("width", pa.int32(), nullable=False),  # after EXIF orientation
        pa.field("height", pa.int32(), nullable=False),
        pa.field("n_bytes", pa.int64(), nullable=False),
        pa.field("frame_count", pa.int32(), nullable=False),
    ]
)

REJECTS = pa.schema(
    [
        pa.field("source", pa.string(), nullable=False),
        pa.field("location", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),  # a code from decode.RejectReason
        pa.field("detail", pa.string(), nullable=False),
    ]
)

EMBEDDING_IDS = pa.schema([pa.field("image_id", pa.string(), nullable=False)])

PAIRS = pa.schema(
    [
        pa.field("pair_id", pa.string(), nullable=False),
        pa.field("image_a", pa.string(), nullable=False),  # image_a < image_b
        pa.field("image_b", pa.string(), nullable=False),
        pa.field("clip_sim", pa.float32(), nullable=False),
        pa.field("dino_sim", pa.float32(), nullable=False),
    ]
)

# metrics/accept.json keys that package copies into the card (the funnel's questions_<key>, then
# the annotation figures): accept writes every one of them, package refuses a file without them.
ACCEPT_FUNNEL_COUNTS: tuple[str, ...] = ("written", "valid", "accepted", "rejected", "pending")
ACCEPT_FIGURES: tuple[str, ...] = ("verified", "accepted_adjudicated", "answers_corrected", "pending_by_reason",
                                   "rejected_by_reason", "human_accuracy")

# How an accepted question's answers were confirmed (accepted.verification, question_outcomes.verification):
# a verifier agreed with the writer, or the lead decided (README: "verified" and "adjudicated").
VERIFIED, ADJUDICATED = "verified", "adjudicated"
VERIFICATIONS: tuple[str, ...] = (VERIFIED, ADJUDICATED)

# Accepted annotations: the hand-off from annotation (import + verification) to package.
# One row per accepted pair; answers are "(a)" or "(b)" and differ within a row.
ACCEPTED = pa.schema(
    [
        pa.field("pair_id", pa.string(), nullable=False),
        pa.field("image_a", pa.string(), nullable=False),
        pa.field("image_b", pa.string(), nullable=False),
        pa.field("clip_sim", pa.float32(), nullable=False),
        pa.field("dino_sim", pa.float32(), nullable=False),
        pa.field("pattern", pa.string(), nullable=False),  # one of MMVP's nine visual patterns
        pa.field("tags", pa.list_(pa.string()), nullable=False),  # optional secondary patterns
        pa.field("question", pa.string(), nullable=False),
        pa.field("option_a", pa.string(), nullable=False),
        pa.field("option_b", pa.string(), nullable=False),
        pa.field("answer_a", pa.string(), nullable=False),  # correct option for image_a: "(a)" or "(b)"
        pa.field("answer_b", pa.string(), nullable=False),
        pa.field("statement_a", pa.string(), nullable=True),  # a one-sentence statement true of image_a
        pa.field("statement_b", pa.string(), nullable=True),
        pa.field("writer", pa.string(), nullable=False),  # annotator who wrote the question
        pa.field("verification", pa.string(), nullable=False),  # one of VERIFICATIONS
        pa.field("verifier_answers_a", pa.list_(pa.string()), nullable=False),
        pa.field("verifier_answers_b", pa.list_(pa.string()), nullable=False),
        # the writer's answers when the lead corrected them in adjudication (answer_a/b are then the lead's); else null
        pa.field("writer_answer_a", pa.string(), nullable=True),
        pa.field("writer_answer_b", pa.string(), nullable=True),
    ]
)

TABLES: dict[str, pa.Schema] = {
    "images": IMAGES,
    "rejects": REJECTS,
    "embedding_ids": EMBEDDING_IDS,
    "pairs": PAIRS,
    "accepted": ACCEPTED,
}


def register(kind: str, schema: pa.Schema) -> pa.Schema:
    """Add a table type defined by a later stage; a name may be registered only once."""
    if kind in TABLES and not TABLES[kind].equals(schema):
        raise SchemaError(f"table kind {kind!r} is already registered with another schema")
    TABLES[kind] = schema
    return schema


def pair_id(image_a: str, image_b: str) -> str:
    """Stable id of an unordered pair: the same two images give the same id in any order."""
    a, b = sorted((image_a, image_b))
    return hashlib.sha256(f"{a}:{b}".encode()).hexdigest()[:20]


def empty(kind: str) -> pa.Table:
    """A zero-row table of the given kind."""
    return TABLES[kind].empty_table()


def write_table(table: pa.Table, path: str | Path, kind: str, meta: Mapping[str, Any] | None = None) -> None:
    """Check `table` against the `kind` schema and write it as parquet, atomically."""
    schema = TABLES[kind]
    _check(table.schema, schema, kind, str(path))
    metadata = {_META_KIND: kind.encode(), _META_VERSION: SCHEMA_VERSION.encode()}
    if meta:
        metadata[_META_EXTRA] = json.dumps(dict(meta), sort_keys=True).encode()
    table = table.cast(schema).replace_schema_metadata(metadata)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", write_statistics=False)


class TableWriter:
    """Appends checked row groups to a table being written by `open_writer`; set `meta` before it closes."""

    def __init__(self, writer: pq.ParquetWriter, kind: str, where: str) -> None:
        self._writer = writer
        self.kind = kind
        self.where = where
        self.meta: Mapping[str, Any] | None = None

    def write(self, table: pa.Table) -> None:
        """Append `table` (checked against the kind's schema) as row groups."""
        _check(table.schema, TABLES[self.kind], self.kind, self.where)
        self._writer.write_table(table.cast(TABLES[self.kind]))


@contextmanager
def open_writer(path: str | Path, kind: str) -> Iterator[TableWriter]:
    """Stream a table of `kind` to `path` chunk by chunk; the file appears atomically when the block ends."""
    schema = TABLES[kind].with_metadata({_META_KIND: kind.encode(), _META_VERSION: SCHEMA_VERSION.encode()})
    with atomic_path(path) as tmp:
        with pq.ParquetWriter(tmp, schema, compression="zstd", write_statistics=False) as writer:
            handle = TableWriter(writer, kind, str(path))
            yield handle
            if handle.meta:
                writer.add_key_value_metadata({_META_EXTRA: json.dumps(dict(handle.meta), sort_keys=True).encode()})


def read_table(path: str | Path, kind: str) -> pa.Table:
    """Read a parquet table written by `write_table`, refusing another kind or version."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{kind} table not found at {path}: run the stage that writes it first")
    table = pq.read_table(path)
    metadata = table.schema.metadata or {}
    found_kind = metadata.get(_META_KIND, b"").decode()
    found_version = metadata.get(_META_VERSION, b"").decode()
    if found_kind != kind:
        raise SchemaError(f"{path} holds a {found_kind or 'foreign'!s} table, expected {kind!r}")
    if found_version != SCHEMA_VERSION:
        raise SchemaError(
            f"{path} has schema version {found_version!r}, this code reads {SCHEMA_VERSION!r}: "
            "rerun the stage that wrote it (dvc repro)"
        )
    _check(table.schema, TABLES[kind], kind, str(path))
    return table.replace_schema_metadata(None).cast(TABLES[kind])


def read_meta(path: str | Path) -> dict[str, Any]:
    """The extra metadata a stage stored with a table (empty when none)."""
    metadata = pq.read_schema(path).metadata or {}
    # A streamed table (open_writer) adds its metadata to the file footer once all rows are in.
    raw = metadata.get(_META_EXTRA) or (pq.read_metadata(path).metadata or {}).get(_META_EXTRA)
    return json.loads(raw) if raw else {}


def _check(found: pa.Schema, expected: pa.Schema, kind: str, where: str) -> None:
    found_fields = [(f.name, f.type) for f in found]
    expected_fields = [(f.name, f.type) for f in expected]
    if found_fields != expected_fields:
        raise SchemaError(
            f"{where}: {kind} table has columns {found_fields}, expected {expected_fields}"
        )


# Row indices into the images table rather than image ids: 16 bytes per candidate instead of
# ~150, which matters at 10^7+ candidates. The table's metadata holds the digest of the image
# ids it indexes, and readers refuse a table made for another images table.
CANDIDATES = register(
    "candidates",
    pa.schema(
        [
            pa.field("row_a", pa.int32(), nullable=False),  # row_a < row_b, rows of the images table
            pa.field("row_b", pa.int32(), nullable=False),
            pa.field("clip_sim", pa.float32(), nullable=False),
            pa.field("dino_sim", pa.float32(), nullable=False),
        ]
    ),
)


# One row per image: its near-duplicate group (the smallest row linked to it through pairs the
# guard dropped; its own row when none) and its k-means cluster over CLIP embeddings.
IMAGE_GROUPS = register(
    "image_groups",
    pa.schema(
        [
            pa.field("row", pa.int32(), nullable=False),
            pa.field("duplicate_group", pa.int32(), nullable=False),
            pa.field("cluster", pa.int32(), nullable=False),
        ]
    ),
)


GATE = register(
    "gate",
    pa.schema(
        [
            pa.field("item_id", pa.string(), nullable=False),  # <pair_id>-<member>, as in the release
            pa.field("pair_id", pa.string(), nullable=False),
            pa.field("member", pa.string(), nullable=False),
            pa.field("checked", pa.bool_(), nullable=False),  # false: the item could not be asked (see detail)
            pa.field("blind_right", pa.int32(), nullable=False),  # of BLIND_TRIALS trials without the right image
            pa.field("real_answers", pa.list_(pa.string()), nullable=False),  # letters with X, original then swapped
            pa.field("flags", pa.list_(pa.string()), nullable=False),
            pa.field("detail", pa.string(), nullable=False),
        ]
    ),
)


# Questions the validate stage read from the writing snapshot, valid or not (one row per annotation).
# Patterns are stored as their stable key (pipeline.core.patterns.Pattern.key), never a display name.
ANNOTATIONS = register("annotations", pa.schema([
    pa.field("question_id", pa.string(), nullable=False),  # "<pair_id>-<writing annotation id>"
    pa.field("pair_id", pa.string(), nullable=False),
    pa.field("task_id", pa.int64(), nullable=False),
    pa.field("annotation_id", pa.int64(), nullable=False),
    pa.field("writer", pa.string(), nullable=False),
    pa.field("image_a", pa.string(), nullable=False),
    pa.field("image_b", pa.string(), nullable=False),
    pa.field("image_a_url", pa.string(), nullable=False),
    pa.field("image_b_url", pa.string(), nullable=False),
    pa.field("pattern", pa.string(), nullable=False),  # pattern key; "" when the choice is none of the nine
    pa.field("tags", pa.list_(pa.string()), nullable=False),  # pattern keys
    pa.field("question", pa.string(), nullable=False),  # untrusted text, stored exactly as typed
    pa.field("option_a", pa.string(), nullable=False),
    pa.field("option_b", pa.string(), nullable=False),
    pa.field("answer_a", pa.string(), nullable=False),
    pa.field("answer_b", pa.string(), nullable=False),
    pa.field("statement_a", pa.string(), nullable=True),
    pa.field("statement_b", pa.string(), nullable=True),
    pa.field("lead_time_s", pa.float64(), nullable=True),
    pa.field("valid", pa.bool_(), nullable=False),
    pa.field("reason", pa.string(), nullable=True),  # one of annotation.tables.INVALID_REASONS when not valid
    pa.field("detail", pa.string(), nullable=True),
]))

# A question's outcome (question_outcomes.status).
OUTCOME_ACCEPTED, OUTCOME_REJECTED, OUTCOME_PENDING = "accepted", "rejected", "pending"
OUTCOME_STATUSES: tuple[str, ...] = (OUTCOME_ACCEPTED, OUTCOME_REJECTED, OUTCOME_PENDING)

# Each valid or invalid question's outcome in the accept stage (one row per question).
OUTCOMES = register("question_outcomes", pa.schema([
    pa.field("question_id", pa.string(), nullable=False),
    pa.field("pair_id", pa.string(), nullable=False),
    pa.field("pattern", pa.string(), nullable=False),  # pattern key (as in annotations)
    pa.field("status", pa.string(), nullable=False),  # one of OUTCOME_STATUSES
    pa.field("reason", pa.string(), nullable=True),  # annotation.tables INVALID_REASONS or OUTCOME_REASONS
    pa.field("verification", pa.string(), nullable=True),  # one of VERIFICATIONS when accepted
    pa.field("verifiers", pa.list_(pa.string()), nullable=False),
    pa.field("verifier_answers_a", pa.list_(pa.string()), nullable=False),
    pa.field("verifier_answers_b", pa.list_(pa.string()), nullable=False),
]))
