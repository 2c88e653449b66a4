"""Where image bytes come from: sources, listed and read the same way by every stage.

A source is a kind plus a root; `ingest.source` is one source or a list of them (each with
its own name, licence and options, one `--source` path each). Four kinds:

* `folder`: every file below a directory, recursively (hidden entries skipped). Location: the
  path relative to the folder.
* `manifest`: a parquet, CSV or TSV file with a path column (paths relative to the
  manifest's folder) and optionally a licence column. Location: the path as written.
* `webdataset`: tar shards: a directory of `.tar`/`.tar.gz` files, one shard, a brace or
  glob pattern (`shards/{00000..00099}.tar`), or any fsspec URL (`s3://`, `https://`,
  `file://`); img2dataset's output folder is such a directory. Members sharing a key form a
  sample; the sample's image member is the input and its `.json` member may carry the
  licence. Location: `<shard>#<member>`. Members are only ever read as bytes (nothing is
  unpickled); `pipe:` URLs run a shell command and are refused unless `allow_pipe` is set.
* `hf`: a Hugging Face dataset with an image column: a folder written by `save_to_disk`, a
  folder `load_dataset` reads, or a hub id (which fails at once, with the fix, when the hub
  is unreachable). Location: the row number.

Paths are confined to the declared root: `..`, absolute paths and symlinks leading out of
it, and tar members named that way or stored as links, are inputs rejected as
`path_escape`, never read. Licence: the per-item value when the source has one (manifest
column, webdataset json field, dataset column), else the source's default `license`.

A source is listed as *parts*, the unit of completion a rerun can skip: a directory of the
folder, a shard, a block of `part_size` manifest or dataset rows. Each part has a
fingerprint that changes when its content may have changed, and lists *entries*: an item
(location + licence), a per-item stamp (size and mtime where there is a file) and a way to
fetch its bytes that raises `DecodeError` with a reason code. `Corpus.read(location)` gives
the bytes back to a later stage (embed, export) without copying the corpus.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import stat
import subprocess
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path, PurePosixPath
from typing import IO, Any, TypeVar, cast

from pipeline.core.config import ParamsError
from pipeline.core.errors import ClipblindError
from pipeline.core.hub import HUB_HOST, hub_reachable
from pipeline.images.decode import DecodeError, RejectReason
from pipeline.params import SourceParams

IMAGE_EXTENSIONS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")
SHARD_SUFFIXES: tuple[str, ...] = (".tar", ".tar.gz", ".tgz")



T = TypeVar("T")

def given(value: T | None, key: str, params: SourceParams) -> T:
    """A key the source's kind needs (the params loader requires it; params built in Python may lack it)."""
    if value is None:
        raise ParamsError(f"corpus source '{params.name}' (kind {params.kind}) needs '{key}': set it in the params file")
    return value

@dataclass(frozen=True)
class Item:
    """One listed input: its location and the licence recorded for it."""

    location: str
    license: str | None


@dataclass(frozen=True)
class Entry:
    """An item of a part, with its stamp (None: unknown) and a fetch that returns its bytes."""

    item: Item
    stamp: str | None
    fetch: Callable[[], bytes]


@dataclass(frozen=True)
class Part:
    """A unit of completion: an id, a content fingerprint (None: unknown) and its entries."""

    id: str
    fingerprint: str | None
    entries: Callable[[], Iterator[Entry]]
    source: str = ""  # the name of the source it belongs to


class SourceUnavailable(ClipblindError, ValueError):
    """A source cannot be opened at all (missing, unreachable, or refused by a safety rule)."""


