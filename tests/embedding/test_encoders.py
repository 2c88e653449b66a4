import time

import numpy as np
import pytest
from PIL import Image

from pipeline.embedding.encoders import WeightsUnavailable, load_encoder
from tests.conftest import TINY_CLIP_CONFIG, TINY_DINO_CONFIG
from tests.helpers.params import demo_params

TINY_CLIP = demo_params("embed.clip", model="tiny-clip", weights="random", image_size=32, config=TINY_CLIP_CONFIG)
TINY_DINO = demo_params("embed.dino", model="tiny-dino", weights="random", image_size=32, config=TINY_DINO_CONFIG)


def _images(n=3):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.mark.parametrize("params", [TINY_CLIP, TINY_DINO], ids=["open_clip", "dinov2"])
def test_tiny_encoder_gives_unit_vectors_and_describes_itself(params):
    import torch

    encoder = load_encoder("x", params)
    batch = torch.stack([encoder.preprocess(im) for im in _images()])
    vectors = encoder.encode(batch)
    assert vectors.shape == (3, encoder.dim) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    description = encoder.describe()
    assert description["random_init"] is True and description["weights"] == "random"
    for key in ("model", "resolution", "preprocessing", "pooling", "dtype", "versions"):
        assert key in description
    assert "torch" in description["versions"]


def test_same_seed_same_random_weights():
    import torch

    a, b = load_encoder("a", TINY_DINO), load_encoder("b", TINY_DINO)
    batch = torch.stack([a.preprocess(im) for im in _images(2)])
    np.testing.assert_array_equal(a.encode(batch), b.encode(batch))


def test_dino_pooling_changes_the_vector():
    import dataclasses

    import torch

    cls = load_encoder("c", TINY_DINO)
    mean = load_encoder("m", dataclasses.replace(TINY_DINO, pooling="mean"))
    batch = torch.stack([cls.preprocess(im) for im in _images(2)])
    assert not np.allclose(cls.encode(batch), mean.encode(batch))


def test_dino_local_directory_loads_saved_weights(tmp_path):
    import torch
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(5)
    Dinov2Model(Dinov2Config(image_size=32, **TINY_DINO_CONFIG)).save_pretrained(tmp_path / "dino")
    params = demo_params("embed.dino", model=str(tmp_path / "dino"), weights="pretrained", image_size=32)
    encoder = load_encoder("d", params)
    assert encoder.random_init is False
    assert encoder.describe()["weights"] == str((tmp_path / "dino").resolve())


def test_open_clip_local_checkpoint_file(tmp_path):
    import open_clip
    import torch

    load_encoder("warm", TINY_CLIP)  # registers the tiny config
    model = open_clip.create_model("tiny-clip", pretrained=None)
    torch.save(model.state_dict(), tmp_path / "ckpt.pt")
    params = demo_params("embed.clip", model="tiny-clip", weights=str(tmp_path / "ckpt.pt"), image_size=32, config=TINY_CLIP_CONFIG)
    encoder = load_encoder("c", params)
    assert encoder.random_init is False
    batch = torch.stack([encoder.preprocess(im) for im in _images(1)])
    with torch.inference_mode():
        expected = torch.nn.functional.normalize(model.eval().encode_image(batch), dim=-1).numpy()
    np.testing.assert_allclose(encoder.encode(batch), expected, atol=1e-5)


def test_missing_checkpoint_file_is_named(tmp_path):
    params = demo_params("embed.clip", model="ViT-B-32", weights=str(tmp_path / "nope.pt"))
    with pytest.raises(WeightsUnavailable, match="nope.pt"):
        load_encoder("c", params)


@pytest.mark.parametrize(
    "params",
    [
        demo_params("embed.dino", model="facebook/dinov2-large", weights="pretrained"),
        demo_params("embed.clip", model="ViT-L-14", weights="openai"),
    ],
    ids=["dinov2-hub", "open_clip-hub"],
)
def test_hub_weights_offline_fail_fast_naming_both_fixes(params, monkeypatch):
    # This machine has no route to the hub: the real loading code must notice within seconds
    # (without HF_HUB_OFFLINE) and say how to fix it.
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", "/nonexistent-empty-cache")
    start = time.monotonic()
    with pytest.raises(WeightsUnavailable) as err:
        load_encoder("x", params)
    assert time.monotonic() - start < 20
    message = str(err.value)
    assert "connect" in message and "local" in message


