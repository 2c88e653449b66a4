"""Image encoders behind one small interface, in an explicit registry.

An `Encoder` has a name, an output dim, `preprocess` (canonical RGB image → tensor) and
`encode` (batch → L2-normalised float32 vectors), and `describe()`: everything needed to
say exactly what produced a vector (model, weights and the sha256 of the file loaded, where
the architecture came from, resolution, preprocessing, pooling, attention, dtype, library
versions). Two kinds are registered:

* `open_clip`: `model` is an open_clip model name or `hf-hub:org/name`; `weights` a pretrained
  tag (e.g. `openai`), a local checkpoint file, `pretrained` (for `hf-hub:` models) or `random`.
  A tag applies every model fact its pretrained config carries (OpenAI's tags: QuickGELU) and its
  preprocessing; a checkpoint file follows `model` (name the `-quickgelu` variant to state it),
  except that OpenAI's own files (a TorchScript archive, or its state dict) are detected and
  built as the QuickGELU variant.
* `dinov2`: `model` is a hub id (`facebook/dinov2-large`, `facebook/dinov2-with-registers-large`)
  or a local directory saved with `save_pretrained`; `weights` is `pretrained` or `random`.
  Preprocessing comes from the checkpoint's own `preprocessor_config.json`, else DINOv2's
  documented defaults at `image_size`. Mean pooling averages the patch tokens only (never the
  CLS or register tokens).

Hub weights are looked up in the local Hugging Face cache first, then on the hub when it is
reachable. `dtype` is fp32, bf16, or auto (bf16 on CUDA and on CPUs with native bf16, else
fp32). On CPU the weights are cast to it; on CUDA they stay fp32 under autocast.

`random` must be asked for explicitly; weights that cannot be had raise `WeightsUnavailable`
within seconds, naming both fixes (`load_encoders` names every encoder that cannot be loaded).
There is no silent fallback to random weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar, cast

import numpy as np

from pipeline.core.errors import ClipblindError
from pipeline.core.hub import HUB_HOST, hub_reachable
from pipeline.params import EncoderParams

RANDOM = "random"
PRETRAINED = "pretrained"
HF_HUB_PREFIX = "hf-hub:"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Entries OpenAI's CLIP state dicts carry beside the weights (open_clip's checkpoint loader rejects them).
OPENAI_CHECKPOINT_EXTRAS = ("input_resolution", "context_length", "vocab_size")

# DINOv2 architectures by hub id, so `weights: random` can build a same-sized model offline.
# An architecture with `num_register_tokens` is DINOv2 with registers.
_DINOV2_SIZES: dict[str, dict[str, Any]] = {
    "small": {"hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6},
    "base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12},
    "large": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16},
    "giant": {"hidden_size": 1536, "num_hidden_layers": 40, "num_attention_heads": 24, "use_swiglu_ffn": True},
}
# Patch size 14 throughout, as the hub configs say (Dinov2WithRegistersConfig defaults to 16).
DINOV2_ARCHS: dict[str, dict[str, Any]] = {
    **{f"facebook/dinov2-{size}": {**arch, "patch_size": 14} for size, arch in _DINOV2_SIZES.items()},
    **{f"facebook/dinov2-with-registers-{size}": {**arch, "patch_size": 14, "num_register_tokens": 4}
       for size, arch in _DINOV2_SIZES.items()},
}
# DINOv2's documented evaluation preprocessing (the hub checkpoints' preprocessor_config.json at 224 px):
# resize the shortest edge to 256/224 of the crop (bicubic), centre crop, ImageNet mean/std.
DINOV2_RESIZE_RATIO = 256 / 224
BICUBIC = 3  # PIL.Image.Resampling.BICUBIC, as processor configs spell it

T = TypeVar("T")


class WeightsUnavailable(ClipblindError, RuntimeError):
    """The requested weights are neither on this machine nor downloadable now."""


class Encoder(Protocol):
    """What the embed stage needs from an image encoder."""

    name: str
    dim: int
    random_init: bool
    transform: Callable[[Any], Any]  # what `preprocess` applies: picklable without the model

    def preprocess(self, image: Any) -> Any:
        """Canonical RGB PIL image → a CHW float tensor."""

    def encode(self, batch: Any) -> np.ndarray:
        """A stacked batch of preprocessed tensors → L2-normalised float32 [n, dim]."""

    def describe(self) -> dict[str, Any]:
        """The exact model, weights, resolution, preprocessing, pooling, dtype and versions."""


def load_encoder(name: str, params: EncoderParams) -> Encoder:
    """Build the encoder `params` describe, from the registry."""
    return _factory(params)(name, params, resolve_weights(params))


def load_encoders(specs: Mapping[str, EncoderParams]) -> dict[str, Encoder]:
    """Build every named encoder; when weights are missing, one error names every encoder that lacks them.

    All weights are resolved (found in the cache, or fetched) before any model is built, so a run
    with two unavailable encoders fails in seconds with both named, not after building the first."""
    sources: dict[str, Any] = {}
    missing: list[str] = []
    for name, params in specs.items():
        _factory(params)
        try:
            sources[name] = resolve_weights(params)
        except WeightsUnavailable as err:
            missing.append(f"{name}: {err}")
    if missing:
        raise WeightsUnavailable(f"{len(missing)} of {len(specs)} encoders cannot be loaded:\n  " + "\n  ".join(missing))
    return {name: _factory(params)(name, params, sources[name]) for name, params in specs.items()}


def _factory(params: EncoderParams) -> Callable[[str, EncoderParams, Any], Encoder]:
    if params.kind == "clip_retrieval":
        raise ValueError(
            f"encoder kind clip_retrieval ({params.model!r}) means precomputed vectors: import them with "
            "`clipblind embed --clip-from DIR` instead of building a model"
        )
    try:
        return REGISTRY[params.kind]
    except KeyError:
        raise ValueError(f"unknown encoder kind {params.kind!r}; known: {sorted(REGISTRY)}") from None


def resolve_weights(params: EncoderParams) -> Any:
    """Where the encoder's architecture and weights come from, found (or fetched) without building the model.

    Raises `WeightsUnavailable` when they are neither on this machine nor downloadable now."""
    return RESOLVERS[params.kind](params)


@dataclass(frozen=True)
class WeightsFile:
    """A weights file that is loaded: how the description names it, and where it is."""

    name: str  # `<repo id>/<file>` for a hub cache file (stable when the cache moves), else the path given
    path: Path

    @cached_property
    def sha256(self) -> str:
        """The sha256 of its bytes (read once: a ViT-L file takes seconds)."""
        return sha256_file(self.path)

    def describe(self) -> dict[str, str]:
        """Its name and the sha256 of its bytes."""
        return {"name": self.name, "sha256": self.sha256}


def sha256_file(path: str | Path) -> str:
    """The sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _describe_files(files: tuple[WeightsFile, ...]) -> dict[str, str] | list[dict[str, str]] | None:
    if not files:
        return None
    return files[0].describe() if len(files) == 1 else [f.describe() for f in files]


