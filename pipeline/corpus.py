"""Where image bytes come from: a source kind plus a root, listed and read the same way by every stage.

A location is a string that names one item inside its source (a path relative to the folder,
a manifest row's path). `Corpus.items()` lists them in a stable order; `Corpus.read(location)`
gives the bytes back to a later stage (embed, export) without copying the corpus.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

import pyarrow.parquet as pq

from pipeline.decode import DecodeError, RejectReason

SourceKind = Literal["folder", "manifest"]


@dataclass(frozen=True)
class SourceParams:
    """One corpus source: how to list it and the licence its images carry."""

    kind: SourceKind
    name: str = "corpus"
    license: str | None = None  # licence of every image unless a manifest column says otherwise
    path_column: str = "path"  # manifest only
    license_column: str | None = None  # manifest only


@dataclass(frozen=True)
class Item:
    """One listed input: its location and the licence recorded for it."""

    location: str
    license: str | None


class Corpus:
    """A source of image bytes rooted at `path` (a folder, or a manifest file)."""

    def __init__(self, params: SourceParams, path: str | Path) -> None:
        self.params = params
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"corpus source '{params.name}' not found at {self.path}")
        self.root = (self.path if params.kind == "folder" else self.path.parent).resolve()

    def items(self) -> Iterator[Item]:
        """Every input item in a stable order."""
        if self.params.kind == "folder":
            for location in _walk(self.root):
                yield Item(location, self.params.license)
        else:
            yield from self._manifest_items()

    def read(self, location: str) -> bytes:
        """The bytes at `location`, confined to the source's root."""
        target = (self.root / location).resolve()
        if not target.is_relative_to(self.root):
            raise DecodeError(RejectReason.PATH_ESCAPE, f"{location!r} resolves outside {self.root}")
        try:
            return target.read_bytes()
        except OSError as err:
            raise DecodeError(RejectReason.UNREADABLE, f"{location}: {err.strerror or err}") from None

    def _manifest_items(self) -> Iterator[Item]:
        suffix = self.path.suffix.lower()
        if suffix == ".parquet":
            table = pq.read_table(self.path)
            rows = table.to_pylist()
        elif suffix in (".csv", ".tsv"):
            with open(self.path, newline="", encoding="utf-8") as handle:
                rows = list(csv.DictReader(handle, delimiter="\t" if suffix == ".tsv" else ","))
        else:
            raise ValueError(f"manifest {self.path} must be .parquet, .csv or .tsv")
        column = self.params.path_column
        if rows and column not in rows[0]:
            raise ValueError(
                f"manifest {self.path} has no '{column}' column (columns: {sorted(rows[0])}); "
                "set ingest.source.path_column"
            )
        for row in rows:
            license_value = row.get(self.params.license_column) if self.params.license_column else None
            yield Item(str(row[column]), license_value or self.params.license)


def _walk(root: Path) -> Iterator[str]:
    """Files below `root` as sorted relative POSIX paths; hidden entries are skipped."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith("."):
                found.append((Path(dirpath) / name).relative_to(root).as_posix())
    return iter(sorted(found))
