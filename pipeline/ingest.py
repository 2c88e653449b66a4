"""ingest: a corpus source → the images table, a rejects table and metrics.

Inputs: one or more sources (`ingest.source` in params: folders, webdataset shards,
parquet/CSV manifests, Hugging Face datasets; see `pipeline.images.corpus`), an optional blocklist
file of sha256 hashes, and an optional state folder that makes reruns incremental.
Outputs: images table (one row per distinct content, keyed by sha256 of the bytes, sorted by
image_id, every location of the same bytes kept, the first location in listing order as
`source_path`), rejects table (one row per input not accepted: location, reason code, detail).
Metrics: inputs, accepted, duplicates, blocked, rejected, rejected_by_reason, in total and per
source (`sources`), parts (done and reused), decoded;
accepted + duplicates + blocked + rejected == inputs, in total and for every source.

Every input is read, hashed and, unless its hash is on the blocklist or already decoded in
this run, decoded with the canonical decode (`pipeline.images.decode`); only its outcome is kept,
so memory is bounded by `batch_size` images in flight. With a state folder each finished
part (directory, shard, block of rows) is recorded with a completion marker (which also
holds the part's counts by outcome): a rerun skips
parts whose fingerprint is unchanged, and a part that changed re-reads only the items whose
size or mtime changed, so a grown corpus ingests only its new files. Blocklist changes apply
without re-reading anything. `workers` > 1 decodes batches in that many processes; results
are identical to one worker.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import asdict, dataclass
from itertools import repeat
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.core import schemas
from pipeline.core.atomic import write_json
from pipeline.core.config import command_params
from pipeline.core.errors import ClipblindError
from pipeline.core.report import progress, summary, write_headline, write_metrics
from pipeline.images import decode as decode_module
from pipeline.images.corpus import Corpus, Entry, Part
from pipeline.images.decode import DecodeError, RejectReason, decode
from pipeline.params import IngestParams

STAGE = "ingest"
OK = "ok"


@dataclass(frozen=True)
class IngestResult:
    """The ingest stage's tables and counts."""

    images: pa.Table
    rejects: pa.Table
    metrics: dict[str, Any]


# One row per input, in listing order: the state a rerun reuses (not a hand-off to another stage).
RECORDS = schemas.register(
    "ingest_records",
    pa.schema(
        [
            pa.field("location", pa.string(), nullable=False),
            pa.field("license", pa.string(), nullable=True),
            pa.field("stamp", pa.string(), nullable=True),  # size:mtime of a file, when known
            pa.field("image_id", pa.string(), nullable=True),  # sha256 of the bytes, when they could be read
            pa.field("n_bytes", pa.int64(), nullable=True),
            pa.field("status", pa.string(), nullable=False),  # "ok" or a RejectReason code
            pa.field("detail", pa.string(), nullable=False),
            pa.field("format", pa.string(), nullable=True),
            pa.field("width", pa.int32(), nullable=True),
            pa.field("height", pa.int32(), nullable=True),
            pa.field("frame_count", pa.int32(), nullable=True),
        ]
    ),
)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class BlocklistError(ClipblindError, ValueError):
    """The blocklist file has a line that is not a sha256 hash."""


def load_blocklist(path: str | Path | None) -> frozenset[str]:
    """Hashes from a file of sha256 hex digests, one per line (`sha256sum` output works; `#` comments)."""
    if path is None:
        return frozenset()
    hashes = set()
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        token = line.split("#", 1)[0].strip().split(maxsplit=1)
        if not token:
            continue
        digest = token[0].lower()
        if not _SHA256.match(digest):
            raise BlocklistError(f"{path}:{number}: {token[0]!r} is not a sha256 hex digest (64 hex characters)")
        hashes.add(digest)
    return frozenset(hashes)


