"""What an encoder sees in an image, for the encoder diagnostics: its pooled embedding, its patch tokens at
the last and a middle layer, and (where it has a text tower) its embedding of a text.

A `FeatureEncoder` turns encoded images (bytes, decoded by the canonical `decode` as the embed stage does)
into `Features`. Three kinds:

* open_clip (`OpenClipFeatures`, wrapping the embed stage's `OpenClipEncoder`): pooled is exactly the embed
  encoder's vector (the same call, `encode`), with forward hooks on the vision transformer's residual blocks
  collecting the patch tokens on the way; its text tower embeds statements. open_clip towers that are no
  vision transformer (ResNet, timm) give no patch tokens.
* DINOv2 (`Dinov2Features`, wrapping the embed stage's `Dinov2Encoder`): pooled is the embed encoder's
  vector (CLS or mean of patches, as `embed.dino.pooling` says), hooks on its layers give the patch tokens
  (CLS and register tokens dropped); no text tower.
* a local transformers VLM's own vision tower (`VisionTowerFeatures`, from a `TransformersBackend`): the
  model's image processor and its `vision_tower`; the "last" layer is the one the VLM's projector reads
  (`vision_feature_layer`), and pooled is the mean of that layer's patch tokens, since the VLM never sees
  the tower's own pooled output; no text tower.

Layers: the "last" patch tokens are the residual stream after the final block (before any final norm);
the "middle" ones the residual stream after block `max(1, depth // 2)` (1-based), so a 24-block ViT-L
gives block 12 and a 2-block test model block 1. Patch tokens are the grid's tokens only (the class
token and registers, which come first, are dropped); both images of a pair go through the same
preprocessing, so token j of one image covers the same place as token j of the other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from pipeline.core.errors import ClipblindError
from pipeline.embedding.encoders import Dinov2Encoder, OpenClipEncoder, load_encoders
from pipeline.images.decode import decode
from pipeline.params import EncoderParams
from pipeline.vlm.backends import Backend, CachedBackend, TransformersBackend

VISION_TOWER = "vision_tower"  # a VLM tower's name: `<backend name>:vision_tower`


class FeatureError(ClipblindError, ValueError):
    """An encoder cannot give the features the diagnostics need."""


@dataclass(frozen=True)
class Features:
    """An encoder's view of n images."""

    pooled: np.ndarray  # (n, d) float32, L2-normalised
    patches_last: np.ndarray | None  # (n, p, d) float32: the p patch tokens after the last block (None: no patch tokens)
    patches_middle: np.ndarray | None  # (n, p, d') float32: the same after the middle block


class FeatureEncoder(Protocol):
    """What the encoder diagnostics need from an encoder."""

    name: str
    random_init: bool

    def features(self, images: Sequence[bytes]) -> Features:
        """Pooled embeddings and patch tokens of encoded images (canonical decode first)."""

    def texts(self, texts: Sequence[str]) -> np.ndarray | None:
        """L2-normalised text embeddings (n, d) in the pooled space; None when the encoder has no text tower."""


def middle_block(depth: int) -> int:
    """The 0-based index of the middle block of `depth`: the residual stream after block max(1, depth // 2)."""
    return max(1, depth // 2) - 1


def _float32(tensor: Any) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().float().cpu().numpy(), dtype=np.float32)


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.maximum(norms, np.finfo(np.float32).tiny)).astype(np.float32)


@contextmanager
def _patch_hooks(blocks: Sequence[Any], patches: Callable[[], int], batch_first: bool) -> Iterator[dict[str, np.ndarray]]:
    """Forward hooks on the last and the middle of `blocks` that keep each one's output patch tokens (the last
    `patches()` tokens of its sequence) under "last" and "middle" while the context is open."""
    caught: dict[str, np.ndarray] = {}

    def keep(key: str) -> Callable[..., None]:
        def hook(module: Any, args: Any, output: Any) -> None:
            hidden = output[0] if isinstance(output, (tuple, list)) else output
            if not batch_first:
                hidden = hidden.transpose(0, 1)
            caught[key] = _float32(hidden[:, hidden.shape[1] - patches():])
        return hook

    handles = [blocks[-1].register_forward_hook(keep("last")),
               blocks[middle_block(len(blocks))].register_forward_hook(keep("middle"))]
    try:
        yield caught
    finally:
        for handle in handles:
            handle.remove()


