"""Image encoders behind one small interface, in an explicit registry.

An `Encoder` has a name, an output dim, `preprocess` (canonical RGB image → tensor) and
`encode` (batch → L2-normalised float32 vectors), and `describe()`: everything needed to
say exactly what produced a vector (model, weights, resolution, preprocessing, pooling,
dtype, library versions). Two kinds are registered:

* `open_clip`: `model` is an open_clip model name; `weights` a pretrained tag (e.g. `openai`),
  a local checkpoint file, or `random`.
* `dinov2`: `model` is a hub id (e.g. `facebook/dinov2-large`) or a local directory saved
  with `save_pretrained`; `weights` is `pretrained` or `random`.

`dtype` is fp32, bf16, or auto (bf16 on CUDA and on CPUs with native bf16, else fp32); the
dtype used is part of the description. On CPU the weights are cast to it; on CUDA they stay
fp32 under autocast. open_clip's ViT attention runs through SDPA with the same weights.

`random` must be asked for explicitly; weights that cannot be had raise `WeightsUnavailable`
within seconds, naming both fixes. There is no silent fallback to random weights.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Protocol

import numpy as np

from pipeline.config import AtLeastOne, Seed

EncoderKind = Literal["open_clip", "dinov2", "clip_retrieval"]  # clip_retrieval: imported, see pipeline.clipretrieval
RANDOM = "random"
HUB_HOST = "huggingface.co"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# DINOv2 architectures by hub id, so `weights: random` can build a same-sized model offline.
DINOV2_ARCHS: dict[str, dict[str, Any]] = {
    "facebook/dinov2-small": {"hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6},
    "facebook/dinov2-base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12},
    "facebook/dinov2-large": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16},
    "facebook/dinov2-giant": {
        "hidden_size": 1536, "num_hidden_layers": 40, "num_attention_heads": 24, "use_swiglu_ffn": True,
    },
}


class WeightsUnavailable(RuntimeError):
    """The requested weights are neither on this machine nor downloadable now."""


@dataclass(frozen=True)
class EncoderParams:
    """One encoder: which model, which weights, and how to run it."""

    kind: EncoderKind
    model: str
    weights: str
    pooling: Literal["cls", "mean"] = "cls"  # dinov2 only
    dtype: Literal["fp32", "bf16", "auto"] = "fp32"  # auto: bf16 where the CPU computes it natively
    device: Literal["cpu", "cuda"] = "cpu"
    image_size: AtLeastOne = 224
    seed: Seed = 0  # only used to initialise `weights: random`
    config: dict[str, Any] = field(default_factory=dict)  # architecture overrides for `weights: random`


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
    if params.kind == "clip_retrieval":
        raise ValueError(
            f"encoder {name!r}: kind clip_retrieval means precomputed vectors: import them with "
            "`clipblind embed --clip-from DIR` instead of building a model"
        )
    try:
        factory = REGISTRY[params.kind]
    except KeyError:
        raise ValueError(f"unknown encoder kind {params.kind!r}; known: {sorted(REGISTRY)}") from None
    return factory(name, params)


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


def hub_reachable(host: str = HUB_HOST, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the model hub can be opened within `timeout` seconds."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, 443), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    # getaddrinfo has no timeout of its own: run the probe in a thread and stop waiting.
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def _unavailable(what: str, param_hint: str) -> WeightsUnavailable:
    return WeightsUnavailable(
        f"cannot load {what}: the model hub ({HUB_HOST}) is not reachable and the weights are not "
        f"in the local cache. Fix: connect this machine to the network and rerun, or point "
        f"{param_hint} at local weights. Set weights to 'random' only to test the pipeline."
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
            if fuse:
                setattr(parent, act_name, torch.nn.Identity())
            replaced += 1
    return replaced


def _normalise(x: Any) -> np.ndarray:
    import torch

    x = x.float()
    x = torch.nn.functional.normalize(x, dim=-1)
    return x.detach().cpu().numpy().astype(np.float32)


class OpenClipEncoder:
    """CLIP image tower from open_clip."""

    def __init__(self, name: str, params: EncoderParams) -> None:
        import open_clip
        import torch

        self.name = name
        self.params = params
        self.random_init = params.weights == RANDOM
        model_name = params.model
        if params.config:
            model_name = _register_open_clip_config(params.model, params.config)
        if model_name not in open_clip.list_models():
            raise ValueError(f"unknown open_clip model {params.model!r}; see open_clip.list_models()")
        pretrained = self._resolve_weights(open_clip, model_name)
        torch.manual_seed(params.seed)
        model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained, device="cpu")
        model.eval()
        # On CPU, PyTorch's MHA fast path is slower for ViT-L and hides FLOPs from the counter.
        torch.backends.mha.set_fastpath_enabled(False)
        self.attention = _use_sdpa(model.visual)
        self.runner = _Runner(params)
        self.model = self.runner.place(model)
        self.linear = self.runner.fuse_linears(self.model.visual)
        self.transform = preprocess
        self.dim = int(model.visual.output_dim)
        self.weights_source = pretrained or RANDOM

    def _resolve_weights(self, open_clip: Any, model_name: str) -> str | None:
        weights = self.params.weights
        if weights == RANDOM:
            return None
        if Path(weights).suffix in (".pt", ".pth", ".bin", ".safetensors") or os.sep in weights:
            if not Path(weights).is_file():
                raise WeightsUnavailable(f"open_clip checkpoint file not found: {weights}")
            return weights
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        if weights not in tags:
            raise ValueError(f"open_clip has no pretrained tag {weights!r} for {model_name}; tags: {tags}")
        cfg = open_clip.get_pretrained_cfg(model_name, weights)
        hub_id = cfg.get("hf_hub", "").rstrip("/")
        if hub_id and _in_hf_cache(hub_id):
            return weights
        if not hub_reachable():
            raise _unavailable(f"open_clip {model_name}/{weights}", "the encoder's `weights` param (a checkpoint file)")
        return weights

    def preprocess(self, image: Any) -> Any:
        return self.transform(image)

    def encode(self, batch: Any) -> np.ndarray:
        return _normalise(self.runner.run(self.model.encode_image, batch))

    def describe(self) -> dict[str, Any]:
        cfg = dict(getattr(self.model.visual, "preprocess_cfg", {}))
        return {
            "name": self.name,
            "kind": "open_clip",
            "model": self.params.model,
            "architecture": self.params.config or None,
            "weights": self.weights_source,
            "random_init": self.random_init,
            "dim": self.dim,
            "resolution": int(cfg.get("size", self.params.image_size) if not isinstance(cfg.get("size"), (list, tuple)) else cfg["size"][0]),
            "preprocessing": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
            "pooling": "clip_projection",
            "attention": self.attention,
            "linear": self.linear,
            "dtype": self.runner.dtype,
            "versions": library_versions(),
        }


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
            n, length, width = q_x.shape
            qkv = self.in_proj(q_x)
            q, k, v = qkv.view(n, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
            return self.out_proj(x.transpose(1, 2).reshape(n, length, width)), None

    return SdpaSelfAttention()


def _use_sdpa(visual: Any) -> str:
    """Route open_clip ViT self-attention through SDPA (same weights, same state dict keys); return the kind used."""
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


def _in_hf_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import scan_cache_dir

        return any(repo.repo_id == repo_id for repo in scan_cache_dir().repos)
    except Exception:  # no cache directory yet
        return False


class Dinov2Encoder:
    """DINOv2 from transformers, CLS or mean-of-patches pooling."""

    def __init__(self, name: str, params: EncoderParams) -> None:
        import torch
        from transformers import Dinov2Config, Dinov2Model

        self.name = name
        self.params = params
        self.random_init = params.weights == RANDOM
        local = Path(params.model).is_dir()
        if params.weights == RANDOM:
            if local:
                config = Dinov2Config.from_pretrained(params.model)
            else:
                arch = dict(DINOV2_ARCHS.get(params.model, {}))
                arch.update(params.config)
                if not arch:
                    raise ValueError(
                        f"no architecture known for {params.model!r}: give `config` (Dinov2Config fields) "
                        f"or one of {sorted(DINOV2_ARCHS)}"
                    )
                config = Dinov2Config(image_size=params.image_size, **arch)
            torch.manual_seed(params.seed)
            model = Dinov2Model(config)
            self.weights_source = RANDOM
        elif params.weights == "pretrained":
            model = self._load_pretrained(Dinov2Model, local)
            self.weights_source = str(Path(params.model).resolve()) if local else params.model
        else:
            raise ValueError(f"dinov2 weights must be 'pretrained' or 'random', got {params.weights!r}")
        model.eval()
        model.config._attn_implementation = "sdpa"
        self.runner = _Runner(params)
        self.model = self.runner.place(model)
        self.linear = self.runner.fuse_linears(self.model)
        self.dim = int(model.config.hidden_size)
        self.transform = _dinov2_transform(params.image_size)

    def _load_pretrained(self, cls: Any, local: bool) -> Any:
        model_id = self.params.model
        if local:
            return cls.from_pretrained(model_id, local_files_only=True)
        try:
            return cls.from_pretrained(model_id, local_files_only=True)
        except OSError:
            pass
        if not hub_reachable():
            raise _unavailable(f"DINOv2 {model_id}", "the encoder's `model` param (a directory saved with save_pretrained)")
        return cls.from_pretrained(model_id)

    def preprocess(self, image: Any) -> Any:
        return self.transform(image)

    def encode(self, batch: Any) -> np.ndarray:
        hidden = self.runner.run(lambda x: self.model(pixel_values=x).last_hidden_state, batch)
        pooled = hidden[:, 0] if self.params.pooling == "cls" else hidden[:, 1:].mean(dim=1)
        return _normalise(pooled)

    def describe(self) -> dict[str, Any]:
        size = self.params.image_size
        return {
            "name": self.name,
            "kind": "dinov2",
            "model": self.params.model,
            "architecture": {
                k: getattr(self.model.config, k)
                for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "patch_size", "image_size")
            },
            "weights": self.weights_source,
            "random_init": self.random_init,
            "dim": self.dim,
            "resolution": size,
            "preprocessing": {
                "resize_shortest_edge": round(size * 256 / 224),
                "interpolation": "bicubic",
                "center_crop": size,
                "mean": list(IMAGENET_MEAN),
                "std": list(IMAGENET_STD),
            },
            "pooling": self.params.pooling,
            "attention": "sdpa",
            "linear": self.linear,
            "dtype": self.runner.dtype,
            "versions": library_versions(),
        }


def _dinov2_transform(size: int) -> Callable[[Any], Any]:
    """DINOv2's evaluation preprocessing: resize to 256/224 of the crop, centre crop, ImageNet norm."""
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.Resize(round(size * 256 / 224), interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


REGISTRY: dict[str, Callable[[str, EncoderParams], Encoder]] = {
    "open_clip": OpenClipEncoder,
    "dinov2": Dinov2Encoder,
}