def examine(data: bytes, max_pixels: int) -> tuple[str, str, str | None, int | None, int | None, int | None]:
    """The decode outcome of `data`: (status, detail, format, width, height, frame_count)."""
    try:
        decoded = decode(data, max_pixels=max_pixels)
    except DecodeError as err:
        return err.reason.value, err.detail, None, None, None, None
    return OK, "", decoded.format, decoded.image.width, decoded.image.height, decoded.frame_count


class _State:
    """Finished parts on disk: `<key>.parquet` (records) then `<key>.done` (fingerprints), written last."""

    def __init__(self, folder: Path | None, settings: dict[str, dict[str, Any]]) -> None:
        self.folder = folder
        self.settings = {name: hashlib.sha256(repr(sorted(v.items())).encode()).hexdigest() for name, v in settings.items()}
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)

    def _paths(self, part: Part) -> tuple[Path, Path]:
        assert self.folder is not None
        key = hashlib.sha256(part.id.encode()).hexdigest()[:24]
        return self.folder / f"{key}.parquet", self.folder / f"{key}.done"

    def previous(self, part: Part) -> tuple[pa.Table | None, bool]:
        """The records this part had last time (decoded with the same settings) and whether it is unchanged."""
        if self.folder is None:
            return None, False
        records_path, done_path = self._paths(part)
        if not done_path.exists() or not records_path.exists():
            return None, False
        marker = json.loads(done_path.read_text())
        if marker.get("settings") != self.settings[part.source] or marker.get("part") != part.id:
            return None, False
        try:
            records = schemas.read_table(records_path, "ingest_records")
        except (schemas.SchemaError, OSError, pa.ArrowException):
            return None, False  # written by another version, or damaged: the part is read again
        return records, part.fingerprint is not None and marker.get("fingerprint") == part.fingerprint

    def finish(self, part: Part, records: pa.Table) -> None:
        if self.folder is None:
            return
        records_path, done_path = self._paths(part)
        done_path.unlink(missing_ok=True)
        schemas.write_table(records, records_path, "ingest_records")
        by_status = Counter(records.column("status").to_pylist())
        write_json(done_path, {"part": part.id, "fingerprint": part.fingerprint, "settings": self.settings[part.source],
                               "inputs": records.num_rows, "by_status": dict(sorted(by_status.items()))})


def _settings(params: IngestParams) -> dict[str, dict[str, Any]]:
    """Per source, what its recorded outcomes depend on besides the bytes: decode rules and params."""
    decode_rules = decode_module.rules_digest()
    settings = {}
    for source in params.sources:
        listing = {k: v for k, v in asdict(source).items() if k != "part_size"}
        settings[source.name] = {"max_pixels": params.max_pixels, "source": repr(sorted(listing.items())), "decode": decode_rules}
    return settings


def ingest(
    corpus: Corpus,
    params: IngestParams,
    blocklist: frozenset[str] = frozenset(),
    state_dir: str | Path | None = None,
) -> IngestResult:
    """Read, hash and decode every item of `corpus`; exclude blocked hashes; collapse exact duplicates."""
    state = _State(Path(state_dir) if state_dir is not None else None, _settings(params))
    outcomes: dict[str, tuple[str, str, str | None, int | None, int | None, int | None]] = {}
    counts: Counter[str] = Counter()
    # Each part's records are kept as an Arrow table (a few hundred bytes per input), not as dicts.
    parts_records: list[tuple[str, pa.Table]] = []
    executor: Executor | None = None
    if params.workers > 1:
        # fork: workers start in milliseconds and only run `examine` (PIL, numpy), never pyarrow.
        executor = ProcessPoolExecutor(params.workers, mp_context=get_context("fork"))
    try:
        names = ", ".join(s.name for s in params.sources)
        for part in progress(corpus.parts(), desc=f"ingest {names}", unit="part"):
            previous, unchanged = state.previous(part)
            old_rows = [] if previous is None else previous.to_pylist()
            # an item skipped as blocked but blocked no longer must be decoded now
            unblocked = {r["location"] for r in old_rows if r["status"] == RejectReason.BLOCKED.value and r["image_id"] not in blocklist}
            if previous is not None and unchanged and not unblocked:
                counts["parts_reused"] += 1
                parts_records.append((part.source, previous))
                continue
            reusable = {r["location"]: r for r in old_rows if r["stamp"] is not None and r["location"] not in unblocked}
            del old_rows
            records: list[dict[str, Any]] = []
            for batch in _batches(part.entries(), params.batch_size):
                records.extend(_examine_batch(batch, reusable, blocklist, outcomes, params, executor, counts))
            table = pa.Table.from_pylist(records, schema=RECORDS)
            state.finish(part, table)
            counts["parts_done"] += 1
            parts_records.append((part.source, table))
    finally:
        if executor is not None:
            executor.shutdown()
    pairs = ((source, r) for source, table in parts_records for r in table.to_pylist())
    result = assemble(pairs, blocklist, [s.name for s in params.sources])
    result.metrics.update(
        parts=counts["parts_done"] + counts["parts_reused"],
        parts_reused=counts["parts_reused"],
        decoded=counts["decoded"],
        reused_items=counts["reused_items"],
    )
    return result