_BACKENDS: dict[str, Callable[[SourceParams, str], _Backend]] = {}
_SOURCE_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class Corpus:
    """Image bytes from one source, or several: `params` says what kind, `path` where (a folder,
    file, URL or hub id), one path per source in the same order.

    With one source a location is the source's own (`photos/cat.jpg`); with several it is
    prefixed by the source name (`laion:shard-00000.tar#000123.jpg`) so that every location
    names one item of one source.
    """

    def __init__(self, params: SourceParams | Sequence[SourceParams], path: str | Path | Sequence[str | Path]) -> None:
        self.sources: tuple[SourceParams, ...] = (params,) if isinstance(params, SourceParams) else tuple(params)
        paths = [str(path)] if isinstance(path, (str, Path)) else [str(p) for p in path]
        if len(paths) != len(self.sources):
            raise SourceUnavailable(
                f"{len(self.sources)} source(s) in params ({', '.join(s.name for s in self.sources)}) but "
                f"{len(paths)} source path(s): give one --source per source, in the same order"
            )
        names = [s.name for s in self.sources]
        bad = [n for n in names if not _SOURCE_NAME.match(n)]
        if bad or len(set(names)) != len(names):
            raise ParamsError(f"source names must be distinct and use only letters, digits, '_', '.', '-': got {names}")
        self.params = self.sources[0]
        self.path = paths[0]
        self.qualified = len(self.sources) > 1
        self._backends = {s.name: _BACKENDS[s.kind](s, p) for s, p in zip(self.sources, paths)}

    def parts(self) -> Iterator[Part]:
        """Every source's parts in a stable order, ids and locations qualified when there are several."""
        for name, backend in self._backends.items():
            for part in backend.parts():
                if not self.qualified:
                    yield replace(part, source=name)
                    continue
                yield replace(part, source=name, id=f"{name}:{part.id}", entries=_qualified(name, part.entries))

    def items(self) -> Iterator[Item]:
        """Every input item in a stable order."""
        for part in self.parts():
            for entry in part.entries():
                yield entry.item

    def read(self, location: str) -> bytes:
        """The bytes at `location`, confined to the source's root; `DecodeError` when they cannot be had."""
        if not self.qualified:
            return self._backends[self.params.name].read(location)
        name, _, inner = location.partition(":")
        if name not in self._backends:
            raise DecodeError(RejectReason.UNREADABLE, f"{location!r} names no source of {sorted(self._backends)}")
        return self._backends[name].read(inner)


def _qualified(name: str, entries: Callable[[], Iterator[Entry]]) -> Callable[[], Iterator[Entry]]:
    def qualified() -> Iterator[Entry]:
        for entry in entries():
            yield replace(entry, item=replace(entry.item, location=f"{name}:{entry.item.location}"))

    return qualified


class _Backend:
    """What every source kind provides: its parts in order, and its bytes by location."""

    def parts(self) -> Iterator[Part]:
        raise NotImplementedError

    def read(self, location: str) -> bytes:
        raise NotImplementedError


def _escape(location: str, root: object) -> DecodeError:
    return DecodeError(RejectReason.PATH_ESCAPE, f"{location!r} leads outside {root}")


