"""Our encoders against the reference libraries' own forward passes, for every weight source, offline.

Each source is planted where the real loading code looks for it (a private Hugging Face cache with
HF_HUB_OFFLINE=1, a checkpoint file, a saved directory) at a real architecture size with random
weights. The reference is the library's own path on the same files: open_clip's
`create_model_and_transforms` (its preprocess, `encode_image`) and transformers' model on its own
`AutoImageProcessor` output. fp32 must agree within 1e-5; bf16 with the CPU fast paths (SDPA,
fused oneDNN linears) within cosine 0.999.

`pytest -s -k parity tests/embedding/test_encoder_parity.py` prints the figures per source.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from pipeline.embedding.encoders import WeightsUnavailable, load_encoder, load_encoders
from pipeline.params import EncoderParams
from tests.helpers.params import demo_params

FP32_ATOL = 1e-5
BF16_MIN_COSINE = 0.999
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)


def _images() -> list[Image.Image]:
    """Three images of different shapes (so resize modes matter): noise over gradients."""
    rng = np.random.default_rng(7)
    images = []
    for h, w in ((200, 300), (260, 180), (224, 224)):
        ramp = np.linspace(0, 255, w)[None, :, None] * np.ones((h, 1, 3))
        noise = rng.integers(0, 90, (h, w, 3))
        images.append(Image.fromarray(np.clip(ramp * 0.7 + noise, 0, 255).astype(np.uint8)))
    return images


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty private Hugging Face cache, offline (the hub library reads its env at import: set both)."""
    import huggingface_hub.constants as hub

    home = tmp_path / "hf-home"
    cache = home / "hub"
    cache.mkdir(parents=True)
    for var, value in (("HF_HOME", home), ("HF_HUB_CACHE", cache), ("HF_HUB_OFFLINE", "1")):
        monkeypatch.setenv(var, str(value))
    monkeypatch.setattr(hub, "HF_HOME", str(home))
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    return cache


def plant(cache: Path, repo_id: str, files: dict[str, Path]) -> Path:
    """Move `files` (name in the repo → file here) into `cache` as a downloaded snapshot of `repo_id`."""
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for name, source in files.items():
        source.rename(snapshot / name)
    return snapshot


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _report(source: str, ours32: np.ndarray, ours16: np.ndarray, reference: np.ndarray) -> None:
    """Assert the fp32 and bf16 bounds and print the figures."""
    diff = float(np.abs(ours32 - reference).max())
    cosine = float((ours16 * reference).sum(axis=1).min())
    print(f"\nparity {source}: fp32 max |diff| {diff:.2e}, bf16 min cosine {cosine:.5f}")
    assert diff <= FP32_ATOL, f"{source}: fp32 vectors differ from the reference by {diff}"
    assert cosine >= BF16_MIN_COSINE, f"{source}: bf16 cosine to the reference {cosine}"


def _ours(params: EncoderParams, images: list[Image.Image]) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Our fp32 and bf16 vectors (the embed stage's path: preprocess, stack, encode) and the fp32 description."""
    import torch

    out = []
    description: dict[str, Any] = {}
    for dtype in ("fp32", "bf16"):
        encoder = load_encoder("x", dataclasses.replace(params, dtype=dtype))
        out.append(encoder.encode(torch.stack([encoder.preprocess(im) for im in images])))
        if dtype == "fp32":
            description = encoder.describe()
            json.dumps(description)  # encoder.json holds it
        else:
            assert encoder.describe()["attention"] == "sdpa"
            if torch.backends.mkldnn.is_available():
                assert encoder.describe()["linear"] == "onednn_fused"
        del encoder
    return out[0], out[1], description


# ---------------------------------------------------------------- open_clip


def _open_clip_reference(model_name: str, pretrained: str | None, images: list[Image.Image],
                         **kwargs: Any) -> np.ndarray:
    import open_clip
    import torch

    model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained, **kwargs)
    with torch.inference_mode():
        features = model.eval().encode_image(torch.stack([preprocess(im) for im in images]))
    return torch.nn.functional.normalize(features, dim=-1).numpy()


