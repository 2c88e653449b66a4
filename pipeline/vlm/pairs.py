"""A benchmark pair as every model-facing step sees it, whatever folder layout it came from."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EvalPair:
    """One pair as every format yields it: explicit ground truth, images as bytes (None if absent)."""

    pair_id: str
    pattern: str
    question: str | None
    options: tuple[str, str] | None
    answers: tuple[str, str] | None
    images: tuple[bytes | None, bytes | None]
    statements: tuple[str | None, str | None] = (None, None)
    image_ids: tuple[str, str] = ("", "")
    options_swapped: bool = False  # the release reversed the written option order (package.option_order_seed)