def _pixels(transform: Callable[[Any], Any], images: Sequence[bytes]) -> Any:
    import torch

    return torch.stack([transform(decode(image).image) for image in images])


class OpenClipFeatures:
    """An open_clip model's image and text towers (the embed stage's `OpenClipEncoder`)."""

    def __init__(self, encoder: OpenClipEncoder) -> None:
        self.encoder = encoder
        self.name = f"open_clip:{encoder.params.model}:{encoder.weights_source}"
        self.random_init = encoder.random_init
        visual = encoder.model.visual
        transformer = getattr(visual, "transformer", None)
        grid = getattr(visual, "grid_size", None)
        # a vision transformer's blocks; other towers (ResNet, timm) give no patch tokens
        self.blocks: Sequence[Any] = list(getattr(transformer, "resblocks", [])) if grid is not None else []
        self.batch_first = bool(getattr(transformer, "batch_first", True))
        self.patches = int(grid[0] * grid[1]) if grid is not None else 0
        self._tokenizer: Any = None

    def features(self, images: Sequence[bytes]) -> Features:
        """The embed encoder's vectors, and the vision transformer's patch tokens (None for other towers)."""
        batch = _pixels(self.encoder.preprocess, images)
        if not self.blocks:
            return Features(self.encoder.encode(batch), None, None)
        with _patch_hooks(self.blocks, lambda: self.patches, self.batch_first) as caught:
            pooled = self.encoder.encode(batch)
        return Features(pooled, caught["last"], caught["middle"])

    def texts(self, texts: Sequence[str]) -> np.ndarray | None:
        """L2-normalised embeddings from the text tower, tokenized by the model's own tokenizer."""
        import torch

        if self._tokenizer is None:
            self._tokenizer = self.encoder.tokenizer()
        tokens = self._tokenizer(list(texts)).to(self.encoder.runner.device)
        vocab = getattr(self.encoder.model, "vocab_size", None)
        if vocab is not None and tokens.numel() and int(tokens.max()) >= vocab:
            raise FeatureError(f"{self.name}: its tokenizer gives token ids up to {int(tokens.max())} but its text tower "
                               f"has {vocab}: the model's config and tokenizer do not match (text_cfg.vocab_size must "
                               f"be at least {int(tokens.max()) + 1})")
        with torch.inference_mode():
            return _unit(_float32(self.encoder.model.encode_text(tokens)))