def _save_open_clip(model_name: str, path: Path, seed: int, fmt: str = "safetensors") -> Path:
    """Random weights of `model_name` saved as open_clip writes them (fp16 halves the file; both sides load the same)."""
    import open_clip
    import torch

    torch.manual_seed(seed)
    model = open_clip.create_model(model_name, pretrained=None)
    state = {k: v.half().contiguous() for k, v in model.state_dict().items()}
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


@pytest.mark.parametrize(
    "model",
    ["ViT-B-32", pytest.param("ViT-L-14", marks=pytest.mark.slow)],
)
def test_parity_openai_tag_from_a_planted_cache_is_quickgelu(model, hf_cache, tmp_path):
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model, "openai")
    assert cfg["quick_gelu"] is True
    repo_id, filename = cfg["hf_hub"].rstrip("/"), "open_clip_model.safetensors"
    snapshot = plant(hf_cache, repo_id, {filename: _save_open_clip(f"{model}-quickgelu", tmp_path / "w", seed=3)})
    images = _images()
    # OpenAI's CLIP is the QuickGELU build of the architecture, on the tag's own preprocessing
    reference = _open_clip_reference(f"{model}-quickgelu", "openai", images)
    ours32, ours16, description = _ours(demo_params("embed.clip", model=model, weights="openai"), images)
    _report(f"open_clip {model} tag openai (planted cache)", ours32, ours16, reference)
    assert description["quick_gelu"] is True
    assert description["weights_file"] == {"name": f"{repo_id}/{filename}", "sha256": _sha256(snapshot / filename)}
    assert description["architecture_from"] == "pretrained tag openai"
    assert description["preprocessing"]["mean"] == list(OPENAI_MEAN)


def test_parity_hf_hub_model_from_a_planted_cache(hf_cache, tmp_path):
    import open_clip

    repo_id = "clipblind-test/vit-b-32-squash"
    model_cfg = open_clip.get_model_config("ViT-B-32")
    preprocess_cfg = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "interpolation": "bilinear",
                      "resize_mode": "squash"}
    config = tmp_path / "open_clip_config.json"
    config.write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}))
    weights = _save_open_clip("ViT-B-32", tmp_path / "w", seed=4, fmt="bin")
    snapshot = plant(hf_cache, repo_id, {"open_clip_config.json": config, "open_clip_pytorch_model.bin": weights})
    images = _images()
    reference = _open_clip_reference(f"hf-hub:{repo_id}", None, images)
    ours32, ours16, description = _ours(
        demo_params("embed.clip", model=f"hf-hub:{repo_id}", weights="pretrained"), images)
    _report("open_clip hf-hub ViT-B-32 (planted cache)", ours32, ours16, reference)
    assert description["preprocessing"]["resize_mode"] == "squash"
    assert description["preprocessing"]["mean"] == [0.5, 0.5, 0.5]
    assert description["weights_file"]["sha256"] == _sha256(snapshot / "open_clip_pytorch_model.bin")
    assert description["architecture_from"] == "open_clip_config.json of the hub repo"


@pytest.mark.parametrize("model", ["ViT-B-32", "ViT-B-32-quickgelu"])
def test_parity_local_state_dict_file_follows_the_stated_model(model, tmp_path):
    weights = _save_open_clip(model, tmp_path / "ckpt.safetensors", seed=5)
    images = _images()
    reference = _open_clip_reference(model, str(weights), images)
    ours32, ours16, description = _ours(demo_params("embed.clip", model=model, weights=str(weights)), images)
    _report(f"open_clip {model} local state dict", ours32, ours16, reference)
    assert description["quick_gelu"] is model.endswith("quickgelu")
    assert description["architecture_from"] == "model param"
    assert description["weights_file"] == {"name": str(weights), "sha256": _sha256(weights)}


