"""Pixel and visual-token shuffles: the same image with its spatial layout destroyed.

* `shuffle_tiles(image, grid, seed)`: the canonical decode of the image cut into a grid x grid lattice of
  tiles, the tiles permuted by `tile_permutation(grid, seed)`, PNG bytes. Works with any model, API models
  included.
* `token_shuffle(backend, seed)`: while the context is open, a local transformers VLM of the LLaVA family
  sees its visual tokens permuted after the multi-modal projector, i.e. in the order the language model
  reads them (`token_permutation`). Works only where the model's code can be hooked
  (`token_shuffle_supported`).

Every permutation is numpy's `default_rng(seed).permutation(n)`, so a shuffle is reproducible from its
seed alone.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from pipeline.core.errors import ClipblindError
from pipeline.images.decode import DecodeError, decode
from pipeline.vlm.backends import Backend, CachedBackend, TransformersBackend

# Where LLaVA-family models keep the projector from vision features to language-model embeddings:
# `LlavaForConditionalGeneration.model.multi_modal_projector` (transformers >= 4.52) or on the model itself
# (older layouts); any other module of this name is found by a walk over the model's modules.
PROJECTOR = "multi_modal_projector"


class ShuffleError(ClipblindError, ValueError):
    """An image or a model that a shuffle cannot be applied to."""


def _permutation(count: int, seed: int) -> list[int]:
    """numpy's seeded permutation of `count` places, drawn again (same generator) while it leaves every place as it
    was: a trial whose "shuffle" is the identity would ask the unshuffled question once more (2 tiles per side
    draw it once in 24)."""
    rng = np.random.default_rng(seed)
    order = [int(i) for i in rng.permutation(count)]
    while count > 1 and order == sorted(order):
        order = [int(i) for i in rng.permutation(count)]
    return order


def tile_permutation(grid: int, seed: int) -> list[int]:
    """The tile order of a shuffle: output tile i (row-major) is input tile `tile_permutation(grid, seed)[i]`."""
    if grid < 1:
        raise ShuffleError(f"a shuffle grid has at least 1 tile per side, got {grid}: set diagnose.shuffle.grids to sizes >= 2")
    return _permutation(grid * grid, seed)


def token_permutation(tokens: int, seed: int) -> list[int]:
    """The visual-token order of a token shuffle: output token i is input token `token_permutation(tokens, seed)[i]`."""
    return _permutation(tokens, seed)


def shuffle_tiles(image: bytes, grid: int, seed: int) -> bytes:
    """The image's tiles permuted, as PNG bytes; the same image, grid and seed always give the same bytes.

    The image is the canonical decode (upright RGB). Where its width or height is not a multiple of
    `grid`, the right and bottom edges are cropped to the nearest multiple first (at most grid - 1 pixels
    each), so every tile has the same size; output tile i (row-major) is input tile
    `tile_permutation(grid, seed)[i]`.
    """
    order = tile_permutation(grid, seed)
    try:
        pixels = np.asarray(decode(image).image.convert("RGB"))
    except DecodeError as err:
        raise ShuffleError(f"image does not decode ({err}): the shuffle needs the release's image bytes") from err
    height, width = pixels.shape[0] - pixels.shape[0] % grid, pixels.shape[1] - pixels.shape[1] % grid
    if height == 0 or width == 0:
        raise ShuffleError(f"a {pixels.shape[1]}x{pixels.shape[0]} image cannot be cut into {grid}x{grid} tiles: "
                           f"use grids no larger than its smaller side (diagnose.shuffle.grids)")
    th, tw = height // grid, width // grid
    # (rows, tile_h, cols, tile_w, rgb) → (tile, tile_h, tile_w, rgb), row-major tile order
    tiles = pixels[:height, :width].reshape(grid, th, grid, tw, 3).transpose(0, 2, 1, 3, 4).reshape(grid * grid, th, tw, 3)
    shuffled = tiles[order].reshape(grid, grid, th, tw, 3).transpose(0, 2, 1, 3, 4)
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(shuffled.reshape(height, width, 3))).save(out, format="PNG")
    return out.getvalue()


def _projector(backend: Backend) -> Any | None:
    """The multi-modal projector module of a local transformers backend (a CachedBackend is unwrapped), or None."""
    inner = backend.backend if isinstance(backend, CachedBackend) else backend
    if not isinstance(inner, TransformersBackend):
        return None
    model = inner.model
    for owner in (getattr(model, "model", None), model):
        module = getattr(owner, PROJECTOR, None) if owner is not None else None
        if module is not None:
            return module
    found = sorted((name for name, _ in model.named_modules() if name.rsplit(".", 1)[-1] == PROJECTOR), key=len)
    return model.get_submodule(found[0]) if found else None


def token_shuffle_supported(backend: Backend) -> bool:
    """Whether `backend` is a local transformers VLM whose visual tokens pass a multi-modal projector (LLaVA family)."""
    return _projector(backend) is not None


@contextmanager
def token_shuffle(backend: Backend, seed: int) -> Iterator[None]:
    """Within the context the model's projector output has its visual tokens permuted (`token_permutation`).

    The projector's output is (images, tokens, hidden) (or (tokens, hidden)): the token axis, second to
    last, is permuted the same way for every image. The hook is removed when the context ends, also on an
    error.
    """
    projector = _projector(backend)
    if projector is None:
        raise ShuffleError(f"model {backend.name!r} has no multi-modal projector to hook: the token shuffle runs on "
                           "local transformers VLMs of the LLaVA family; set diagnose.shuffle.token_level to false")

    def permute(module: Any, inputs: Any, output: Any) -> Any:
        order = token_permutation(int(output.shape[-2]), seed)
        return output[..., order, :]

    handle = projector.register_forward_hook(permute)
    try:
        yield
    finally:
        handle.remove()
