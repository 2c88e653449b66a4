"""The Ray Data engine on a real local Ray instance (bound to 127.0.0.1) gives the local engine's bytes."""

import json

import psutil
import pytest

from pipeline import embed
from tests.test_embed import _files, _ingest, _params_with

pytestmark = pytest.mark.slow


def _embed(params_file, corpus, images, out):
    embed.main([
        "--params", str(params_file), "--images", str(images), "--source", str(corpus),
        "--clip", str(out / "clip"), "--dino", str(out / "dino"), "--metrics", str(out / "embed.json"),
    ])
    return json.loads((out / "embed.json").read_text())


def test_ray_actor_pool_matches_local_engine_and_binds_loopback(sample_corpus, tmp_path, monkeypatch):
    import ray

    images = _ingest(_params_with(tmp_path, "ingest.yaml"), sample_corpus, tmp_path / "data")
    local = _embed(_params_with(tmp_path, "local.yaml", shard_size=4), sample_corpus, images, tmp_path / "local")

    listening: list[str] = []
    alive_actors: list[int] = []
    run_ray = embed._engine("ray")

    def observed(*args, **kwargs):
        for result in run_ray(*args, **kwargs):
            if not listening:  # the instance is up: every address its processes (our descendants) listen on
                for process in psutil.Process().children(recursive=True):
                    try:
                        listening.extend(
                            c.laddr.ip for c in process.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN
                        )
                    except psutil.Error:  # a worker that exited meanwhile
                        continue
            # The GCS table, not the state API: that one needs the dashboard, which is off.
            alive_actors.append(sum(
                1 for a in ray._private.state.actors().values()
                if a["State"] == "ALIVE" and "_Encode" in a["ActorClassName"]
            ))
            yield result

    monkeypatch.setattr(embed, "_engine", lambda kind: observed if kind == "ray" else embed.run_local)
    ray_params = _params_with(
        tmp_path, "ray.yaml", shard_size=4,
        engine={"kind": "ray", "actors": 2, "actor_cpus": 0.5, "read_cpus": 0.25, "actor_threads": 1},
    )
    remote = _embed(ray_params, sample_corpus, images, tmp_path / "ray")
    assert not ray.is_initialized()  # the private instance was stopped
    assert remote["engine"] == "ray" and remote["shards_written"] == local["shards_written"] > 2
    for name in ("clip", "dino"):
        assert _files(tmp_path / "ray" / name) == _files(tmp_path / "local" / name)
    assert listening and set(listening) <= {"127.0.0.1", "::ffff:127.0.0.1"}, listening
    assert max(alive_actors) == 2, alive_actors