def _openai_style_checkpoint(path: Path, kind: str) -> Path:
    """A QuickGELU ViT-B/32 saved the ways OpenAI's CLIP files come: a TorchScript archive, or its state dict."""
    import open_clip
    import torch

    torch.manual_seed(6)
    model = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None).eval()
    if kind == "jit":
        # OpenAI's archives hold the causal mask as a plain attribute and `input_resolution` as state
        mask = model.attn_mask
        del model._buffers["attn_mask"]
        model.attn_mask = mask
        model.register_buffer("input_resolution", torch.tensor(224))
        torch.jit.save(torch.jit.script(model), path)
    else:
        state = dict(model.state_dict())
        state.update({"input_resolution": torch.tensor(224), "context_length": torch.tensor(77),
                      "vocab_size": torch.tensor(49408)})
        torch.save(state, path)
    return path


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:'torch.load' received a zip file")
@pytest.mark.parametrize("kind", ["jit", "state_dict"])
def test_parity_openai_checkpoint_file_is_detected_as_quickgelu(kind, tmp_path):
    import torch

    weights = _openai_style_checkpoint(tmp_path / "ViT-B-32.pt", kind)
    images = _images()
    if kind == "jit":  # open_clip's own loading of an OpenAI archive, told it is QuickGELU
        reference = _open_clip_reference("ViT-B-32-quickgelu", str(weights), images, weights_only=False)
    else:  # open_clip cannot load this layout itself: the reference is the very model that was saved
        torch.manual_seed(6)
        reference = _open_clip_reference("ViT-B-32-quickgelu", None, images)
    # the user names the plain architecture; the file says it is OpenAI's (QuickGELU)
    ours32, ours16, description = _ours(demo_params("embed.clip", model="ViT-B-32", weights=str(weights)), images)
    _report(f"open_clip ViT-B-32 OpenAI {kind} file", ours32, ours16, reference)
    assert description["quick_gelu"] is True
    assert description["architecture_from"].startswith("detected: OpenAI")


# ---------------------------------------------------------------- DINOv2

SMALL = {"hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6, "patch_size": 14}
LARGE = {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "patch_size": 14}
# a processor config unlike the documented defaults, so using the defaults would show
PROCESSOR = {"size": {"shortest_edge": 240}, "crop_size": {"height": 196, "width": 196},
             "image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.3, 0.25], "resample": 2}


def _save_dinov2(folder: Path, arch: dict[str, Any], registers: bool, seed: int) -> Path:
    import torch
    from transformers import (
        BitImageProcessor,
        Dinov2Config,
        Dinov2Model,
        Dinov2WithRegistersConfig,
        Dinov2WithRegistersModel,
    )

    torch.manual_seed(seed)
    if registers:
        model: Any = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(num_register_tokens=4, **arch))
    else:
        model = Dinov2Model(Dinov2Config(**arch))
    model.save_pretrained(folder)
    BitImageProcessor(do_center_crop=True, **PROCESSOR).save_pretrained(folder)
    return folder


def _dinov2_reference(folder: Path, images: list[Image.Image], pooling: str) -> np.ndarray:
    import torch
    from transformers import AutoImageProcessor, AutoModel

    processor = AutoImageProcessor.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    registers = getattr(model.config, "num_register_tokens", 0)
    with torch.inference_mode():
        hidden = model(**processor(images=images, return_tensors="pt")).last_hidden_state
    pooled = hidden[:, 0] if pooling == "cls" else hidden[:, 1 + registers:].mean(dim=1)
    return torch.nn.functional.normalize(pooled, dim=-1).numpy()


@pytest.mark.parametrize(
    "size, arch, registers, pooling",
    [
        ("small", SMALL, False, "cls"),
        ("small", SMALL, False, "mean"),
        pytest.param("large", LARGE, False, "cls", marks=pytest.mark.slow),
        ("small", SMALL, True, "cls"),
        ("small", SMALL, True, "mean"),
        pytest.param("large", LARGE, True, "mean", marks=pytest.mark.slow),
    ],
    ids=["small-cls", "small-mean", "large-cls", "registers-small-cls", "registers-small-mean", "registers-large-mean"],
)
def test_parity_dinov2_local_directory(size, arch, registers, pooling, tmp_path):
    folder = _save_dinov2(tmp_path / "dino", arch, registers, seed=8)
    images = _images()
    reference = _dinov2_reference(folder, images, pooling)
    params = demo_params("embed.dino", model=str(folder), weights="pretrained", pooling=pooling)
    ours32, ours16, description = _ours(params, images)
    name = f"dinov2{'-with-registers' if registers else ''}-{size} {pooling} local dir"
    _report(name, ours32, ours16, reference)
    assert description["resolution"] == 196
    assert description["preprocessing"]["image_mean"] == PROCESSOR["image_mean"]
    assert description["preprocessing"]["source"] == "preprocessor_config.json"
    assert description["architecture"]["num_register_tokens"] == (4 if registers else 0)
    assert description["weights_file"]["sha256"] == _sha256(folder / "model.safetensors")


def test_parity_dinov2_hub_id_from_a_planted_cache(hf_cache, tmp_path):
    folder = _save_dinov2(tmp_path / "dino", SMALL, registers=True, seed=9)
    files = {p.name: p for p in folder.iterdir()}
    snapshot = plant(hf_cache, "facebook/dinov2-with-registers-small", files)
    images = _images()
    reference = _dinov2_reference(snapshot, images, "cls")
    params = demo_params("embed.dino", model="facebook/dinov2-with-registers-small", weights="pretrained")
    ours32, ours16, description = _ours(params, images)
    _report("dinov2-with-registers-small cls hub id (planted cache)", ours32, ours16, reference)
    assert description["weights"] == "facebook/dinov2-with-registers-small"
    assert description["weights_file"] == {"name": "facebook/dinov2-with-registers-small/model.safetensors",
                                           "sha256": _sha256(snapshot / "model.safetensors")}


def test_dinov2_directory_without_processor_config_uses_the_documented_defaults(tmp_path):
    import torch
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(1)
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2)).save_pretrained(tmp_path / "d")
    encoder = load_encoder("d", demo_params("embed.dino", model=str(tmp_path / "d"), weights="pretrained"))
    pre = encoder.describe()["preprocessing"]
    assert pre["source"] == "documented defaults"
    assert pre["size"] == {"shortest_edge": 256} and pre["crop_size"] == {"height": 224, "width": 224}
    assert pre["image_mean"] == [0.485, 0.456, 0.406]
    assert tuple(encoder.preprocess(_images()[0]).shape) == (3, 224, 224)


