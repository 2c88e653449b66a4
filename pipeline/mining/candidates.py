"""The candidates and image-groups tables: reading them back with the search settings they were made under."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.core import schemas
from pipeline.params import NearDuplicateGuard

ROW_GROUP_ROWS = 1 << 20
# The search's counts the candidates metadata carries (beside a partitioned search's recall fields);
# mine passes them on to the pairs table as `search_details`.
SEARCH_FIELDS = ("images", "pairs_possible", "mode", "recall_clip_threshold", "candidates", "near_duplicates_dropped",
                 "dot_products")


@dataclass(frozen=True)
class SimilaritySample:
    """Quantiles (at `grid`) of both cosines over a seeded random sample of `pairs` pairs of all pairs."""

    pairs: int
    seed: int
    grid: tuple[float, ...]
    clip: tuple[float, ...]  # empty when the search sampled no pairs
    dino: tuple[float, ...]


@dataclass(frozen=True)
class CandidatesMeta:
    """What the search stage hands to mine and calibrate in the candidates table's footer."""

    images_sha256: str  # ids_digest of the images table the rows index
    encoders: Mapping[str, Mapping[str, Any]]  # {"clip": description, "dino": description} of the embeddings
    search: Mapping[str, Any]  # SEARCH_FIELDS present, and a partitioned search's recall fields
    near_duplicate: NearDuplicateGuard  # the guard the search ran with
    sample: SimilaritySample

    @property
    def pairs_possible(self) -> int:
        """Pairs among all the images: the population a quantile threshold counts in."""
        return int(self.search["pairs_possible"])

    @property
    def recall_clip_threshold(self) -> float:
        """The CLIP cosine above which the search kept every pair (bar near-duplicates)."""
        return float(self.search["recall_clip_threshold"])

    @property
    def near_duplicates_dropped(self) -> int:
        """Pairs above the recall threshold the near-duplicate guard dropped."""
        return int(self.search["near_duplicates_dropped"])

    def to_footer(self) -> dict[str, Any]:
        """The JSON-ready dict the table's footer stores."""
        s = self.sample
        return {
            "images_sha256": self.images_sha256,
            "encoders": {name: dict(desc) for name, desc in self.encoders.items()},
            "search": dict(self.search),
            "near_duplicate": {"clip": self.near_duplicate.clip, "dino": self.near_duplicate.dino},
            "sample": {"pairs": s.pairs, "seed": s.seed, "grid": list(s.grid), "clip": list(s.clip), "dino": list(s.dino)},
        }

    @classmethod
    def from_footer(cls, meta: Mapping[str, Any], where: str | Path) -> CandidatesMeta:
        """The record a footer holds; a missing field names the file, the field and the fix."""
        try:
            guard, sample, search = meta["near_duplicate"], meta["sample"], dict(meta["search"])
            missing = [k for k in ("pairs_possible", "recall_clip_threshold", "near_duplicates_dropped") if k not in search]
            if missing:
                raise KeyError(f"search.{missing[0]}")
            return cls(
                images_sha256=str(meta["images_sha256"]),
                encoders={name: dict(desc) for name, desc in meta["encoders"].items()},
                search=search,
                near_duplicate=NearDuplicateGuard(clip=float(guard["clip"]), dino=float(guard["dino"])),
                sample=SimilaritySample(pairs=int(sample["pairs"]), seed=int(sample["seed"]), grid=tuple(sample["grid"]),
                                        clip=tuple(sample["clip"]), dino=tuple(sample["dino"])),
            )
        except KeyError as err:
            raise schemas.SchemaError(
                f"{where}: the candidates metadata lacks {err.args[0]!r} (written by an older search): rerun the search stage"
            ) from None


def read_candidates(path: str | Path, image_ids: Sequence[str], columns: Sequence[str] | None = None) -> tuple[pa.Table, CandidatesMeta]:
    """The candidates table and its metadata, refusing one made for another images table."""
    footer = schemas.read_meta(path)
    if footer.get("images_sha256") != ids_digest(image_ids):
        raise schemas.SchemaError(
            f"{path} indexes another images table (different image ids or order): rerun the search stage"
        )
    meta = CandidatesMeta.from_footer(footer, path)
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