class Dinov2Features:
    """DINOv2 from transformers (the embed stage's `Dinov2Encoder`); no text tower."""

    def __init__(self, encoder: Dinov2Encoder) -> None:
        self.encoder = encoder
        self.name = f"dinov2:{encoder.params.model}:{encoder.weights_source}"
        self.random_init = encoder.random_init
        self.blocks: Sequence[Any] = list(encoder.model.encoder.layer)
        self.patch_size = int(encoder.model.config.patch_size)

    def features(self, images: Sequence[bytes]) -> Features:
        """The embed encoder's vectors, and the patch tokens of its last and middle layers (CLS, registers dropped)."""
        batch = _pixels(self.encoder.preprocess, images)
        patches = (batch.shape[-2] // self.patch_size) * (batch.shape[-1] // self.patch_size)
        with _patch_hooks(self.blocks, lambda: patches, batch_first=True) as caught:
            pooled = self.encoder.encode(batch)
        return Features(pooled, caught["last"], caught["middle"])

    def texts(self, texts: Sequence[str]) -> np.ndarray | None:
        """None: DINOv2 has no text tower."""
        return None


def _tower_of(model: Any) -> Any:
    """A VLM's vision tower: `vision_tower` (LLaVA-family) or `vision_model`, on the model or its inner `model`."""
    for holder in (model, getattr(model, "model", None)):
        for attribute in ("vision_tower", "vision_model"):
            tower = getattr(holder, attribute, None) if holder is not None else None
            if tower is not None and hasattr(getattr(tower, "config", None), "patch_size"):
                return tower
    return None


class VisionTowerFeatures:
    """A local transformers VLM's own vision tower, fed by the model's own image processor; no text tower."""

    def __init__(self, backend: TransformersBackend) -> None:
        model = backend.model
        self.tower = _tower_of(model)
        if self.tower is None:
            raise FeatureError(
                f"{backend.name}: no vision tower found ({type(model).__name__} has no `vision_tower` or "
                "`vision_model` with a patch size, on itself or on `.model`); the encoder diagnostics read "
                "LLaVA-style towers: score this model without them, or use a LLaVA-family model"
            )
        self.name = f"{backend.name}:{VISION_TOWER}"
        self.random_init = False  # loaded from the model's directory, as the backend answers with it
        self.image_processor = backend.processor.image_processor
        read = getattr(model.config, "vision_feature_layer", -1)
        self.read_layer = int(read[-1] if isinstance(read, (list, tuple)) else read)  # what the projector reads
        self.patch_size = int(self.tower.config.patch_size)

    def features(self, images: Sequence[bytes]) -> Features:
        """The tower's patch tokens at the layer the projector reads and at its middle layer; pooled is the mean
        of the former."""
        import torch

        pixels = self.image_processor(images=[decode(i).image for i in images], return_tensors="pt")["pixel_values"]
        if pixels.ndim == 5:  # tiled processors (LLaVA-NeXT's any-resolution): the first tile is the whole image
            pixels = pixels[:, 0]
        parameter = next(self.tower.parameters())
        with torch.inference_mode():
            hidden = self.tower(pixels.to(device=parameter.device, dtype=parameter.dtype),
                                output_hidden_states=True, return_dict=True).hidden_states
        patches = (pixels.shape[-2] // self.patch_size) * (pixels.shape[-1] // self.patch_size)
        depth = len(hidden) - 1  # hidden[0] is the embeddings, hidden[k] the stream after block k
        last = _float32(hidden[self.read_layer][:, -patches:])
        middle = _float32(hidden[middle_block(depth) + 1][:, -patches:])
        return Features(_unit(last.mean(axis=1)), last, middle)

    def texts(self, texts: Sequence[str]) -> np.ndarray | None:
        """None: a VLM's vision tower has no text tower of its own."""
        return None


def _check_kind(where: str, params: EncoderParams, kind: str) -> None:
    if params.kind != kind:
        raise FeatureError(
            f"{where} ({params.model!r}) has kind {params.kind!r}: the encoder diagnostics run the model itself "
            f"(its patch tokens), so {where} must be a {kind} model; with precomputed vectors (clip_retrieval) name "
            "the open_clip model that made them"
        )


def feature_encoders(clip: EncoderParams, dino: EncoderParams) -> list[FeatureEncoder]:
    """The embed stage's CLIP and DINOv2, loaded as the embed stage loads them (random weights stay marked
    `random_init`); one error names every encoder whose weights cannot be had."""
    _check_kind("embed.clip", clip, "open_clip")
    _check_kind("embed.dino", dino, "dinov2")
    built = load_encoders({"clip": clip, "dino": dino})
    clip_encoder, dino_encoder = built["clip"], built["dino"]
    assert isinstance(clip_encoder, OpenClipEncoder) and isinstance(dino_encoder, Dinov2Encoder)
    return [OpenClipFeatures(clip_encoder), Dinov2Features(dino_encoder)]


def vlm_tower(backend: Backend) -> FeatureEncoder | None:
    """The vision tower of a local transformers VLM (behind its reply cache); None for backends without one
    on this machine (an OpenAI-compatible endpoint)."""
    while isinstance(backend, CachedBackend):
        backend = backend.backend
    if not isinstance(backend, TransformersBackend):
        return None
    return VisionTowerFeatures(backend)
