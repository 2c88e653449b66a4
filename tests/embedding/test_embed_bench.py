"""The pieces `clipblind bench embed` measures with, checked on tiny models."""

import dataclasses

import numpy as np
import pytest

from pipeline.commands.benchmarks.embed import MatmulProbe, forward_flops
from pipeline.embedding.encoders import load_encoder
from tests.embedding.test_encoders import TINY_CLIP


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_forward_flops_counts_every_matmul_including_sdpa_attention(dtype):
    encoder = load_encoder("c", dataclasses.replace(TINY_CLIP, dtype=dtype))
    assert encoder.describe()["attention"] == "sdpa"
    width, tokens, layers, patch, embed = 64, (32 // 8) ** 2 + 1, 2, 8, 32
    per_layer = (
        2 * tokens * width * 3 * width  # qkv projection
        + 2 * 2 * tokens * tokens * width  # QK^T and attention x V
        + 2 * tokens * width * width  # output projection
        + 2 * 2 * tokens * width * 4 * width  # MLP
    )
    expected = 2 * (tokens - 1) * 3 * patch * patch * width + layers * per_layer + 2 * width * embed
    assert forward_flops(encoder, size=32) == expected


def test_matmul_probe_accumulates_rate():
    probe = MatmulProbe("fp32", n=128)
    probe.sample(0.05)
    first = probe.flops
    probe.sample(0.05)
    assert probe.flops > first > 0 and np.isfinite(probe.gflops) and probe.gflops > 0
