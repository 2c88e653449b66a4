"""Vision-language models behind one small interface, with one fixed prompt and a response cache.

A `Backend` answers `ask(prompt, image)` (image: JPEG/PNG bytes or None) with the model's
reply text, decoding deterministically. Two are registered:

* `transformers`: a local image-text-to-text model directory (`AutoProcessor` +
  `AutoModelForImageTextToText`, greedy decoding);
* `openai`: any OpenAI-compatible chat-completions endpoint given by URL (temperature 0,
  the image sent inline as a base64 data URL; key from the environment variable named in params).

`CachedBackend` stores every reply in a JSONL file keyed by (backend, prompt, image sha256), so
an interrupted run resumes without repeating calls.

The prompt (`PROMPT`) is fixed and documented in the README; options are always written
`(a) <text> (b) <text>` and the reply is read by `scoring.extract_answer`.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any, Protocol

from pipeline.core.errors import ClipblindError
from pipeline.images.decode import BACKGROUND, decode
from pipeline.params import VlmParams

PROMPT = "{question}\nOptions: (a) {option_a} (b) {option_b}\nAnswer with the letter of the correct option, (a) or (b)."


def build_prompt(question: str, option_a: str, option_b: str) -> str:
    """The one prompt every model gets."""
    return PROMPT.format(question=question.strip(), option_a=option_a.strip(), option_b=option_b.strip())


class BackendError(ClipblindError, RuntimeError):
    """A model could not be loaded or did not answer."""


class Backend(Protocol):
    """What evaluate and the gate need from a vision-language model."""

    name: str

    def ask(self, prompt: str, image: bytes | None) -> str:
        """The model's reply to `prompt` about `image` (None: no image at all)."""


class TransformersBackend:
    """A local transformers image-text-to-text model, greedy decoding."""

    def __init__(self, params: VlmParams) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        path = Path(params.model)
        if not path.is_dir():
            raise BackendError(
                f"transformers backend needs a local model directory, got {params.model!r}: download the model "
                "on a connected machine (save_pretrained) and give its folder as `model`"
            )
        self.processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        self.model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True).eval()
        self.params = params
        self.name = f"transformers:{path.resolve().name}:{_dir_fingerprint(path)}"

    def ask(self, prompt: str, image: bytes | None) -> str:
        """The model's greedy reply to `prompt` about `image`."""
        import torch

        content: list[dict[str, Any]] = ([{"type": "image"}] if image is not None else []) + [{"type": "text", "text": prompt}]
        text = self.processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
        images = [decode(image).image] if image is not None else None
        inputs = self.processor(images=images, text=text, return_tensors="pt")
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=self.params.max_new_tokens, do_sample=False)
        return self.processor.decode(out[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def _dir_fingerprint(path: Path) -> str:
    """A short hash of a model directory's config and weights file sizes (the cache key's model part)."""
    digest = hashlib.sha256()
    for p in sorted(path.iterdir()):
        if p.is_file():
            digest.update(p.name.encode())
            digest.update(p.read_bytes() if p.suffix == ".json" else str(p.stat().st_size).encode())
    return digest.hexdigest()[:12]


class OpenAIBackend:
    """An OpenAI-compatible chat-completions endpoint."""

    def __init__(self, params: VlmParams) -> None:
        if not params.url:
            raise BackendError("openai backend needs `url` (the endpoint's base URL, e.g. http://127.0.0.1:8000/v1)")
        self.params = params
        self.url = params.url.rstrip("/") + "/chat/completions"
        self.name = f"openai:{params.url.rstrip('/')}:{params.model}"

    def ask(self, prompt: str, image: bytes | None) -> str:
        """The endpoint's reply (temperature 0) to `prompt` with `image` inline."""
        import urllib.error
        import urllib.request

        content: list[dict[str, Any]] = [{"type": "text", "text": prompt}]
        if image is not None:
            content.insert(0, {"type": "image_url", "image_url": {"url": data_url(image)}})
        body = {
            "model": self.params.model,
            "messages": [{"role": "user", "content": content}],
            "temperature": 0,
            "max_tokens": self.params.max_new_tokens,
        }
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.params.api_key_env) if self.params.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.params.timeout) as response:
                reply = json.loads(response.read())
        except (urllib.error.URLError, OSError) as err:
            raise BackendError(f"{self.url}: {err}") from err
        try:
            return str(reply["choices"][0]["message"]["content"] or "")
        except (KeyError, IndexError, TypeError) as err:
            raise BackendError(f"{self.url} answered without choices[0].message.content: {str(reply)[:200]}") from err