@contextmanager
def _hub_offline() -> Iterator[None]:
    """Hugging Face hub look-ups answered from the local cache only, for the duration.

    The hub library reads HF_HUB_OFFLINE once, at import; without this, a cache look-up on a machine
    with no route to the hub retries for up to a minute and a half before giving up."""
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def _from_hub(what: str, param_hint: str, fetch: Callable[[], T]) -> tuple[T, bool]:
    """`fetch()` answered from the local Hugging Face cache, else from the hub when it is reachable; also
    whether the cache answered (then the model is built offline too)."""
    try:
        with _hub_offline():
            return fetch(), True
    except (OSError, RuntimeError, ValueError) as err:
        cache_miss: Exception = err
    if not hub_reachable():
        raise _unavailable(what, param_hint) from cache_miss
    return fetch(), False


def library_versions() -> dict[str, str]:
    """Versions of the libraries whose code shapes an embedding."""
    import PIL
    import torch

    versions = {"torch": torch.__version__, "pillow": PIL.__version__, "numpy": np.__version__}
    for module in ("open_clip", "transformers", "torchvision"):
        try:
            versions[module] = __import__(module).__version__
        except ImportError:
            pass
    return versions


def _unavailable(what: str, param_hint: str) -> WeightsUnavailable:
    from huggingface_hub import constants

    return WeightsUnavailable(
        f"cannot load {what}: the model hub ({HUB_HOST}) is not reachable and the weights are not "
        f"in the local Hugging Face cache ({constants.HF_HUB_CACHE}). Fix: connect this machine to the network "
        f"and rerun, or point {param_hint} at local weights. Set weights to 'random' only to test the pipeline."
    )


def _torch_dtype(dtype: str) -> Any:
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]


