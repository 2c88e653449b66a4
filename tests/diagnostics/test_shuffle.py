"""Pixel shuffles on generated images; token shuffles on the tiny random LLaVA built at test time."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipeline.diagnostics.shuffle import (
    ShuffleError,
    shuffle_tiles,
    tile_permutation,
    token_permutation,
    token_shuffle,
    token_shuffle_supported,
)
from pipeline.params import VlmParams
from pipeline.vlm.backends import CachedBackend, OpenAIBackend, TransformersBackend
from tests.helpers.tiny_vlm import build_tiny_vlm


def png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(out, format="PNG")
    return out.getvalue()


def pixels_of(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def tile_colour(t: int) -> tuple[int, int, int]:
    return (t * 4 % 256, 255 - t * 3, (t * 37 + 11) % 256)  # distinct for t < 64


def test_tile_permutation_is_numpy_s_seeded_permutation():
    assert tile_permutation(4, 7) == list(np.random.default_rng(7).permutation(16))
    assert sorted(tile_permutation(8, 3)) == list(range(64))
    assert tile_permutation(4, 0) != tile_permutation(4, 1)
    # never the identity: where numpy's first draw of 4 places is (seed 1), the generator's next draw is taken
    identity = next(s for s in range(100) if list(np.random.default_rng(s).permutation(4)) == [0, 1, 2, 3])
    rng = np.random.default_rng(identity)
    rng.permutation(4)
    assert tile_permutation(2, identity) == list(rng.permutation(4)) != [0, 1, 2, 3]
    assert all(tile_permutation(2, s) != [0, 1, 2, 3] for s in range(200))
    assert token_permutation(576, 5) == list(np.random.default_rng(5).permutation(576))


@pytest.mark.parametrize(("grid", "width", "height"), [(2, 20, 12), (4, 42, 31), (8, 64, 64), (8, 71, 50)])
def test_output_tiles_are_the_input_tiles_in_tile_permutation_order(grid, width, height):
    tw, th = width // grid, height // grid
    pixels = np.full((height, width, 3), (9, 9, 9), dtype=np.uint8)  # the margin a crop removes stays this grey
    for t in range(grid * grid):
        row, col = divmod(t, grid)
        pixels[row * th:(row + 1) * th, col * tw:(col + 1) * tw] = tile_colour(t)
    out = pixels_of(shuffle_tiles(png(pixels), grid, seed=3))
    # cropped right and bottom to a multiple of the grid: at most grid - 1 pixels each way
    assert out.shape == (th * grid, tw * grid, 3)
    assert width - out.shape[1] < grid and height - out.shape[0] < grid
    order = tile_permutation(grid, 3)
    for i in range(grid * grid):
        row, col = divmod(i, grid)
        tile = out[row * th:(row + 1) * th, col * tw:(col + 1) * tw].reshape(-1, 3)
        assert (tile == tile_colour(order[i])).all(), f"output tile {i} is not input tile {order[i]}"


def test_colour_histogram_is_kept_within_the_crop():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(29, 37, 3), dtype=np.uint8)
    out = pixels_of(shuffle_tiles(png(pixels), 4, seed=1))
    kept = pixels[:28, :36]
    assert out.shape == kept.shape
    assert not (out == kept).all()
    assert sorted(map(tuple, out.reshape(-1, 3).tolist())) == sorted(map(tuple, kept.reshape(-1, 3).tolist()))


def test_same_input_gives_the_same_bytes_and_another_seed_other_bytes():
    rng = np.random.default_rng(1)
    image = png(rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8))
    assert shuffle_tiles(image, 4, 2) == shuffle_tiles(image, 4, 2)
    assert shuffle_tiles(image, 4, 2) != shuffle_tiles(image, 4, 9)
    assert shuffle_tiles(image, 4, 2)[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_canonical_decode_is_shuffled_upright():
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, :20] = (255, 0, 0)  # left half red, right half black, stored sideways with EXIF orientation 6
    stored = Image.fromarray(pixels).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    out = io.BytesIO()
    stored.save(out, format="JPEG", quality=95, exif=exif)
    shuffled = pixels_of(shuffle_tiles(out.getvalue(), 2, seed=0))
    assert shuffled.shape == (20, 40, 3)  # upright: wider than high, as displayed


def test_an_image_smaller_than_its_grid_or_not_an_image_is_refused_with_the_fix():
    with pytest.raises(ShuffleError, match=r"3x5 image cannot be cut into 4x4 tiles.*diagnose.shuffle.grids"):
        shuffle_tiles(png(np.zeros((5, 3, 3))), 4, 0)
    with pytest.raises(ShuffleError, match="does not decode"):
        shuffle_tiles(b"not an image", 2, 0)


class Scripted:
    name = "scripted"

    def ask(self, prompt: str, image: bytes | None) -> str:
        return "(a)"


def test_token_shuffle_needs_a_local_model_with_a_projector(tmp_path):
    endpoint = OpenAIBackend(VlmParams(backend="openai", model="m", max_new_tokens=4, url="http://127.0.0.1:9/v1",
                                      api_key_env="CLIPBLIND_TEST_KEY", timeout=5))
    for backend in (Scripted(), endpoint, CachedBackend(endpoint, tmp_path / "cache.jsonl")):
        assert not token_shuffle_supported(backend)
        with pytest.raises(ShuffleError, match="token_level to false"):
            with token_shuffle(backend, 0):
                pass


# ---------------------------------------------------------------- the tiny LLaVA


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = build_tiny_vlm(tmp_path_factory.mktemp("tiny-vlm"))
    return TransformersBackend(VlmParams(backend="transformers", model=str(folder), max_new_tokens=4))


def forward(backend: TransformersBackend, image: bytes):
    """The model's logits on one prompt about `image`, and the embeddings its language model was given."""
    import torch

    from pipeline.images.decode import decode

    seen = {}

    def capture(module, args, kwargs):
        seen["embeds"] = kwargs["inputs_embeds"].detach().clone()

    content = [{"type": "image"}, {"type": "text", "text": "Is the arrow pointing left or right?"}]
    text = backend.processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    inputs = backend.processor(images=[decode(image).image], text=text, return_tensors="pt")
    handle = backend.model.model.language_model.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        with torch.inference_mode():
            logits = backend.model(**inputs).logits
    finally:
        handle.remove()
    image_positions = inputs["input_ids"][0] == backend.model.config.image_token_id
    return logits, seen["embeds"][0, image_positions]


