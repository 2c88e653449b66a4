"""The Ray Data engine of the embed stage: decode tasks feeding an actor pool of encoders.

One dataset row is one batch of one shard (the same batches the local engine encodes, so
both engines give the same vectors). Read tasks decode and preprocess a batch
(`engine.read_cpus` each); `engine.actors` actors, each holding every encoder, encode it
(`engine.actor_cpus` each: fractions, so on a small machine the actors cannot take every CPU
and starve the read tasks). The driver assembles shards and writes them, so the output
directory needs to be visible to the driver only; the corpus must be readable by every node.

`engine.address` names a running cluster (`auto`, `ray://head:10001`); without one a private
local instance is started bound to 127.0.0.1 (Ray otherwise listens on every interface) and
stopped afterwards. The `pipeline` package travels to the workers through `py_modules`.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pipeline
from pipeline.core.net import LOOPBACK
from pipeline.embedding.encoders import Encoder, load_encoder
from pipeline.embedding.engine import PreparedBatch, ShardJob, ShardResult, add_batch, prepare_batch
from pipeline.images.corpus import Corpus
from pipeline.params import EmbedParams, EncoderParams

INSTALL_HINT = "the Ray engine needs Ray Data: pip install 'clipblind[ray]' (ray[data])"


def run_ray(
    jobs: Sequence[ShardJob],
    encoders: Mapping[str, Encoder],
    corpus: Corpus,
    max_pixels: int,
    params: EmbedParams,
) -> Iterator[ShardResult]:
    """Encode `jobs` on Ray; yield each shard once all its batches are back (in completion order)."""
    if not jobs:
        return
    ray = _ray()
    started = _connect(ray, params.engine.address)
    try:
        engine = params.engine
        units = [
            {
                "job": j,
                "batch": b,
                "ids": list(job.plan.image_ids[rows]),
                "locations": list(job.locations[rows]),
                "encoders": list(job.encoders),
            }
            for j, job in enumerate(jobs)
            for b, rows in enumerate(job.batches(params.batch_size))
        ]
        transforms = {name: encoder.transform for name, encoder in encoders.items()}
        # The driver's resolved dtype, so `auto` cannot mean bf16 on one node and fp32 on another.
        encoder_params = {
            name: replace(getattr(params, name), dtype=encoder.describe()["dtype"]) for name, encoder in encoders.items()
        }
        threads = engine.actor_threads or max(1, int(engine.actor_cpus))
        dataset = (
            ray.data.from_items(units, override_num_blocks=min(len(units), 200))
            .map(_prepare, fn_args=(transforms, corpus, max_pixels), num_cpus=engine.read_cpus)
            .map(_Encode, fn_constructor_args=(encoder_params, threads), num_cpus=engine.actor_cpus,
                 concurrency=engine.actors)
        )
        batches_of = [len(job.batches(params.batch_size)) for job in jobs]
        arrived: dict[int, dict[int, PreparedBatch]] = {}
        for row in dataset.iter_rows():
            j, b = int(row["job"]), int(row["batch"])
            arrived.setdefault(j, {})[b] = pickle.loads(row["payload"])
            if len(arrived[j]) == batches_of[j]:
                done = arrived.pop(j)
                result = ShardResult(jobs[j], {n: [] for n in jobs[j].encoders})
                for b in range(batches_of[j]):
                    add_batch(result, done[b], lambda name, vectors: vectors)
                yield result
    finally:
        if started:
            ray.shutdown()


def _prepare(row: dict[str, Any], transforms: Mapping[str, Any], corpus: Corpus, max_pixels: int) -> dict[str, Any]:
    """Ray task body: read, decode and preprocess one batch."""
    wanted = {n: transforms[n] for n in row["encoders"]}
    prepared = prepare_batch(list(row["ids"]), list(row["locations"]), wanted, corpus, max_pixels)
    return {"job": row["job"], "batch": row["batch"], "payload": pickle.dumps(prepared)}


class _Encode:
    """Ray actor: holds every encoder, turns a prepared batch into vectors."""

    def __init__(self, encoder_params: Mapping[str, EncoderParams], threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.encoders = {name: load_encoder(name, p) for name, p in encoder_params.items()}

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        prepared: PreparedBatch = pickle.loads(row["payload"])
        vectors = {n: self.encoders[n].encode(t) for n, t in prepared.tensors.items()}
        encoded = PreparedBatch(vectors, prepared.kept, prepared.failures)
        return {"job": row["job"], "batch": row["batch"], "payload": pickle.dumps(encoded)}


def _ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as err:
        raise ImportError(INSTALL_HINT) from err
    return ray


def _connect(ray: Any, address: str | None) -> bool:
    """Join the cluster at `address`, or start a private one on the loopback; True when started here."""
    runtime_env = {"py_modules": [str(Path(pipeline.__file__).parent)]}
    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=False)
        return False
    from ray._private import ray_constants

    # A private instance advertises and binds the loopback address instead of this machine's
    # public one: the variable for the worker processes, the constant for this already-imported Ray.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    ray.init(
        address="local",
        num_cpus=os.cpu_count(),
        include_dashboard=False,
        _node_ip_address=LOOPBACK,
        runtime_env=runtime_env,
        log_to_driver=False,
    )
    return True
