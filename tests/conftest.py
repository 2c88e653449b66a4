"""Shared fixtures: a tiny world built at test time (generated images, tiny random models)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("DVC_NO_ANALYTICS", "1")

REPO = Path(__file__).resolve().parents[1]

# Tiny architectures: random weights, built from configs in milliseconds.
TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 1000, "width": 64, "heads": 2, "layers": 1},
}
# A tiny open_clip whose text tower reads real text: open_clip's tokenizer emits ids up to 49407, so it keeps the full
# vocabulary (statements, the diagnostics' text side).
TINY_CLIP_TEXT_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}
TINY_DINO_CONFIG = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "patch_size": 8, "mlp_ratio": 2}


def tiny_params(**sections: dict) -> dict:
    """The repository's params with tiny random encoders and small sizes; `sections` are laid over it (merged)."""
    from tests.helpers.params import merged, repo_params

    repo = repo_params()
    tiny_clip = merged(repo["embed"]["clip"], {"kind": "open_clip", "model": "tiny-clip", "weights": "random",
                                               "image_size": 32, "config": TINY_CLIP_CONFIG, "seed": 0})
    tiny = {
        "ingest": {"source": {"kind": "folder", "name": "test", "license": "CC0-1.0"}, "max_pixels": 10_000_000},
        "embed": {
            "clip": dict(tiny_clip),
            "dino": {"kind": "dinov2", "model": "tiny-dino", "weights": "random", "image_size": 32,
                     "config": TINY_DINO_CONFIG, "pooling": "cls", "seed": 0},
            "batch_size": 8,
            "shard_size": 16,
        },
        "search": {"recall_clip_threshold": 0.8, "block_size": 64, "near_duplicate": {"clip": 0.9999, "dino": 0.9999},
                   "sample_pairs": 2000, "clusters": 4, "seed": 0},
        "mine": {"clip_threshold": 0.9, "dino_threshold": 0.99,
                 "select": {"max_per_image": 0, "target": 0, "drop_near_duplicate_pairs": True}},
        "calibrate": {"clip_grid": [0.8, 0.9, 0.95], "dino_grid": [0.5, 0.9, 0.99], "scatter_points": 1000, "seed": 0},
        "gallery": {"thumb_size": 64, "jpeg_quality": 80, "max_pairs": 0, "title": "test gallery"},
        "export": {"url_prefix": "/data/local-files/?d=", "display_max_side": 128, "jpeg_quality": 90},
        "validate": {"options_ignore_case": True},
        "accept": {"verifiers": 1},
        "gate": {"vlm": None, "flagged": "keep", "blind_min_right": 6},
        "evaluate": {"clip": [dict(tiny_clip)], "vlm": []},
    }
    params = merged({name: value for name, value in repo.items() if name != "labelstudio"}, tiny)
    return merged(params, sections)


@pytest.fixture
def params_file(tmp_path: Path) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(tiny_params()))
    return path


@pytest.fixture(scope="session")
def sample_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pipeline.sample_corpus import generate

    out = tmp_path_factory.mktemp("corpus") / "corpus"
    generate(out, scenes=3, seed=1)
    return out