def test_token_shuffle_permutes_the_projector_output_the_language_model_sees_and_is_removed(tiny, tmp_path):
    import torch

    assert token_shuffle_supported(tiny)
    assert token_shuffle_supported(CachedBackend(tiny, tmp_path / "cache.jsonl"))
    image = png(np.random.default_rng(2).integers(0, 256, size=(40, 48, 3)))
    plain_logits, plain_tokens = forward(tiny, image)
    assert plain_tokens.shape[0] == 16  # 32 px / 8 px patches = 4 x 4 visual tokens
    with token_shuffle(tiny, seed=4):
        shuffled_logits, shuffled_tokens = forward(tiny, image)
    order = token_permutation(16, 4)
    assert order != list(range(16))
    assert torch.equal(shuffled_tokens, plain_tokens[order])
    assert not torch.allclose(shuffled_logits, plain_logits)
    after_logits, after_tokens = forward(tiny, image)
    assert torch.equal(after_tokens, plain_tokens) and torch.equal(after_logits, plain_logits)

    with pytest.raises(RuntimeError, match="inside"):
        with token_shuffle(tiny, seed=4):
            raise RuntimeError("inside")
    assert not tiny.model.model.multi_modal_projector._forward_hooks
    assert torch.equal(forward(tiny, image)[0], plain_logits)
