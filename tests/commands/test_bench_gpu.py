"""`clipblind bench gpu`: a clear failure where no GPU exists; its checks, run on the CPU at small sizes."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from pipeline.commands import bench
from pipeline.commands.benchmarks import gpu
from pipeline.mining import tiles
from tests.conftest import REPO, TINY_CLIP_CONFIG, TINY_DINO_CONFIG
from tests.helpers.params import demo_params

TINY_CLIP = demo_params("embed.clip", model="tiny-clip", weights="random", image_size=32, config=TINY_CLIP_CONFIG)
TINY_DINO = demo_params("embed.dino", model="tiny-dino", weights="random", image_size=32, config=TINY_DINO_CONFIG)


def test_without_cuda_the_command_says_so_and_exits_3(monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench.main(["gpu"]) == gpu.EXIT_NO_DEVICE == 3
    captured = capsys.readouterr()
    assert captured.err.startswith("clipblind bench gpu: no CUDA device: torch ")
    assert "make bench-gpu" in captured.err and captured.out == ""


def test_without_cuda_the_process_fails_cleanly():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU, here or on a GPU machine
    done = subprocess.run([sys.executable, "-m", "pipeline.commands.bench", "gpu"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 3
    assert done.stderr.startswith("clipblind bench gpu: no CUDA device") and "Traceback" not in done.stderr


def test_the_benchmark_is_listed():
    assert "gpu" in bench.available()


def test_sizes_that_cannot_be_planted_are_usage_errors(capsys):
    with pytest.raises(SystemExit) as exit_:
        gpu.main(["--device", "cpu", "--vectors", "1000", "--subset", "1000", "--planted", "10"])
    assert exit_.value.code == 2 and "--planted 10" in capsys.readouterr().err


def test_planted_pairs_lie_where_asked():
    vectors, pairs = gpu.planted_vectors(2000, 64, subset=500, planted=40, threshold=0.9, seed=1)
    assert vectors.dtype == np.float16 and vectors.shape == (2000, 64)
    assert np.allclose(np.linalg.norm(vectors.astype(np.float64), axis=1), 1, atol=2e-3)
    assert len(np.unique(pairs)) == 80 and (pairs[:, 0] < pairs[:, 1]).all()
    assert (pairs[:20] < 500).all() and (pairs[20:] >= 500).all()
    x = vectors.astype(np.float64)
    cos = np.einsum("nd,nd->n", x[pairs[:, 0]], x[pairs[:, 1]])
    assert ((cos > 0.845) & (cos < 0.955)).all() and 0 < (cos > 0.9).sum() < 40


def test_search_check_on_cpu_finds_the_planted_pairs_and_agrees_with_faiss():
    result = gpu.search_check(3000, 1000, 64, 0.9, 60, block_size=256, device="cpu", seed=2)
    assert result["ok"]
    assert result["pairs_found"] == result["planted_above_threshold"] > 0
    assert result["planted_missed"] == result["unplanted_found"] == 0
    assert result["subset_pairs"] == result["faiss_subset_pairs"] > 0 and result["subset_pairs_differing"] == 0
    assert result["dot_products"] == sum(min(256, 3000 - r) * min(256, 3000 - c)
                                         for r in range(0, 3000, 256) for c in range(0, 3000, 256) if c >= r)


def test_search_check_fails_when_the_search_loses_a_pair(monkeypatch):
    real = tiles.exact_pairs

    def lossy(*args, **kwargs):
        chunks = list(real(*args, **kwargs))
        first = chunks[0]
        yield tiles.PairChunk(first.i[1:], first.j[1:], first.sim[1:])
        yield from chunks[1:]

    monkeypatch.setattr(tiles, "exact_pairs", lossy)
    result = gpu.search_check(3000, 1000, 64, 0.9, 60, block_size=256, device="cpu", seed=2)
    assert not result["ok"] and result["planted_missed"] == 1


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench-gpu") / "corpus"
    return gpu.prepare_corpus(folder, 12, seed=3)


@pytest.mark.slow
def test_embed_check_on_cpu_runs_the_stage_and_compares_with_fp32(small_corpus, tmp_path):
    corpus, ids, locations = small_corpus
    assert len(ids) == 12
    result = gpu.embed_check(tmp_path, corpus, ids, locations, TINY_CLIP, TINY_DINO, batch_size=4, sample=6,
                             model_batches=1)
    assert result["ok"] and result["images_embedded"] == 12 and result["sample"] == 6
    for name in ("clip", "dino"):
        model = result["models"][name]
        assert model["pairwise_cosine_drift"] < 1e-4 and model["min_cosine_to_cpu_fp32"] > 0.9999
        assert model["gflop_per_image"] > 0 and model["images_per_s_alone"] > 0


def test_embed_check_fails_when_stored_vectors_do_not_match(small_corpus, tmp_path, monkeypatch):
    from pipeline.embedding import store as embeddings

    corpus, ids, locations = small_corpus
    real = embeddings.load

    def shuffled(directory, image_ids):
        vectors, description = real(directory, image_ids)
        return vectors[::-1].copy(), description

    monkeypatch.setattr(embeddings, "load", shuffled)
    result = gpu.embed_check(tmp_path, corpus, ids, locations, TINY_CLIP, TINY_DINO, batch_size=4, sample=6,
                             model_batches=1)
    assert not result["ok"] and not result["models"]["clip"]["within_bf16_bound"]


@pytest.mark.slow
def test_whole_run_on_cpu_reports_and_writes_json(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    args = argparse.Namespace(device="cpu", images=8, batch_size=4, sample=4, vectors=2000, subset=600, dim=64,
                              threshold=0.9, planted=20, block_size=256, matmul_size=256, seed=0, json=str(out))
    lines: list[str] = []
    assert gpu.run(args, lines.append, encoders=(replace(TINY_CLIP, dtype="bf16"), replace(TINY_DINO, dtype="bf16"))) == 0
    results = json.loads(out.read_text())
    assert results["ok"] and results["embed"]["images_embedded"] == 8 and results["search"]["vectors"] == 2000
    assert results["embed"]["models"]["clip"]["pairwise_cosine_drift"] > 0  # bf16 moves cosines a little
    assert any(line.startswith("embed stage: 8 images") for line in lines)
    assert any(line.startswith("exact search: 2,000 × 64") for line in lines)
    assert results["bf16_matmul_gflops"] == max(results["bf16_matmul_gflops_windows"])
    shares = results["share_of_bf16_matmul"]
    assert set(shares) == {"embed stage (both models)", "clip alone", "dino alone", "exact search"}
    assert shares["exact search"] == pytest.approx(results["search"]["gflops"] / results["bf16_matmul_gflops"], abs=2e-3)
    assert shares["exact search"] > 0