def data_url(image: bytes) -> str:
    """An image as a base64 data URL with its media type."""
    media = "image/png" if image[:8] == b"\x89PNG\r\n\x1a\n" else "image/jpeg"
    return f"data:{media};base64,{base64.b64encode(image).decode()}"


def load_backend(params: VlmParams) -> Backend:
    """The backend `params` name."""
    if params.backend == "transformers":
        return TransformersBackend(params)
    if params.backend == "openai":
        return OpenAIBackend(params)
    raise BackendError(f"unknown vlm backend {params.backend!r}; use transformers or openai")


class CachedBackend:
    """A backend whose replies are kept in a JSONL file, so a rerun asks only what is missing."""

    def __init__(self, backend: Backend, path: str | Path) -> None:
        self.backend = backend
        self.name = backend.name
        self.path = Path(path)
        self.calls = 0
        self.replies: dict[str, str] = {}
        if self.path.exists():
            text = self.path.read_text(encoding="utf-8")
            if text and not text.endswith("\n"):
                with open(self.path, "a", encoding="utf-8") as handle:
                    handle.write("\n")  # end a line cut short, so the next reply starts a line of its own
            for line in text.splitlines():
                try:
                    entry = json.loads(line)
                    self.replies[entry["key"]] = entry["reply"]
                except (json.JSONDecodeError, KeyError):
                    continue  # a line cut short by an interruption: ask again

    def key(self, prompt: str, image: bytes | None, variant: str = "") -> str:
        """The cache key of a question: backend, prompt and image hash, and the variant of the model when one is
        given (e.g. its visual tokens shuffled), so a variant's replies never answer for the plain model."""
        image_hash = hashlib.sha256(image).hexdigest() if image is not None else ""
        parts = [self.name, prompt, image_hash, *([variant] if variant else [])]  # no variant: the key it always had
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()

    def ask(self, prompt: str, image: bytes | None, variant: str = "") -> str:
        """The cached reply, or the backend's, stored before it is returned; `variant` names a changed model
        (the caller has changed it, e.g. hooked it) and joins the cache key."""
        key = self.key(prompt, image, variant)
        if key not in self.replies:
            try:
                reply = self.backend.ask(prompt, image)
            except BackendError as err:
                raise BackendError(
                    f"{self.name} did not answer: {err}. The {len(self.replies)} replies so far are kept in {self.path}: "
                    "start the model (or fix its entry in params) and rerun; kept replies are not asked again"
                ) from err
            self.calls += 1
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"key": key, "reply": reply}, ensure_ascii=False) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            self.replies[key] = reply
        return self.replies[key]


def blank_like(image: bytes) -> bytes:
    """A white image of the same size as `image`, PNG-encoded (the gate's "blank image" condition)."""
    from PIL import Image

    size = decode(image).image.size
    out = io.BytesIO()
    Image.new("RGB", size, BACKGROUND).save(out, format="PNG")
    return out.getvalue()


def cached_backend(backend: Backend, folder: str | Path) -> CachedBackend:
    """`backend` with its replies kept in `folder`, one JSONL file per model (named by the model's hash): every
    command that asks the same model shares it."""
    return CachedBackend(backend, Path(folder) / (hashlib.sha256(backend.name.encode()).hexdigest()[:16] + ".jsonl"))
