"""The local embedding engine: shards planned, decoded ahead of the model, encoded, written atomically; resumable."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.errors import ClipblindError
from pipeline.core.report import progress, warn
from pipeline.embedding import store as embeddings
from pipeline.embedding.encoders import Encoder
from pipeline.embedding.encoders import load_encoders as build_encoders
from pipeline.images.corpus import Corpus
from pipeline.images.decode import DecodeError, decode, rules_digest
from pipeline.params import EmbedParams


class EmbedFailure(ClipblindError, RuntimeError):
    """Images that ingest accepted could not be embedded; the message names them and the fix."""


@dataclass(frozen=True)
class ShardSlice:
    """Worker `index` of `count`: it owns the shards k with k % count == index."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> ShardSlice:
        """Parse `i/n` (0 <= i < n)."""
        try:
            index, count = (int(part) for part in text.split("/"))
        except ValueError:
            raise ValueError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
        if not 0 <= index < count:
            raise ValueError(f"--shard {text}: need 0 <= i < n")
        return cls(index, count)

    def owns(self, shard: int) -> bool:
        """Whether shard number `shard` is this worker's."""
        return shard % self.count == self.index


@dataclass(frozen=True)
class ShardJob:
    """One shard to compute: its live ids, where they are, and the encoders it still lacks."""

    plan: embeddings.ShardPlan
    locations: tuple[str, ...]
    encoders: tuple[str, ...]

    def batches(self, batch_size: int) -> list[slice]:
        """The row ranges encoded together; fixed per shard so every engine gives the same vectors."""
        return [slice(s, s + batch_size) for s in range(0, len(self.plan.image_ids), batch_size)]


@dataclass
class ShardResult:
    """A computed shard: vectors per encoder for the ids that decoded, and the ids that did not."""

    job: ShardJob
    vectors: dict[str, list[np.ndarray]] = field(default_factory=dict)
    kept: list[str] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (image_id, why)


@dataclass(frozen=True)
class PreparedBatch:
    """A decoded, preprocessed batch: a tensor per encoder for the ids in `kept`."""

    tensors: dict[str, Any]
    kept: list[str]
    failures: list[tuple[str, str]]


def prepare_batch(
    ids: Sequence[str], locations: Sequence[str], preprocessors: Preprocessors, corpus: Corpus, max_pixels: int
) -> PreparedBatch:
    """Read and decode each image once, preprocess it for every encoder; a failure costs only its image."""
    import torch

    per_encoder: dict[str, list[Any]] = {n: [] for n in preprocessors}
    kept: list[str] = []
    failures: list[tuple[str, str]] = []
    for image_id, location in zip(ids, locations):
        try:
            image = decode(corpus.read(location), max_pixels=max_pixels).image
        except DecodeError as err:
            failures.append((image_id, f"{location}: {err}"))
            continue
        for name, preprocess in preprocessors.items():
            per_encoder[name].append(preprocess(image))
        kept.append(image_id)
    tensors = {n: torch.stack(t) for n, t in per_encoder.items() if t}
    return PreparedBatch(tensors, kept, failures)


def plan_jobs(
    plan: Sequence[embeddings.ShardPlan],
    location_of: Mapping[str, str],
    complete: Callable[[str, embeddings.ShardPlan], bool],
    encoder_names: Sequence[str],
    worker: ShardSlice,
) -> tuple[list[ShardJob], int, int]:
    """This worker's shards that some encoder still lacks; also how many it owns and how many are done."""
    live = frozenset(location_of)
    jobs: list[ShardJob] = []
    owned = reused = 0
    for shard in plan:
        if not worker.owns(shard.index):
            continue
        shard = shard.live(live)
        if not shard.image_ids:
            continue  # every image of this shard left the corpus
        owned += 1
        todo = tuple(n for n in encoder_names if not complete(n, shard))
        if not todo:
            reused += 1
            continue
        jobs.append(ShardJob(shard, tuple(location_of[i] for i in shard.image_ids), todo))
    return jobs, owned, reused


def run_local(
    jobs: Sequence[ShardJob],
    encoders: Mapping[str, Encoder],
    corpus: Corpus,
    max_pixels: int,
    params: EmbedParams,
) -> Iterator[ShardResult]:
    """Encode shard by shard in this process while loader threads decode the next batches."""
    engine = params.engine
    units = ((job, rows) for job in jobs for rows in job.batches(params.batch_size))
    pending: deque[Future[PreparedBatch]] = deque()
    with ThreadPoolExecutor(max_workers=max(1, engine.loader_threads), thread_name_prefix="embed-loader") as pool:

        def submit_next() -> None:
            unit = next(units, None)
            if unit is not None:
                job, rows = unit
                preprocessors = {n: encoders[n].preprocess for n in job.encoders}
                pending.append(pool.submit(
                    prepare_batch, job.plan.image_ids[rows], job.locations[rows], preprocessors, corpus, max_pixels
                ))

        try:
            for _ in range(max(1, engine.prefetch_batches)):
                submit_next()
            for job in jobs:
                result = ShardResult(job, {n: [] for n in job.encoders})
                for _ in job.batches(params.batch_size):
                    prepared = pending.popleft().result()
                    submit_next()
                    add_batch(result, prepared, lambda name, batch: encoders[name].encode(batch))
                yield result
        finally:
            for future in pending:
                future.cancel()


