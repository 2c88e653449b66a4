"""Feature encoders on tiny random models built from configs: pooled vectors equal the embed stage's encoders',
patch tokens equal the ones open_clip's and transformers' own forward passes give at the same layers."""

import dataclasses
import io

import numpy as np
import pytest
from PIL import Image

from pipeline.diagnostics import features, separation
from pipeline.diagnostics.records import BY_PATCH
from pipeline.embedding.encoders import Dinov2Encoder, OpenClipEncoder
from pipeline.images.decode import decode
from pipeline.params import VlmParams
from pipeline.vlm.backends import CachedBackend, OpenAIBackend, TransformersBackend
from pipeline.vlm.pairs import EvalPair
from tests.conftest import TINY_CLIP_TEXT_CONFIG, TINY_DINO_CONFIG
from tests.helpers.params import demo_params
from tests.helpers.tiny_vlm import build_tiny_vlm

CLIP = demo_params("embed.clip", model="tiny-clip-text", weights="random", image_size=32, config=TINY_CLIP_TEXT_CONFIG,
                   seed=0, dtype="fp32", device="cpu")
DINO = demo_params("embed.dino", model="tiny-dino", weights="random", image_size=32, config=TINY_DINO_CONFIG,
                   pooling="cls", seed=0, dtype="fp32", device="cpu")
PATCHES = (32 // 8) ** 2  # both tiny towers: 32 px images, 8 px patches


def png(seed, size=(40, 50)):
    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(out, format="PNG")
    return out.getvalue()


IMAGES = [png(0), png(1, (64, 30)), png(2)]


def pixels(transform, images):
    import torch

    return torch.stack([transform(decode(i).image) for i in images])


def test_embed_encoders_load_as_feature_encoders_and_refuse_precomputed_vectors():
    clip, dino = features.feature_encoders(CLIP, DINO)
    assert clip.name == "open_clip:tiny-clip-text:random" and clip.random_init is True
    assert dino.name == "dinov2:tiny-dino:random" and dino.random_init is True
    with pytest.raises(features.FeatureError, match=r"embed\.clip .*clip_retrieval"):
        features.feature_encoders(dataclasses.replace(CLIP, kind="clip_retrieval"), DINO)


def test_open_clip_pooled_equals_the_embed_encoder_and_patches_equal_open_clip_blocks():
    import torch

    encoder = features.OpenClipFeatures(OpenClipEncoder("clip", CLIP))
    got = encoder.features(IMAGES)
    embed = OpenClipEncoder("clip", CLIP)  # built apart, as the embed stage builds it (same seed, same weights)
    batch = pixels(embed.preprocess, IMAGES)
    np.testing.assert_allclose(got.pooled, embed.encode(batch), atol=1e-6)
    assert got.pooled.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got.pooled, axis=1), 1.0, atol=1e-5)

    # open_clip's own modules, step by step: the residual stream after block 1 (middle of 2) and block 2 (last)
    visual = embed.model.visual
    with torch.inference_mode():
        x = visual._embeds(batch)
        after = []
        for block in visual.transformer.resblocks:
            x = block(x)
            after.append(x[:, 1:].numpy())  # the class token dropped
    assert got.patches_last.shape == (3, PATCHES, 64) and got.patches_middle.shape == (3, PATCHES, 64)
    np.testing.assert_allclose(got.patches_last, after[1], atol=1e-5)
    np.testing.assert_allclose(got.patches_middle, after[0], atol=1e-5)
    assert not np.allclose(got.patches_last, got.patches_middle)

    statements = ["a photo of a red square", "a photo of a blue circle"]
    vectors = encoder.texts(statements)
    with torch.inference_mode():
        expected = torch.nn.functional.normalize(embed.model.encode_text(embed.tokenizer()(statements)), dim=-1).numpy()
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    assert vectors.shape == (2, got.pooled.shape[1])


@pytest.mark.parametrize("config, registers", [
    (DINO, 0),
    (demo_params("embed.dino", model="facebook/dinov2-with-registers-small", weights="random", image_size=28,
                 pooling="mean", config={"num_hidden_layers": 2}, dtype="fp32", device="cpu"), 4),
], ids=["dinov2", "dinov2-with-registers"])
def test_dinov2_pooled_equals_the_embed_encoder_and_patches_equal_hidden_states(config, registers):
    import torch

    (_, encoder) = features.feature_encoders(CLIP, config)
    got = encoder.features(IMAGES)
    embed = Dinov2Encoder("dino", config)
    batch = pixels(embed.preprocess, IMAGES)
    np.testing.assert_allclose(got.pooled, embed.encode(batch), atol=1e-6)
    with torch.inference_mode():
        hidden = embed.model(pixel_values=batch, output_hidden_states=True).hidden_states  # [embeddings, block 1, 2]
    first = 1 + registers  # CLS, then the registers, then the patches
    patches = (config.image_size // embed.model.config.patch_size) ** 2
    assert got.patches_last.shape == (3, patches, embed.dim)
    np.testing.assert_allclose(got.patches_last, hidden[2][:, first:].numpy(), atol=1e-5)
    np.testing.assert_allclose(got.patches_middle, hidden[1][:, first:].numpy(), atol=1e-5)
    assert not np.allclose(got.patches_last, got.patches_middle)
    assert encoder.texts(["a photo of x"]) is None


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory):
    folder = build_tiny_vlm(tmp_path_factory.mktemp("tiny-vlm"))
    return TransformersBackend(VlmParams(backend="transformers", model=str(folder), max_new_tokens=4))


