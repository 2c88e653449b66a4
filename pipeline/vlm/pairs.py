"""A benchmark pair as every model-facing step sees it, whatever folder layout it came from."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.core import patterns

MEMBERS = ("a", "b")  # a pair's two images, in order: the release's `member` values


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


def pairs_from_items(items: Iterable[Mapping[str, Any]]) -> list[EvalPair]:
    """Release items (two per pair, as `release.items.build_items` makes them and the release's parquet holds them)
    as pairs, in the order their first items come; a pattern is named by its paper name."""
    by_pair: dict[str, list[Mapping[str, Any]]] = {}
    for item in items:
        by_pair.setdefault(item["pair_id"], []).append(item)
    pairs = []
    for pair_id, members in by_pair.items():
        if [m["member"] for m in members] != list(MEMBERS):
            raise ValueError(f"pair {pair_id} has items {[m['member'] for m in members]}; a pair has one item per member "
                             f"{list(MEMBERS)}, in that order")
        a, b = members
        pairs.append(EvalPair(pair_id, patterns.lookup(a.get("pattern_key") or a["pattern"]).paper, a["question"],
                              (a["options"][0], a["options"][1]), (a["answer"], b["answer"]), (a["image"], b["image"]),
                              (a["statement"], b["statement"]), (a["image_sha256"] or "", b["image_sha256"] or ""),
                              bool(a.get("options_swapped", False))))
    return pairs