def cpu_has_native_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether the CPU computes bf16 natively (AVX512-BF16, AMX-BF16 or Arm BF16); elsewhere bf16 is emulated and slow."""
    try:
        flags = set(Path(cpuinfo).read_text().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def resolve_dtype(dtype: str, device: str) -> str:
    """The compute dtype `dtype` means on `device`: `auto` is bf16 on CUDA and on CPUs with native bf16."""
    if dtype != "auto":
        return dtype
    return "bf16" if device == "cuda" or cpu_has_native_bf16() else "fp32"


class _Runner:
    """Where and in which dtype a model runs: on CPU the weights are cast (autocast on CPU is
    ~15x slower with open_clip); on CUDA the weights stay fp32 under autocast, fed from pinned memory."""

    def __init__(self, params: EncoderParams) -> None:
        import torch

        if params.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("encoder device 'cuda' requested but torch sees no CUDA device; set device: cpu")
        self.device = params.device
        self.dtype = resolve_dtype(params.dtype, params.device)

    def place(self, model: Any) -> Any:
        """Move the model to its device (and, on CPU, to its compute dtype)."""
        if self.device == "cuda":
            return model.to("cuda")
        return model.to(_torch_dtype(self.dtype))

    def fuse_linears(self, model: Any) -> str:
        """On CPU in bf16, swap the model's linear layers for oneDNN ones (see `_onednn_linears`); return the kind used."""
        if self.device != "cpu" or self.dtype != "bf16":
            return "torch"
        return "onednn_fused" if _onednn_linears(model) else "torch"

    def run(self, forward: Callable[[Any], Any], batch: Any) -> Any:
        """`forward(batch)` on the device in the compute dtype, without autograd."""
        import torch

        with torch.inference_mode():
            if self.device == "cuda":
                batch = batch.pin_memory().to("cuda", non_blocking=True)
                with torch.autocast("cuda", dtype=_torch_dtype(self.dtype), enabled=self.dtype != "fp32"):
                    return forward(batch)
            return forward(batch.to(_torch_dtype(self.dtype)))


def _onednn_linears(model: Any) -> int:
    """Replace every bf16 `nn.Linear` of `model` by a oneDNN linear with a prepacked weight and the
    bias fused into the GEMM, and fuse the exact GELU that follows an MLP's first layer into it;
    return how many layers were replaced (0 where this torch build lacks the oneDNN ops).

    PyTorch's CPU `addmm` first copies the broadcast bias into the output and then accumulates the
    GEMM into it; in ViT-L that copy and the separate GELU pass cost a tenth of the forward."""
    import torch

    mkldnn = torch.ops.mkldnn
    if not (torch.backends.mkldnn.is_available() and hasattr(mkldnn, "_linear_pointwise")):
        return 0

    class OneDnnLinear(torch.nn.Module):
        def __init__(self, linear: torch.nn.Linear, post_op: str) -> None:
            super().__init__()
            self.out_features = linear.out_features
            self.packed = torch.nn.Parameter(mkldnn._reorder_linear_weight(linear.weight.detach(), None), requires_grad=False)
            self.bias = linear.bias
            self.post_op, self.algorithm = (post_op, "none") if post_op == "gelu" else ("none", "")

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            flat = x.reshape(-1, x.shape[-1])
            out = mkldnn._linear_pointwise(flat, self.packed, self.bias, self.post_op, [], self.algorithm)
            return out.reshape(*x.shape[:-1], self.out_features)

    def exact_gelu(module: Any) -> bool:
        if isinstance(module, torch.nn.GELU):
            return module.approximate == "none"
        return type(module).__name__ == "GELUActivation"  # transformers' exact (erf) GELU

    replaced = 0
    for parent in list(model.modules()):
        # The MLPs whose first linear is followed by a GELU: open_clip's Sequential(c_fc, gelu, c_proj)
        # and transformers' Dinov2MLP(fc1, activation_fn, fc2).
        mlp = {"c_fc": "gelu", "fc1": "activation_fn"}
        for name, child in list(parent.named_children()):
            if not isinstance(child, torch.nn.Linear) or child.weight.dtype != torch.bfloat16:
                continue
            act_name = mlp.get(name)
            fuse = act_name is not None and exact_gelu(getattr(parent, act_name, None))
            setattr(parent, name, OneDnnLinear(child, "gelu" if fuse else "none"))
            if fuse and act_name is not None:
                setattr(parent, act_name, torch.nn.Identity())
            replaced += 1
    return replaced


def _normalise(x: Any) -> np.ndarray:
    import torch

    x = x.float()
    x = torch.nn.functional.normalize(x, dim=-1)
    return x.detach().cpu().numpy().astype(np.float32)