def test_tiny_llava_vision_tower_behind_its_cache(tiny_llava, tmp_path):
    import torch

    tower = features.vlm_tower(CachedBackend(tiny_llava, tmp_path / "cache.jsonl"))
    assert tower is not None and tower.name == f"{tiny_llava.name}:{features.VISION_TOWER}"
    got = tower.features(IMAGES)
    batch = tiny_llava.processor.image_processor(images=[decode(i).image for i in IMAGES], return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        hidden = tiny_llava.model.model.vision_tower(batch, output_hidden_states=True).hidden_states
    read = tiny_llava.model.config.vision_feature_layer  # the layer the projector reads (-1 in the tiny model)
    assert got.patches_last.shape == (3, PATCHES, 32) and got.patches_middle.shape == (3, PATCHES, 32)
    np.testing.assert_allclose(got.patches_last, hidden[read][:, 1:].numpy(), atol=1e-5)
    np.testing.assert_allclose(got.patches_middle, hidden[1][:, 1:].numpy(), atol=1e-5)
    mean = hidden[read][:, 1:].mean(dim=1)
    np.testing.assert_allclose(got.pooled, torch.nn.functional.normalize(mean, dim=-1).numpy(), atol=1e-5)
    assert tower.texts(["a photo of x"]) is None

    # the verdicts on real features: identical images are not separated (patch separability 0)
    same = EvalPair("same", "Orientation and Direction", "q", ("l", "r"), ("(a)", "(b)"), (IMAGES[0], IMAGES[0]))
    other = EvalPair("other", "Orientation and Direction", "q", ("l", "r"), ("(a)", "(b)"), (IMAGES[1], IMAGES[2]))
    params = dataclasses.replace(demo_params("diagnose.encoders"), separable_min=1e-3, batch_size=2)
    got_same, got_other = separation.encoder_pairs([same, other], tower, params)
    assert got_same.pooled_cosine == pytest.approx(1.0, abs=1e-5)
    assert got_same.patch_separability_last == pytest.approx(0.0, abs=1e-5)
    assert (got_same.separates, got_same.separates_by) == (False, BY_PATCH)
    assert got_other.patch_separability_last > 1e-3 and got_other.separates is True


def test_openai_endpoint_has_no_local_tower():
    endpoint = OpenAIBackend(VlmParams(backend="openai", model="m", max_new_tokens=4, url="http://127.0.0.1:9/v1",
                                      api_key_env="KEY", timeout=1.0))
    assert features.vlm_tower(endpoint) is None


def test_open_clip_encoder_verdicts_with_statements():
    """Real open_clip features through the whole verdict: the statement test runs in both directions."""
    encoder = features.OpenClipFeatures(OpenClipEncoder("clip", CLIP))
    pairs = [EvalPair(f"p{k}", "State and Condition", "q", ("open", "closed"), ("(a)", "(b)"), (IMAGES[k], IMAGES[k + 1]),
                      ("the door is open", "the door is closed")) for k in range(2)]
    params = dataclasses.replace(demo_params("diagnose.encoders"), batch_size=4)
    got = separation.encoder_pairs(pairs, encoder, params)
    assert [v.pair_id for v in got] == ["p0", "p1"]
    assert all(isinstance(v.statement_forward, bool) and isinstance(v.statement_reverse, bool) for v in got)
    assert all(v.probe_right is None and v.probe_train_pairs == 1 for v in got)  # one other pair: too few
    assert all(0 < v.patch_separability_last <= 2 and 0 < v.patch_separability_middle <= 2 for v in got)


def test_a_text_tower_smaller_than_its_tokenizer_is_named_not_a_traceback():
    from pipeline.diagnostics.features import FeatureError, OpenClipFeatures
    from tests.conftest import TINY_CLIP_CONFIG  # a 1000-token text tower: open_clip's tokenizer emits ids to 49407

    encoder = OpenClipFeatures(OpenClipEncoder("clip", demo_params("embed.clip", model="tiny-clip", weights="random",
                                                                   image_size=32, config=TINY_CLIP_CONFIG, seed=0)))
    with pytest.raises(FeatureError, match=r"token ids up to \d+ but its text tower has 1000"):
        encoder.texts(["a photo of a cat"])