def add_batch(result: ShardResult, prepared: PreparedBatch, encode: Callable[[str, Any], np.ndarray]) -> None:
    """Encode one prepared batch into the shard being assembled."""
    result.failures.extend(prepared.failures)
    if prepared.kept:
        result.kept.extend(prepared.kept)
        for name in result.job.encoders:
            result.vectors[name].append(encode(name, prepared.tensors[name]))


def embed_corpus(
    image_ids: Sequence[str],
    locations: Sequence[str],
    corpus: Corpus,
    encoders: Mapping[str, Encoder],
    out_dirs: Mapping[str, Path],
    params: EmbedParams,
    max_pixels: int,
    worker: ShardSlice = ShardSlice(),
    engine: Callable[..., Iterable[ShardResult]] | None = None,
) -> dict[str, Any]:
    """Embed every image that lacks a finished vector, for each encoder; return the metrics.

    `engine(jobs, encoders, corpus, max_pixels, params)` yields computed shards; the default
    is the one `params.engine.kind` names.
    """
    fingerprints = {}
    for name, encoder in encoders.items():
        # the decode rules made the pixels: shards embedded under other rules are never reused
        description = {**encoder.describe(), "decode_rules": rules_digest()}
        fingerprints[name] = embeddings.fingerprint(description)
        out_dirs[name].mkdir(parents=True, exist_ok=True)
        embeddings.write_description(out_dirs[name], description)
    plan = embeddings.sync_plan([out_dirs[n] for n in encoders], image_ids, params.shard_size)
    mine_shards = [s.index for s in plan if worker.owns(s.index)]
    for name in encoders:
        embeddings.remove_leftovers(out_dirs[name], mine_shards)
    jobs, owned, reused = plan_jobs(
        plan,
        dict(zip(image_ids, locations)),
        lambda name, shard: embeddings.shard_complete(out_dirs[name], shard, fingerprints[name]),
        list(encoders),
        worker,
    )
    if engine is None and params.engine.kind != "local":
        raise ValueError(f"embed.engine.kind is {params.engine.kind!r}: pass that engine's runner (the embed stage picks it)")
    run = engine or run_local
    written = embedded = 0
    failures: list[tuple[str, str]] = []
    results = run(jobs, encoders, corpus, max_pixels, params)
    for result in progress(results, desc="embed shards", total=len(jobs), unit="shard"):
        failures.extend(result.failures)
        embedded += len(result.kept)
        if result.kept:
            # A shard missing failed images is still published (its marker lists what it holds),
            # so the rest of the shard is usable; it stays incomplete and is retried next run.
            shard = embeddings.ShardPlan(result.job.plan.index, tuple(result.kept))
            for name in result.job.encoders:
                embeddings.write_shard(out_dirs[name], shard, np.concatenate(result.vectors[name]), fingerprints[name])
            written += 1
    to_embed = sum(len(j.plan.image_ids) for j in jobs)
    return {
        "images": len(image_ids),
        "images_to_embed": to_embed,
        "images_embedded": embedded,
        "images_failed": len(failures),
        "failures": [{"image_id": i, "error": e} for i, e in sorted(failures)[:100]],
        "shards": len(plan),
        "shards_owned": owned,
        "shards_written": written,
        "shards_reused": reused,
        "worker": f"{worker.index}/{worker.count}",
        "engine": params.engine.kind,
        "dtype": {n: e.describe()["dtype"] for n, e in encoders.items()},
        "random_init": {n: e.random_init for n, e in encoders.items()},
        "dims": {n: e.dim for n, e in encoders.items()},
    }



def load_encoders(params: EmbedParams, names: Iterable[str] = ("clip", "dino")) -> dict[str, Encoder]:
    """The stage's encoders, built from params (warning loudly about random weights)."""
    encoders = build_encoders({name: getattr(params, name) for name in names})  # names every one that cannot load
    for name, encoder in encoders.items():
        if encoder.random_init:
            warn("embed", f"{name} encoder uses RANDOMLY INITIALISED weights (weights: random): "
                        "its similarities mean nothing about images")
    return encoders


Preprocessors = Mapping[str, Callable[[Any], Any]]