# ---------------------------------------------------------------- failures and honest metadata


def test_offline_error_names_every_encoder_that_cannot_be_loaded(hf_cache):
    specs = {
        "clip": demo_params("embed.clip", model="ViT-L-14", weights="openai"),
        "dino": demo_params("embed.dino", model="facebook/dinov2-large", weights="pretrained"),
        "fine": demo_params("embed.dino", model="tiny", weights="random", config=SMALL | {"num_hidden_layers": 1}),
    }
    with pytest.raises(WeightsUnavailable) as err:
        load_encoders(specs)
    message = str(err.value)
    assert "2 of 3 encoders" in message
    assert "clip" in message and "timm/vit_large_patch14_clip_224.openai" in message
    assert "dino" in message and "facebook/dinov2-large" in message
    assert "fine:" not in message


def test_evaluate_names_every_clip_entry_that_cannot_be_loaded(hf_cache):
    from pipeline.evaluate import load_clip_scorers

    specs = [demo_params("embed.clip", model="ViT-L-14", weights="openai"),
             demo_params("embed.clip", model="ViT-B-16", weights="openai")]
    with pytest.raises(WeightsUnavailable) as err:
        load_clip_scorers(specs)
    message = str(err.value)
    assert "evaluate.clip[0] ViT-L-14" in message and "evaluate.clip[1] ViT-B-16" in message


def test_attention_records_what_transformers_actually_runs(monkeypatch):
    from transformers import Dinov2Model

    params = demo_params("embed.dino", model="tiny", weights="random", image_size=32,
                           config={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "patch_size": 8})
    encoder = load_encoder("d", params)
    assert encoder.describe()["attention"] == encoder.model.config._attn_implementation == "sdpa"
    # a transformers build whose DINOv2 has no SDPA path: the model runs eager, and says so
    monkeypatch.setattr(Dinov2Model, "_supports_sdpa", False)
    encoder = load_encoder("d", params)
    assert encoder.describe()["attention"] == encoder.model.config._attn_implementation == "eager"


def test_openai_tag_without_weights_in_the_cache_names_the_file_and_both_fixes(hf_cache):
    with pytest.raises(WeightsUnavailable) as err:
        load_encoder("clip", demo_params("embed.clip", model="ViT-B-32", weights="openai"))
    message = str(err.value)
    assert "timm/vit_base_patch32_clip_224.openai" in message and "connect" in message and "checkpoint file" in message