@dataclass(frozen=True)
class OpenClipSource:
    """What open_clip is asked to build, resolved before building: the model, its weights, and why."""

    model_name: str  # a model name open_clip knows, or hf-hub:org/name
    pretrained: str | None  # open_clip's `pretrained`: a tag, a checkpoint path, or None
    label: str  # the description's `weights`: the tag, the path, `pretrained` or `random`
    architecture_from: str  # where the architecture's facts came from (see `describe`)
    weights_file: WeightsFile | None
    create_kwargs: dict[str, Any] = field(default_factory=dict)  # open_clip's force_* and loading flags
    pretrained_cfg: dict[str, Any] = field(default_factory=dict)  # the tag's cfg or the hub repo's config
    cached: bool = True  # every file came from this machine: build without touching the network
    openai_state_dict: bool = False  # weights loaded after building (OpenAI's extra entries removed)


def resolve_open_clip(params: EncoderParams) -> OpenClipSource:
    """The open_clip model and weights `params` name (files found in the cache or fetched, nothing built)."""
    import open_clip

    model_name = _register_open_clip_config(params.model, params.config) if params.config else params.model
    if model_name.startswith(HF_HUB_PREFIX):
        return _resolve_open_clip_hub(model_name, params.weights)
    if model_name not in open_clip.list_models():
        raise ValueError(f"unknown open_clip model {params.model!r}; see open_clip.list_models(), or give hf-hub:org/name")
    if params.weights == RANDOM:
        return OpenClipSource(model_name, None, RANDOM, "model param", None)
    if Path(params.weights).suffix in (".pt", ".pth", ".bin", ".safetensors", ".npz") or os.sep in params.weights:
        return _resolve_open_clip_file(model_name, Path(params.weights))
    tags = open_clip.list_pretrained_tags_by_model(model_name)
    if params.weights not in tags:
        raise ValueError(f"open_clip has no pretrained tag {params.weights!r} for {model_name}; tags: {tags}")
    cfg = open_clip.get_pretrained_cfg(model_name, params.weights)
    where = cfg.get("hf_hub") or cfg.get("url") or cfg.get("file", "")
    path, cached = _from_hub(
        f"open_clip {model_name}/{params.weights} ({where})",
        "the encoder's `weights` param (a checkpoint file)",
        lambda: open_clip.download_pretrained(cfg),
    )
    if not path:
        raise WeightsUnavailable(f"open_clip tag {params.weights!r} of {model_name} names no weights file: {cfg}")
    # open_clip's `hf_hub` is `org/repo/` (its default file) or `org/repo/file`; what it fetched is named by repo id
    name = f"{os.path.split(cfg['hf_hub'])[0]}/{Path(path).name}" if cfg.get("hf_hub") else str(path)
    return OpenClipSource(
        model_name, params.weights, params.weights, f"pretrained tag {params.weights}", WeightsFile(name, Path(path)),
        {"require_pretrained": True, **_tag_model_facts(cfg)}, _json_safe(cfg), cached,
    )