def _batches(entries: Iterator[Entry], size: int) -> Iterator[list[Entry]]:
    batch: list[Entry] = []
    for entry in entries:
        batch.append(entry)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _examine_batch(
    batch: list[Entry],
    reusable: dict[str, dict[str, Any]],
    blocklist: frozenset[str],
    outcomes: dict[str, tuple[str, str, str | None, int | None, int | None, int | None]],
    params: IngestParams,
    executor: Executor | None,
    counts: Counter,
) -> list[dict[str, Any]]:
    """Records for a batch of entries, in entry order; each distinct new content decoded once."""
    records: list[dict[str, Any]] = []
    pending: dict[str, bytes] = {}  # image_id → bytes to decode, in first-seen order
    for entry in batch:
        item = entry.item
        old = reusable.get(item.location)
        if old is not None and old["stamp"] == entry.stamp:
            counts["reused_items"] += 1
            records.append({**old, "license": item.license})
            continue
        record: dict[str, Any] = {"location": item.location, "license": item.license, "stamp": entry.stamp, "image_id": None,
                  "n_bytes": None, "status": OK, "detail": "", "format": None, "width": None, "height": None,
                  "frame_count": None}
        try:
            data = entry.fetch()
        except DecodeError as err:
            record.update(status=err.reason.value, detail=err.detail)
            records.append(record)
            continue
        image_id = hashlib.sha256(data).hexdigest()
        record.update(image_id=image_id, n_bytes=len(data))
        if image_id in blocklist:
            record.update(status=RejectReason.BLOCKED.value, detail="sha256 is on the blocklist; not decoded")
        elif image_id not in outcomes:
            pending.setdefault(image_id, data)
        records.append(record)
    ids = list(pending)
    datas = [pending[i] for i in ids]
    if executor is None:
        results = [examine(d, params.max_pixels) for d in datas]
    else:
        results = list(executor.map(examine, datas, repeat(params.max_pixels), chunksize=max(1, len(datas) // (4 * params.workers))))
    outcomes.update(zip(ids, results))
    counts["decoded"] += len(ids)
    for record in records:
        if record["status"] == OK and record["format"] is None and record["image_id"] in outcomes:
            status, detail, fmt, width, height, frames = outcomes[record["image_id"]]
            record.update(status=status, detail=detail, format=fmt, width=width, height=height, frame_count=frames)
    return records


_IMAGE_FIELDS = ("source", "source_path", "locations", "source_license", "format", "width", "height", "n_bytes",
                 "frame_count")


def assemble(
    records: Iterable[tuple[str, dict[str, Any]]], blocklist: frozenset[str], sources: Sequence[str] = ()
) -> IngestResult:
    """Images, rejects and metrics (in total and per source) from (source name, record) pairs in listing order."""
    images: dict[str, list[Any]] = {}  # image_id → its values of _IMAGE_FIELDS
    rejects: list[dict[str, str]] = []
    tally: dict[str, Counter] = {name: Counter() for name in sources}
    for source, record in records:
        counts = tally.setdefault(source, Counter())
        counts["inputs"] += 1
        image_id = record["image_id"]
        if image_id is not None and image_id in blocklist:
            counts["blocked"] += 1
            rejects.append({"source": source, "location": record["location"], "reason": RejectReason.BLOCKED.value,
                            "detail": f"sha256 {image_id} is on the blocklist"})
        elif record["status"] != OK:
            counts[f"rejected:{record['status']}"] += 1
            rejects.append({"source": source, "location": record["location"], "reason": record["status"],
                            "detail": record["detail"]})
        elif image_id in images:
            counts["duplicates"] += 1
            images[image_id][2].append(record["location"])
        else:
            counts["accepted"] += 1
            images[image_id] = [source, record["location"], [record["location"]], record["license"], record["format"],
                                record["width"], record["height"], record["n_bytes"], record["frame_count"]]
    ids = sorted(images)
    columns = {"image_id": ids}
    for k, name in enumerate(_IMAGE_FIELDS):
        columns[name] = [images[i][k] for i in ids]
    rejects.sort(key=lambda r: (r["source"], r["location"], r["reason"]))
    metrics = _summarise(sum(tally.values(), Counter()))
    metrics["sources"] = {name: _summarise(counts) for name, counts in sorted(tally.items())}
    return IngestResult(
        pa.Table.from_pydict(columns, schema=schemas.IMAGES),
        pa.Table.from_pylist(rejects, schema=schemas.REJECTS),
        metrics,
    )


def _summarise(counts: Counter) -> dict[str, Any]:
    by_reason = {key.partition(":")[2]: n for key, n in sorted(counts.items()) if key.startswith("rejected:")}
    return {
        "inputs": counts["inputs"],
        "accepted": counts["accepted"],
        "duplicates": counts["duplicates"],
        "blocked": counts["blocked"],
        "rejected": sum(by_reason.values()),
        "rejected_by_reason": by_reason,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: `python -m pipeline.ingest --source DIR_URL_OR_FILE --images OUT ...`."""
    parser = argparse.ArgumentParser(prog="clipblind ingest", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--source", required=True, nargs="+",
                        help="corpus folder, manifest, shards (dir, pattern, URL) or dataset; one per configured source")
    parser.add_argument("--images", required=True, help="output images table (parquet)")
    parser.add_argument("--rejects", required=True, help="output rejects table (parquet)")
    parser.add_argument("--metrics", required=True, help="output metrics JSON")
    parser.add_argument("--headline", help="output headline metrics JSON (what `dvc metrics show` lists: report.HEADLINES)")
    parser.add_argument("--blocklist", help="file of sha256 hashes to exclude (one per line)")
    parser.add_argument("--state", help="folder of per-part records that makes reruns incremental")
    args = parser.parse_args(argv)
    params = command_params(parser, args.params, STAGE, IngestParams)
    blocklist = load_blocklist(args.blocklist)
    result = ingest(Corpus(params.source, args.source), params, blocklist=blocklist, state_dir=args.state)
    schemas.write_table(result.images, args.images, "images")
    schemas.write_table(result.rejects, args.rejects, "rejects")
    write_metrics(args.metrics, result.metrics)
    write_headline(args.headline, STAGE, result.metrics)
    m = result.metrics
    summary(
        STAGE,
        f"{m['inputs']} inputs → {m['accepted']} images, {m['duplicates']} duplicates, {m['blocked']} blocked, "
        f"{m['rejected']} rejected {m['rejected_by_reason'] or ''} ({m['parts_reused']} of {m['parts']} parts "
        f"reused) → {args.images}",
    )
    return 0


if __name__ == "__main__":
    from pipeline.core.errors import run_command

    raise SystemExit(run_command(main, "ingest"))