def _digest(parts: list[Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


class _LocalFiles(_Backend):
    """Files below a root directory, read only when they resolve inside it."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root.resolve()
        self.max_bytes = max_bytes

    def read(self, location: str) -> bytes:
        target = self._confined(location)
        try:
            # stat before open: opening a FIFO or a device found in a corpus would block or never end
            st = os.stat(target)
            if not stat.S_ISREG(st.st_mode):
                kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file (a pipe, socket or device)"
                raise DecodeError(RejectReason.UNREADABLE, f"{location}: is {kind}")
            with open(target, "rb") as handle:
                return _read_capped(handle, location, self.max_bytes)
        except OSError as err:
            raise DecodeError(RejectReason.UNREADABLE, f"{location}: {err.strerror or err}") from None

    def _confined(self, location: str) -> Path:
        if "\x00" in location:
            raise _escape(location, self.root)
        target = Path(os.path.realpath(self.root / location))
        if not target.is_relative_to(self.root):
            raise _escape(location, self.root)
        return target

    def _stamp(self, location: str) -> str | None:
        try:
            st = os.stat(os.path.join(self.root, location))
        except (OSError, ValueError):
            return None
        return f"{st.st_size}:{st.st_mtime_ns}"

    def _read_listed(self, location: str) -> bytes:
        """Bytes of a file the walk found as a plain file, so no link can be on its path."""
        try:
            fd = os.open(os.path.join(self.root, location), os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return self.read(location)  # it changed since the listing: take the checked path
        with open(fd, "rb") as handle:
            return _read_capped(handle, location, self.max_bytes)


def _read_capped(handle: IO[bytes], location: str, max_bytes: int) -> bytes:
    size = os.fstat(handle.fileno()).st_size
    if size > max_bytes:
        raise DecodeError(RejectReason.TOO_LARGE, f"{location}: {size} bytes exceeds the cap of {max_bytes}")
    return handle.read()


class _Folder(_LocalFiles):
    """Every file below a folder; one part per directory."""

    def __init__(self, params: SourceParams, path: str) -> None:
        if not Path(path).is_dir():
            raise SourceUnavailable(f"corpus source '{params.name}': no folder at {path}")
        super().__init__(Path(path), params.max_bytes)
        self.params = params

    def parts(self) -> Iterator[Part]:
        for dirpath, dirnames, filenames in os.walk(self.root):
            here = Path(dirpath)
            # Directory symlinks are not followed: one that stays inside the root lists files
            # already listed at their real path; one that leads out is an input to reject.
            escaping = [d for d in dirnames if (here / d).is_symlink() and not self._inside(here / d)]
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            names = sorted([n for n in filenames if not n.startswith(".")] + escaping)
            if not names:
                continue
            rel = here.relative_to(self.root).as_posix()
            listed = [self._listed(dirpath, "" if rel == "." else rel + "/", n) for n in names]
            yield Part(
                id=rel,
                fingerprint=_digest([(loc, stamp) for loc, stamp, _ in listed]),
                entries=partial(self._listed_entries, listed),
            )

    def _listed_entries(self, listed: Sequence[tuple[str, str | None, bool]]) -> Iterator[Entry]:
        for loc, stamp, plain in listed:
            yield Entry(Item(loc, self.params.license), stamp, partial(self._read_listed if plain else self.read, loc))

    def _listed(self, dirpath: str, prefix: str, name: str) -> tuple[str, str | None, bool]:
        """(location, stamp, whether it is a plain file) of one walked name."""
        location = prefix + name
        try:
            st = os.lstat(os.path.join(dirpath, name))
        except OSError:
            return location, None, False
        if stat.S_ISREG(st.st_mode):
            return location, f"{st.st_size}:{st.st_mtime_ns}", True
        return location, self._stamp(location), False

    def _inside(self, path: Path) -> bool:
        return Path(os.path.realpath(path)).is_relative_to(self.root)


class _Manifest(_LocalFiles):
    """Rows of a parquet/CSV/TSV manifest; one part per `part_size` rows."""

    def __init__(self, params: SourceParams, path: str) -> None:
        self.manifest = Path(path)
        if not self.manifest.is_file():
            raise SourceUnavailable(f"corpus source '{params.name}': no manifest file at {path}")
        if self.manifest.suffix.lower() not in (".parquet", ".csv", ".tsv"):
            raise SourceUnavailable(f"manifest {path} must be .parquet, .csv or .tsv")
        super().__init__(self.manifest.parent, params.max_bytes)
        self.params = params

    def parts(self) -> Iterator[Part]:
        start = 0
        for rows in self._row_blocks():
            locations = [loc for loc, _ in rows]
            stamps = [self._stamp(loc) for loc in locations]
            end = start + len(rows)
            yield Part(
                id=f"rows {start}-{end - 1}",
                fingerprint=_digest([rows, stamps]),
                entries=partial(self._row_entries, rows, stamps),
            )
            start = end

    def _row_entries(self, rows: Sequence[tuple[str, str | None]], stamps: Sequence[str | None]) -> Iterator[Entry]:
        for (loc, lic), stamp in zip(rows, stamps):
            yield Entry(Item(loc, lic), stamp, partial(self.read, loc))

    def _row_blocks(self) -> Iterator[list[tuple[str, str | None]]]:
        path_column = given(self.params.path_column, "path_column", self.params)
        columns = [path_column] + ([self.params.license_column] if self.params.license_column else [])
        size = given(self.params.part_size, "part_size", self.params)
        if self.manifest.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            handle = pq.ParquetFile(self.manifest)
            self._check_columns(handle.schema_arrow.names, columns)
            for batch in handle.iter_batches(batch_size=size, columns=columns):
                yield [self._row(r) for r in batch.to_pylist()]
            return
        with open(self.manifest, newline="", encoding="utf-8") as text:
            reader = csv.DictReader(text, delimiter="\t" if self.manifest.suffix.lower() == ".tsv" else ",")
            self._check_columns(reader.fieldnames or [], columns)
            block: list[tuple[str, str | None]] = []
            for row in reader:
                block.append(self._row(row))
                if len(block) == size:
                    yield block
                    block = []
            if block:
                yield block

    def _row(self, row: dict[str, Any]) -> tuple[str, str | None]:
        value = row.get(self.params.license_column) if self.params.license_column else None
        path = row[given(self.params.path_column, "path_column", self.params)]
        return str(path or ""), (str(value) if value else None) or self.params.license

    def _check_columns(self, found: Sequence[str], wanted: list[str]) -> None:
        for column, key in zip(wanted, ("path_column", "license_column")):
            if column not in found:
                raise SourceUnavailable(
                    f"manifest {self.manifest} has no '{column}' column (columns: {sorted(found)}); "
                    f"set ingest.source.{key}"
                )


# ---------------------------------------------------------------- webdataset shards


def _brace_expand(pattern: str) -> list[str]:
    import braceexpand

    return list(braceexpand.braceexpand(pattern))


def _split_key(name: str) -> tuple[str, str]:
    """webdataset's sample key and extension: `dir/0001.seg.jpg` → (`dir/0001`, `seg.jpg`)."""
    path = PurePosixPath(name)
    stem, _, ext = path.name.partition(".")
    return str(path.parent / stem) if str(path.parent) != "." else stem, ext.lower()


def _unsafe_member(info: tarfile.TarInfo) -> str | None:
    """Why a member must not be read, or None."""
    parts = PurePosixPath(info.name).parts
    if info.name.startswith(("/", "\\")) or ".." in parts or "\x00" in info.name or re.match(r"^[A-Za-z]:", info.name):
        return "member name leads outside the shard"
    if info.issym() or info.islnk():
        return f"member is a link to {info.linkname!r}, links are not followed"
    return None


@dataclass(frozen=True)
class _Shard:
    id: str  # as it appears in locations
    url: str  # what to open


class _Shards(_Backend):
    """webdataset tar shards, local or behind any fsspec URL; one part per shard."""

    def __init__(self, params: SourceParams, spec: str) -> None:
        self.params = params
        self.spec = spec
        self.shards = self._list(spec)
        self._by_id = {s.id: s for s in self.shards}
        self._index: dict[str, dict[str, tuple[int, int]]] = {}

    def _list(self, spec: str) -> list[_Shard]:
        urls = [u for piece in spec.split("::") for u in _brace_expand(piece.strip())]
        if any(u.startswith("pipe:") for u in urls) and not self.params.allow_pipe:
            raise SourceUnavailable(
                f"corpus source '{self.params.name}' uses a `pipe:` URL, which runs a shell command: "
                "set ingest.source.allow_pipe: true to allow it"
            )
        if len(urls) == 1 and "://" not in urls[0] and not urls[0].startswith("pipe:") and Path(urls[0]).is_dir():
            root = Path(urls[0]).resolve()
            found = sorted(
                p for p in root.rglob("*")
                if p.name.endswith(SHARD_SUFFIXES) and p.is_file() and Path(os.path.realpath(p)).is_relative_to(root)
            )
            if not found:
                raise SourceUnavailable(f"corpus source '{self.params.name}': no .tar shards below {root}")
            return [_Shard(p.relative_to(root).as_posix(), str(p)) for p in found]
        shards: list[_Shard] = []
        for url in urls:
            if url.startswith("pipe:"):
                shards.append(_Shard(url, url))
            elif any(c in url for c in "*?["):
                import fsspec

                fs, _, paths = fsspec.get_fs_token_paths(url)
                shards.extend(_Shard(fs.unstrip_protocol(p), fs.unstrip_protocol(p)) for p in sorted(paths))
            else:
                shards.append(_Shard(url, url))
        if not shards:
            raise SourceUnavailable(f"corpus source '{self.params.name}': pattern {spec!r} matches no shard")
        return shards

    def parts(self) -> Iterator[Part]:
        for shard in self.shards:
            yield Part(shard.id, self._fingerprint(shard), partial(self._samples, shard))

    def _fingerprint(self, shard: _Shard) -> str | None:
        if shard.url.startswith("pipe:"):
            return None  # a command's output has no identity to compare
        try:
            import fsspec

            fs, path = fsspec.core.url_to_fs(shard.url)
            info = fs.info(path)
        except (OSError, ValueError):
            return None
        keep = {k: info.get(k) for k in ("size", "mtime", "ETag", "etag", "LastModified", "last_modified", "md5")}
        if isinstance(fs.protocol, (tuple, list)) and "file" in fs.protocol:
            keep["mtime_ns"] = os.stat(path).st_mtime_ns
        return _digest([shard.url, keep])

    def _open(self, shard: _Shard) -> IO[bytes]:
        if shard.url.startswith("pipe:"):
            process = subprocess.Popen(shard.url[5:], shell=True, stdout=subprocess.PIPE)  # noqa: S602 - allowed by params
            assert process.stdout is not None
            return process.stdout
        import fsspec

        return fsspec.open(shard.url, "rb").open()

    def _samples(self, shard: _Shard) -> Iterator[Entry]:
        """Stream the shard once; one entry per sample (its image member) or per unsafe member."""
        try:
            stream = _Recorder(self._open(shard))
        except (OSError, ValueError) as err:
            reason = DecodeError(RejectReason.UNREADABLE, f"shard {shard.id}: {err}")
            yield Entry(Item(f"{shard.id}#", self.params.license), None, _raiser(reason))
            return
        key: str | None = None
        members: dict[str, tuple[str, bytes | DecodeError]] = {}
        ended: DecodeError | None = None
        with stream:
            try:
                with tarfile.open(fileobj=cast(IO[bytes], stream), mode="r|*") as archive:
                    for info in archive:
                        if info.isdir():
                            continue
                        location = f"{shard.id}#{info.name}"
                        unsafe = _unsafe_member(info)
                        if unsafe is not None or not info.isfile():
                            why = unsafe or f"member of tar type {info.type!r} is not a file"
                            code = RejectReason.PATH_ESCAPE if unsafe else RejectReason.UNSUPPORTED_FORMAT
                            yield Entry(Item(location, self.params.license), None, _raiser(DecodeError(code, why)))
                            continue
                        sample_key, ext = _split_key(info.name)
                        if sample_key != key:
                            if key is not None:
                                yield self._sample_entry(shard, key, members)
                            key, members = sample_key, {}
                        data = _member_bytes(archive, info, self.params.max_bytes)
                        members[ext] = (info.name, data)
                        if isinstance(data, DecodeError) and data.reason is RejectReason.TRUNCATED:
                            break  # the stream ends inside this member; its sample carries the reason
                    else:
                        ended = stream.end_error(archive.offset, shard.id)
            except (tarfile.TarError, EOFError, OSError, ValueError) as err:
                if stream.total == 0:
                    ended = DecodeError(RejectReason.EMPTY_FILE, f"shard {shard.id} has zero bytes")
                elif key is None:
                    ended = DecodeError(RejectReason.UNSUPPORTED_FORMAT, f"shard {shard.id} is not a tar archive: {err}")
                else:
                    ended = DecodeError(RejectReason.TRUNCATED, f"shard {shard.id} breaks off after sample {key}: {err}")
        if key is not None:
            yield self._sample_entry(shard, key, members)
        if ended is not None:
            yield Entry(Item(f"{shard.id}#", self.params.license), None, _raiser(ended))

    def _sample_entry(self, shard: _Shard, key: str, members: dict[str, tuple[str, bytes | DecodeError]]) -> Entry:
        license_value = self.params.license
        if "json" in members and isinstance(members["json"][1], bytes):
            try:
                meta = json.loads(members["json"][1])
            except (ValueError, UnicodeDecodeError):
                meta = None
            if isinstance(meta, dict) and meta.get(self.params.license_field):
                license_value = str(meta[self.params.license_field])
        image_ext = next((e for e in members if e.rpartition(".")[2] in IMAGE_EXTENSIONS), None)
        if image_ext is None:
            found = ", ".join(f".{e}" for e in sorted(members))
            missing = DecodeError(RejectReason.NO_IMAGE, f"sample {key} has no image member (members: {found})")
            return Entry(Item(f"{shard.id}#{key}", license_value), None, _raiser(missing))
        name, data = members[image_ext]
        return Entry(Item(f"{shard.id}#{name}", license_value), None, _returner(data))

    def read(self, location: str) -> bytes:
        shard_id, sep, member = location.partition("#")
        shard = self._by_id.get(shard_id)
        if not sep or shard is None:
            raise DecodeError(RejectReason.UNREADABLE, f"{location!r} names no shard of {self.spec}")
        index = self._index.get(shard_id)
        if index is None:
            index = self._index[shard_id] = self._build_index(shard)
        if member not in index:
            raise DecodeError(RejectReason.UNREADABLE, f"{location!r}: no such file member in the shard")
        offset, size = index[member]
        try:
            with self._open(shard) as handle:
                if offset >= 0:
                    handle.seek(offset)
                    return handle.read(size)
                with tarfile.open(fileobj=handle, mode="r|*") as archive:  # compressed or piped: scan
                    for info in archive:
                        if info.name == member:
                            return archive.extractfile(info).read()  # type: ignore[union-attr]
        except (OSError, tarfile.TarError, EOFError) as err:
            raise DecodeError(RejectReason.UNREADABLE, f"{location}: {err}") from None
        raise DecodeError(RejectReason.UNREADABLE, f"{location!r}: member vanished from the shard")

    def _build_index(self, shard: _Shard) -> dict[str, tuple[int, int]]:
        """Member name → (data offset, size); offset -1 where the shard cannot be seeked."""
        seekable = not shard.url.startswith("pipe:") and shard.url.endswith(".tar")
        index: dict[str, tuple[int, int]] = {}
        try:
            with self._open(shard) as handle, tarfile.open(fileobj=handle, mode="r:" if seekable else "r|*") as archive:
                for info in archive:
                    if info.isfile() and _unsafe_member(info) is None:
                        index[info.name] = (info.offset_data if seekable else -1, info.size)
        except (OSError, tarfile.TarError, EOFError):
            pass  # a truncated shard still serves the members before the damage
        return index


def _member_bytes(archive: tarfile.TarFile, info: tarfile.TarInfo, max_bytes: int) -> bytes | DecodeError:
    if info.size > max_bytes:  # tarfile skips the unread data when it moves to the next member
        return DecodeError(RejectReason.TOO_LARGE, f"member {info.name}: {info.size} bytes exceeds the cap of {max_bytes}")
    handle = archive.extractfile(info)
    if handle is None:
        return DecodeError(RejectReason.UNREADABLE, f"member {info.name} has no data")
    try:
        data = handle.read()
    except (tarfile.TarError, EOFError, OSError) as err:
        return DecodeError(RejectReason.TRUNCATED, f"the shard ends inside member {info.name}: {err}")
    if len(data) < info.size:
        return DecodeError(RejectReason.TRUNCATED, f"the shard ends inside member {info.name} ({len(data)} of {info.size} bytes)")
    return data


class _Recorder:
    """A read-only stream that remembers how much it gave and its last bytes.

    tarfile's streaming reader takes a missing end-of-archive marker for a normal end, so a
    shard cut off between members would look complete; the recorded tail shows the cut.
    """

    _KEEP = 1 << 16

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.total = 0
        self.head = b""
        self.tail = b""

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        if len(self.head) < 8:
            self.head = (self.head + data)[:8]
        self.tail = (self.tail + data)[-self._KEEP :]
        self.total += len(data)
        return data

    def end_error(self, offset: int, shard_id: str) -> DecodeError | None:
        """A TRUNCATED error when no end-of-archive block sits at `offset` of an uncompressed tar."""
        if self.head.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ")):
            return None  # compressed: offsets are not byte positions of the file
        start = offset - (self.total - len(self.tail))
        if start >= 0 and self.tail[start : start + 512] == bytes(512):
            return None
        return DecodeError(RejectReason.TRUNCATED, f"shard {shard_id} has no end-of-archive marker: it was cut off")

    def __enter__(self) -> _Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.raw.close()


def _raiser(error: DecodeError) -> Callable[[], bytes]:
    def fetch() -> bytes:
        raise error

    return fetch


def _returner(value: bytes | DecodeError) -> Callable[[], bytes]:
    if isinstance(value, DecodeError):
        return _raiser(value)
    return lambda: value


# ---------------------------------------------------------------- Hugging Face datasets


class _HFDataset(_Backend):
    """A Hugging Face dataset's image column; one part per `part_size` rows."""

    def __init__(self, params: SourceParams, path: str) -> None:
        self.params = params
        self.path = path
        dataset = _load_dataset(params, path)
        missing = [c for c in (params.image_column, params.license_column) if c and c not in dataset.column_names]
        if missing:
            raise SourceUnavailable(
                f"dataset {path} has no column {missing[0]!r} (columns: {dataset.column_names}); "
                "set ingest.source.image_column / license_column"
            )
        from datasets import Image as ImageFeature

        if isinstance(dataset.features[params.image_column], ImageFeature):
            dataset = dataset.cast_column(params.image_column, ImageFeature(decode=False))
        columns = [params.image_column] + ([params.license_column] if params.license_column else [])
        self.table = dataset.select_columns(columns).with_format("arrow")
        self.fingerprint = getattr(dataset, "_fingerprint", None)
        self.root = Path(path).resolve() if Path(path).is_dir() else None

    def parts(self) -> Iterator[Part]:
        size = given(self.params.part_size, "part_size", self.params)
        for start in range(0, len(self.table), size):
            end = min(start + size, len(self.table))
            fingerprint = _digest([self.fingerprint, start, end]) if self.fingerprint else None
            yield Part(f"rows {start}-{end - 1}", fingerprint, partial(self._entries, start, end))

    def _entries(self, start: int, end: int) -> Iterator[Entry]:
        for offset, row in enumerate(self.table[start:end].to_pylist()):
            location = str(start + offset)
            value = row.get(self.params.license_column) if self.params.license_column else None
            license_value = (str(value) if value else None) or self.params.license
            yield Entry(Item(location, license_value), None, _returner(self._bytes(location, row)))

    def _bytes(self, location: str, row: dict[str, Any]) -> bytes | DecodeError:
        cell = row[given(self.params.image_column, "image_column", self.params)]
        data = cell if isinstance(cell, (bytes, bytearray)) else cell.get("bytes") if isinstance(cell, dict) else None
        if data and len(data) > self.params.max_bytes:
            return DecodeError(RejectReason.TOO_LARGE, f"row {location}: {len(data)} bytes exceeds the cap of {self.params.max_bytes}")
        if data:
            return bytes(data)
        if isinstance(cell, dict) and cell.get("path") and self.root is not None:
            try:
                return _LocalFiles(self.root, self.params.max_bytes).read(str(cell["path"]))
            except DecodeError as err:
                return err
        return DecodeError(RejectReason.NO_IMAGE, f"row {location} has no image bytes in column {self.params.image_column!r}")

    def read(self, location: str) -> bytes:
        if not location.isdigit() or int(location) >= len(self.table):
            raise DecodeError(RejectReason.UNREADABLE, f"row {location!r} is not in dataset {self.path}")
        row = int(location)
        result = self._bytes(location, self.table[row : row + 1].to_pylist()[0])
        if isinstance(result, DecodeError):
            raise result
        return result


def _load_dataset(params: SourceParams, path: str) -> Any:
    """A local dataset folder, or a hub id when the hub is reachable."""
    try:
        import datasets
    except ImportError:
        raise SourceUnavailable("source kind 'hf' needs the datasets package: pip install 'clipblind[pipeline]'") from None
    local = Path(path)
    if local.is_dir():
        if (local / "dataset_info.json").exists() or (local / "dataset_dict.json").exists():
            loaded = datasets.load_from_disk(str(local))
            return loaded[params.split] if isinstance(loaded, datasets.DatasetDict) else loaded
        return datasets.load_dataset(str(local), split=params.split)
    if not hub_reachable():
        raise SourceUnavailable(
            f"dataset {path!r} is not a local folder and the hub ({HUB_HOST}) is not reachable. Fix: "
            f"connect and rerun, or download it elsewhere (`huggingface-cli download --repo-type dataset {path} "
            f"--local-dir DIR`) and point the source at DIR"
        )
    return datasets.load_dataset(path, split=params.split)


_BACKENDS.update({"folder": _Folder, "manifest": _Manifest, "webdataset": _Shards, "hf": _HFDataset})