def _tag_model_facts(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """open_clip arguments that build the architecture a pretrained tag was trained with.

    open_clip builds from the model's config and only warns when the tag disagrees (OpenAI's tags
    carry `quick_gelu: True`, the plain configs use GELU); preprocessing keys it applies itself."""
    facts: dict[str, Any] = {}
    if cfg.get("quick_gelu") is True:
        facts["force_quick_gelu"] = True
    elif cfg.get("quick_gelu") is False:
        facts["quick_gelu"] = False  # a model kwarg: overrides a `-quickgelu` config
    size = cfg.get("image_size")
    if size:
        facts["force_image_size"] = size
    return facts


def _resolve_open_clip_hub(model_name: str, weights: str) -> OpenClipSource:
    """An `hf-hub:org/name` model: its open_clip_config.json and, unless random, its weights file."""
    from open_clip.pretrained import download_pretrained_from_hf

    repo_id = model_name[len(HF_HUB_PREFIX):]
    if weights not in (PRETRAINED, RANDOM):
        raise ValueError(
            f"open_clip model {model_name}: weights must be {PRETRAINED!r} (the hub repo's own) or {RANDOM!r}, "
            f"got {weights!r}; for a checkpoint file name a built-in model instead"
        )
    hint = "the encoder's `model` param (an open_clip model name, with a checkpoint file in `weights`)"
    config_path, config_cached = _from_hub(
        f"open_clip {model_name} (open_clip_config.json)", hint,
        lambda: download_pretrained_from_hf(repo_id, filename="open_clip_config.json"),
    )
    config = json.loads(Path(config_path).read_text())
    if weights == RANDOM:
        return OpenClipSource(model_name, None, RANDOM, "open_clip_config.json of the hub repo", None,
                              {"load_weights": False}, config, config_cached)
    path, cached = _from_hub(f"open_clip {model_name} (weights)", hint, lambda: download_pretrained_from_hf(repo_id))
    return OpenClipSource(
        model_name, None, PRETRAINED, "open_clip_config.json of the hub repo",
        WeightsFile(f"{repo_id}/{Path(path).name}", Path(path)), {"require_pretrained": True}, config,
        config_cached and cached,
    )


def _resolve_open_clip_file(model_name: str, path: Path) -> OpenClipSource:
    """A local checkpoint: built as `model_name` states, unless the file is one of OpenAI's (then QuickGELU)."""
    if not path.is_file():
        raise WeightsUnavailable(f"open_clip checkpoint file not found: {path}")
    weights = WeightsFile(str(path), path)
    kind = openai_checkpoint_kind(path)
    if kind == "torchscript":
        # torch.load hands a TorchScript archive to torch.jit.load, which restores tensors and
        # TorchScript code, not arbitrary Python objects; weights_only=True refuses such archives.
        return OpenClipSource(model_name, str(path), str(path), "detected: OpenAI TorchScript archive (QuickGELU)",
                              weights, {"force_quick_gelu": True, "require_pretrained": True, "weights_only": False})
    if kind == "state_dict":
        return OpenClipSource(model_name, None, str(path), "detected: OpenAI state dict (QuickGELU)", weights,
                              {"force_quick_gelu": True}, openai_state_dict=True)
    return OpenClipSource(model_name, str(path), str(path), "model param", weights, {"require_pretrained": True})


def openai_checkpoint_kind(path: Path) -> Literal["torchscript", "state_dict"] | None:
    """Whether a checkpoint file is OpenAI's CLIP release format: its TorchScript archive, or a state dict
    with OpenAI's extra entries (`input_resolution`, ...); None for anything else (open_clip's own files)."""
    import torch

    if not zipfile.is_zipfile(path):
        return None  # safetensors, numpy, legacy pickles: not OpenAI's release format
    with zipfile.ZipFile(path) as archive:
        if any(n == "constants.pkl" or n.endswith("/constants.pkl") for n in archive.namelist()):
            return "torchscript"
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # keys only: no tensor is read
    except (RuntimeError, ValueError, OSError, pickle.UnpicklingError):  # e.g. a training checkpoint with objects
        return None
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else {}
    return "state_dict" if isinstance(state, dict) and any(k in state for k in OPENAI_CHECKPOINT_EXTRAS) else None


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


class OpenClipEncoder:
    """CLIP image tower from open_clip."""

    def __init__(self, name: str, params: EncoderParams, source: OpenClipSource | None = None) -> None:
        import open_clip
        import torch

        self.name = name
        self.params = params
        self.source = source or resolve_open_clip(params)
        self.random_init = self.source.weights_file is None
        torch.manual_seed(params.seed)
        with self._hub_context():
            model, _, preprocess = open_clip.create_model_and_transforms(
                self.source.model_name, pretrained=self.source.pretrained, device="cpu", **self.source.create_kwargs
            )
        if self.source.openai_state_dict:
            _load_openai_state_dict(model, self.source.weights_file.path)  # type: ignore[union-attr]
        model.eval()
        self.quick_gelu = any(isinstance(m, open_clip.transformer.QuickGELU) for m in model.modules())
        self._check_built(model)
        # On CPU, PyTorch's MHA fast path is slower for ViT-L and hides FLOPs from the counter.
        torch.backends.mha.set_fastpath_enabled(False)
        self.attention = _use_sdpa(model.visual)
        self.runner = _Runner(params)
        self.model = self.runner.place(model)
        self.linear = self.runner.fuse_linears(self.model.visual)
        self.transform = preprocess
        self.dim = int(model.visual.output_dim)
        self.weights_source = self.source.label

    def _hub_context(self) -> Any:
        return _hub_offline() if self.source.cached else nullcontext()

    def _check_built(self, model: Any) -> None:
        """Fail loudly where open_clip did not build what the weights were trained with."""
        wanted = self.source.create_kwargs.get("force_quick_gelu")
        if wanted and not self.quick_gelu:
            raise RuntimeError(f"open_clip built {self.source.model_name} without QuickGELU, which its weights need")
        built = getattr(model.visual, "preprocess_cfg", {})
        # a tag's cfg holds the preprocessing keys itself; a hub repo's config under `preprocess_cfg`
        stated = self.source.pretrained_cfg.get("preprocess_cfg", self.source.pretrained_cfg)
        for key in ("mean", "std", "interpolation", "resize_mode"):
            if key in stated and _json_safe(built.get(key)) != _json_safe(stated[key]):
                raise RuntimeError(
                    f"open_clip built {self.source.model_name} with preprocessing {key}={built.get(key)!r}, "
                    f"but its pretrained config says {stated[key]!r}"
                )

    def tokenizer(self) -> Any:
        """open_clip's tokenizer for this model (from the same place as the model)."""
        import open_clip

        with self._hub_context():
            return open_clip.get_tokenizer(self.source.model_name)

    def preprocess(self, image: Any) -> Any:
        return self.transform(image)

    def encode(self, batch: Any) -> np.ndarray:
        return _normalise(self.runner.run(self.model.encode_image, batch))

    def describe(self) -> dict[str, Any]:
        cfg = dict(getattr(self.model.visual, "preprocess_cfg", {}))
        size = cfg.get("size", self.params.image_size)
        return {
            "name": self.name,
            "kind": "open_clip",
            "model": self.params.model,
            "architecture": self.params.config or None,
            "architecture_from": self.source.architecture_from,
            "quick_gelu": self.quick_gelu,
            "pretrained_cfg": self.source.pretrained_cfg or None,
            "weights": self.weights_source,
            "weights_file": self.source.weights_file.describe() if self.source.weights_file else None,
            "random_init": self.random_init,
            "dim": self.dim,
            "resolution": int(size[0] if isinstance(size, (list, tuple)) else size),
            "preprocessing": _json_safe(cfg),
            "pooling": "clip_projection",
            "attention": self.attention,
            "linear": self.linear,
            "dtype": self.runner.dtype,
            "versions": library_versions(),
        }


def _load_openai_state_dict(model: Any, path: Path) -> None:
    """Load an OpenAI-layout state dict (its extra entries dropped, as open_clip does for OpenAI's archives)."""
    from open_clip.factory import load_state_dict

    state = load_state_dict(str(path))
    for key in OPENAI_CHECKPOINT_EXTRAS:
        state.pop(key, None)
    model.load_state_dict(state, strict=True)


def _sdpa_self_attention(mha: Any) -> Any:
    """A drop-in for an open_clip ViT block's `nn.MultiheadAttention` running the same weights
    through `scaled_dot_product_attention` (one fused kernel instead of bmm + softmax + bmm)."""
    import torch
    import torch.nn.functional as F

    class SdpaSelfAttention(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            # A Linear module (same tensors) so the oneDNN fusion sees the qkv projection too.
            self.in_proj = torch.nn.Linear(mha.embed_dim, 3 * mha.embed_dim, bias=mha.in_proj_bias is not None, device="meta")
            self.in_proj.weight = mha.in_proj_weight
            self.in_proj.bias = mha.in_proj_bias
            self.out_proj = mha.out_proj
            self.num_heads = mha.num_heads

        def forward(self, q_x: Any, k_x: Any = None, v_x: Any = None, need_weights: bool = False,
                    attn_mask: Any = None) -> tuple[Any, None]:
            if attn_mask is not None and attn_mask.dtype == torch.bool:
                # nn.MultiheadAttention's True means "masked out", SDPA's means "attend": refuse rather than flip
                raise NotImplementedError("SDPA attention is used for unmasked (or additive-mask) vision towers only")
            n, length, width = q_x.shape
            qkv = self.in_proj(q_x)
            q, k, v = qkv.view(n, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
            return self.out_proj(x.transpose(1, 2).reshape(n, length, width)), None

    return SdpaSelfAttention()


def _use_sdpa(visual: Any) -> str:
    """Route open_clip ViT self-attention through SDPA (the same weight tensors); return the kind used.

    Called after the weights are loaded: the replacement's state dict keys differ (`attn.in_proj.weight`).
    """
    import torch

    blocks = getattr(getattr(visual, "transformer", None), "resblocks", [])
    replaced = 0
    for block in blocks:
        attn = getattr(block, "attn", None)
        if isinstance(attn, torch.nn.MultiheadAttention) and attn.batch_first and attn._qkv_same_embed_dim:
            block.attn = _sdpa_self_attention(attn)
            replaced += 1
    return "sdpa" if replaced and replaced == len(blocks) else "eager"


def _register_open_clip_config(name: str, config: dict[str, Any]) -> str:
    """Register an architecture given as data under `name` (open_clip reads configs from JSON)."""
    import open_clip

    folder = Path(tempfile.mkdtemp(prefix="clipblind-openclip-"))
    path = folder / f"{name}.json"
    path.write_text(json.dumps(config))
    open_clip.add_model_config(path)
    return name


@dataclass(frozen=True)
class Dinov2Source:
    """Where a DINOv2 model's config, weights and preprocessor config are (resolved before building)."""

    folder: Path | None  # a local directory or a hub cache snapshot; None: architecture from DINOV2_ARCHS/config
    label: str  # the description's `weights`: the directory, the hub id, or `random`
    weights_files: tuple[WeightsFile, ...] = ()


def resolve_dinov2(params: EncoderParams) -> Dinov2Source:
    """The DINOv2 directory `params` name: a local one, or the hub id's snapshot in the cache (fetched if missing)."""
    if params.weights not in (PRETRAINED, RANDOM):
        raise ValueError(f"dinov2 weights must be {PRETRAINED!r} or {RANDOM!r}, got {params.weights!r}")
    local = Path(params.model)
    if local.is_dir():
        folder = local.resolve()
        if params.weights == RANDOM:
            return Dinov2Source(folder, RANDOM)
        return Dinov2Source(folder, str(folder), _weights_files(folder, str(folder)))
    if params.weights == RANDOM:
        return Dinov2Source(None, RANDOM)
    folder, _ = _from_hub(
        f"DINOv2 {params.model}", "the encoder's `model` param (a directory saved with save_pretrained)",
        lambda: _hub_snapshot(params.model),
    )
    return Dinov2Source(folder, params.model, _weights_files(folder, params.model))


def _hub_snapshot(repo_id: str) -> Path:
    """The cached snapshot of a transformers model repo with its weights (downloaded unless offline)."""
    from huggingface_hub import snapshot_download

    configs = ["config.json", "preprocessor_config.json"]
    folder = Path(snapshot_download(repo_id, allow_patterns=configs + ["model.safetensors", "model*.safetensors*"]))
    if not _has_weights(folder):
        folder = Path(snapshot_download(repo_id, allow_patterns=configs + ["pytorch_model*.bin*"]))
    _weights_files(folder, repo_id)
    return folder


# transformers' order of preference: safetensors, then the pickled format; one file or an index of shards
_WEIGHTS_LAYOUTS = (("model.safetensors", "model.safetensors.index.json"), ("pytorch_model.bin", "pytorch_model.bin.index.json"))


def _has_weights(folder: Path) -> bool:
    return any((folder / name).is_file() for layout in _WEIGHTS_LAYOUTS for name in layout)


def _weights_files(folder: Path, prefix: str) -> tuple[WeightsFile, ...]:
    """The weights files transformers loads from `folder`, named `<prefix>/<file>`."""
    for single, index in _WEIGHTS_LAYOUTS:
        if (folder / single).is_file():
            return (WeightsFile(f"{prefix}/{single}", folder / single),)
        if (folder / index).is_file():
            shards = sorted(set(json.loads((folder / index).read_text())["weight_map"].values()))
            return tuple(WeightsFile(f"{prefix}/{s}", folder / s) for s in shards)
    raise FileNotFoundError(f"no DINOv2 weights (model.safetensors or pytorch_model.bin) in {folder}")


class Dinov2Encoder:
    """DINOv2 (with or without registers) from transformers, CLS or mean-of-patches pooling."""

    def __init__(self, name: str, params: EncoderParams, source: Dinov2Source | None = None) -> None:
        import torch

        self.name = name
        self.params = params
        self.source = source or resolve_dinov2(params)
        self.random_init = params.weights == RANDOM
        config = self._config()
        cls = _dinov2_class(config)
        if self.random_init:
            torch.manual_seed(params.seed)
            model = cls(config)
        else:
            folder = self.source.folder
            assert folder is not None
            model = cls.from_pretrained(
                folder, config=config, local_files_only=True,
                use_safetensors=self.source.weights_files[0].path.suffix == ".safetensors",
            )
        model.eval()
        try:
            model.set_attn_implementation("sdpa")
        except (ValueError, ImportError):
            pass  # this transformers build has no SDPA path for the model: it runs what its config says
        self.attention = str(model.config._attn_implementation)
        self.registers = int(getattr(model.config, "num_register_tokens", 0) or 0)
        self.runner = _Runner(params)
        self.model = self.runner.place(model)
        self.linear = self.runner.fuse_linears(self.model)
        self.dim = int(model.config.hidden_size)
        processor, self.preprocessing_source = _dinov2_processor(self.source.folder, params.image_size)
        self.transform: Callable[[Any], Any] = ProcessorTransform(processor)
        self.weights_source = self.source.label

    def _config(self) -> Any:
        from transformers import AutoConfig, Dinov2Config, Dinov2WithRegistersConfig

        if self.source.folder is not None:
            return AutoConfig.from_pretrained(self.source.folder, local_files_only=True)
        arch = dict(DINOV2_ARCHS.get(self.params.model, {}))
        arch.update(self.params.config)
        if not arch:
            raise ValueError(
                f"no architecture known for {self.params.model!r}: give `config` (Dinov2Config fields) "
                f"or one of {sorted(DINOV2_ARCHS)}"
            )
        config_cls = Dinov2WithRegistersConfig if "num_register_tokens" in arch else Dinov2Config
        return config_cls(image_size=self.params.image_size, **arch)

    def preprocess(self, image: Any) -> Any:
        return self.transform(image)

    def encode(self, batch: Any) -> np.ndarray:
        hidden = self.runner.run(lambda x: self.model(pixel_values=x).last_hidden_state, batch)
        # tokens: CLS, then the register tokens (if any), then the patches
        pooled = hidden[:, 0] if self.params.pooling == "cls" else hidden[:, 1 + self.registers:].mean(dim=1)
        return _normalise(pooled)

    def describe(self) -> dict[str, Any]:
        processor = cast(ProcessorTransform, self.transform).processor
        crop = processor.crop_size if processor.do_center_crop else None
        resolution = crop["height"] if crop else processor.size.get("height", processor.size.get("shortest_edge"))
        return {
            "name": self.name,
            "kind": "dinov2",
            "model": self.params.model,
            "architecture": {
                "model_type": self.model.config.model_type,
                **{k: getattr(self.model.config, k)
                   for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "patch_size", "image_size")},
                "num_register_tokens": self.registers,
            },
            "weights": self.weights_source,
            "weights_file": _describe_files(self.source.weights_files),
            "random_init": self.random_init,
            "dim": self.dim,
            "resolution": int(resolution),
            "preprocessing": {"source": self.preprocessing_source, "processor": type(processor).__name__,
                              **json.loads(processor.to_json_string())},
            "pooling": self.params.pooling,
            "attention": self.attention,
            "linear": self.linear,
            "dtype": self.runner.dtype,
            "versions": library_versions(),
        }


def _dinov2_class(config: Any) -> Any:
    from transformers import Dinov2Model, Dinov2WithRegistersModel

    classes = {"dinov2": Dinov2Model, "dinov2_with_registers": Dinov2WithRegistersModel}
    try:
        return classes[config.model_type]
    except KeyError:
        raise ValueError(f"model type {config.model_type!r} is not DINOv2; known: {sorted(classes)}") from None


def _dinov2_processor(folder: Path | None, size: int) -> tuple[Any, str]:
    """The checkpoint's own image processor (preprocessor_config.json), else DINOv2's documented defaults at `size`."""
    from transformers import AutoImageProcessor, BitImageProcessor

    if folder is not None and (folder / "preprocessor_config.json").is_file():
        return AutoImageProcessor.from_pretrained(folder, local_files_only=True), "preprocessor_config.json"
    defaults = BitImageProcessor(
        size={"shortest_edge": round(size * DINOV2_RESIZE_RATIO)}, crop_size={"height": size, "width": size},
        do_center_crop=True, resample=BICUBIC, image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD),
    )
    return defaults, "documented defaults"


class ProcessorTransform:
    """A transformers image processor as a per-image transform: PIL image → CHW float tensor (picklable)."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor

    def __call__(self, image: Any) -> Any:
        return self.processor(images=image, return_tensors="pt")["pixel_values"][0]


REGISTRY: dict[str, Callable[..., Encoder]] = {
    "open_clip": OpenClipEncoder,
    "dinov2": Dinov2Encoder,
}
RESOLVERS: dict[str, Callable[[EncoderParams], Any]] = {
    "open_clip": resolve_open_clip,
    "dinov2": resolve_dinov2,
}