@pytest.mark.parametrize("params", [TINY_CLIP, TINY_DINO], ids=["open_clip", "dinov2"])
def test_bf16_with_fused_onednn_linears_stays_within_cosine_tolerance_of_fp32(params):
    import dataclasses

    import torch

    fp32 = load_encoder("a", params)
    bf16 = load_encoder("b", dataclasses.replace(params, dtype="bf16"))
    if torch.backends.mkldnn.is_available():
        assert bf16.describe()["linear"] == "onednn_fused" and fp32.describe()["linear"] == "torch"
    batch = torch.stack([fp32.preprocess(im) for im in _images(6)])
    a, b = fp32.encode(batch), bf16.encode(batch)
    assert bf16.describe()["dtype"] == "bf16" and not np.array_equal(a, b)
    assert np.abs(a @ a.T - b @ b.T).max() <= 0.003


def test_auto_dtype_follows_the_cpu_flags(tmp_path):
    from pipeline.embedding.encoders import cpu_has_native_bf16, resolve_dtype

    with_bf16, without = tmp_path / "with", tmp_path / "without"
    with_bf16.write_text("flags\t\t: fpu sse2 avx512f avx512_bf16 amx_tile\n")
    without.write_text("flags\t\t: fpu sse2 avx2\n")
    assert cpu_has_native_bf16(with_bf16) and not cpu_has_native_bf16(without)
    assert resolve_dtype("fp32", "cuda") == "fp32" and resolve_dtype("auto", "cuda") == "bf16"


def test_dino_transform_pickles_for_ray_workers():
    import pickle

    import torch

    encoder = load_encoder("d", TINY_DINO)
    image = _images(1)[0]
    torch.testing.assert_close(pickle.loads(pickle.dumps(encoder.transform))(image), encoder.preprocess(image))


def test_dino_with_registers_hub_id_builds_registers_and_mean_skips_them():
    import dataclasses

    import torch

    params = demo_params("embed.dino", model="facebook/dinov2-with-registers-small", weights="random",
                           image_size=28, pooling="mean", config={"num_hidden_layers": 1})
    encoder = load_encoder("r", params)
    assert type(encoder.model).__name__ == "Dinov2WithRegistersModel"
    assert encoder.describe()["architecture"]["num_register_tokens"] == 4
    batch = torch.stack([encoder.preprocess(im) for im in _images(2)])
    with torch.inference_mode():
        hidden = encoder.model(pixel_values=batch).last_hidden_state
    assert hidden.shape[1] == 1 + 4 + (28 // 14) ** 2
    expected = torch.nn.functional.normalize(hidden[:, 5:].mean(dim=1), dim=-1).numpy()
    np.testing.assert_allclose(encoder.encode(batch), expected, atol=1e-6)
    cls = load_encoder("c", dataclasses.replace(params, pooling="cls"))
    np.testing.assert_allclose(cls.encode(batch), torch.nn.functional.normalize(hidden[:, 0], dim=-1).numpy(), atol=1e-6)


def test_open_clip_tag_facts_are_applied_both_ways():
    from pipeline.embedding.encoders import _tag_model_facts

    assert _tag_model_facts({"quick_gelu": True}) == {"force_quick_gelu": True}
    assert _tag_model_facts({"quick_gelu": False}) == {"quick_gelu": False}
    assert _tag_model_facts({"mean": (0.5,) * 3}) == {}


def test_sdpa_attention_equals_multihead_attention_and_refuses_a_boolean_mask():
    import pytest
    import torch

    from pipeline.embedding.encoders import _sdpa_self_attention

    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(32, 4, batch_first=True).eval()
    x = torch.randn(2, 5, 32)
    fast = _sdpa_self_attention(mha)
    with torch.no_grad():
        assert torch.allclose(fast(x)[0], mha(x, x, x, need_weights=False)[0], atol=1e-6)
        with pytest.raises(NotImplementedError, match="unmasked"):
            fast(x, attn_mask=torch.zeros(5, 5, dtype=torch.bool))
