"""The blind gate's rules: a question a model answers without the image, or whose answer survives swapping the images, is flagged."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core import schemas
from pipeline.core.config import load_section
from pipeline.core.patterns import ANSWERS
from pipeline.images.display import display_bytes
from pipeline.params import ExportParams, GateParams
from pipeline.vlm import scoring
from pipeline.vlm.backends import Backend, blank_like, build_prompt

BLIND = "blind_answerable"
SWAP = "swap_insensitive"
RULES = (BLIND, SWAP)


def _flip(answer: str | None) -> str | None:
    return dict(zip(ANSWERS, reversed(ANSWERS))).get(answer) if answer else None


def ask(backend: Backend, question: str, options: tuple[str, str], image: bytes | None, swapped: bool) -> tuple[str | None, str | None]:
    """(letter the model chose, that choice in the original option order) for one trial."""
    shown = (options[1], options[0]) if swapped else options
    letter = scoring.extract_answer(backend.ask(build_prompt(question, *shown), image), shown)
    return letter, _flip(letter) if swapped else letter


def check_item(backend: Backend, question: str, options: tuple[str, str], answer: str, image: bytes, other: bytes,
               params: GateParams) -> dict[str, Any]:
    """Trials and flags of one item."""
    blind_right = 0
    for condition in (None, blank_like(image), other):
        for swapped in (False, True):
            blind_right += ask(backend, question, options, condition, swapped)[1] == answer
    real = [ask(backend, question, options, image, swapped)[0] for swapped in (False, True)]
    flags = []
    if blind_right >= params.blind_min_right:
        flags.append(BLIND)
    if real[0] is not None and real[0] == real[1]:
        flags.append(SWAP)
    return {"checked": True, "blind_right": blind_right, "real_answers": [r or "" for r in real], "flags": flags, "detail": ""}


def load_decision(gate_path: str | Path, params_path: str | Path) -> GateDecision | None:
    """What package applies: flags per item, pairs to drop (policy `gate.flagged`), the card's summary; None if the gate did not run."""
    params = load_section(params_path, "gate", GateParams)
    meta = schemas.read_meta(gate_path)
    if not meta.get("ran"):
        return None
    rows = schemas.read_table(gate_path, "gate").to_pylist()
    flags = {r["item_id"]: tuple(r["flags"]) for r in rows if r["flags"]}
    drop = frozenset(r["pair_id"] for r in rows if r["flags"]) if params.flagged == "drop" else frozenset()
    counts = {rule: sum(rule in f for f in flags.values()) for rule in RULES}
    return GateDecision(
        flags=flags,
        drop_pairs=drop,
        summary={"model": meta["model"], "items": len(rows), "flagged_items": len(flags), "flags": counts,
                 "policy": "dropped" if params.flagged == "drop" else "kept", "blind_min_right": params.blind_min_right,
                 "unchecked_items": sum(1 for r in rows if not r["checked"])},
    )


@dataclass(frozen=True)
class GateDecision:
    """The blind gate's verdict: flags per item_id, pairs to drop, and its summary for the card."""

    flags: Mapping[str, tuple[str, ...]]
    drop_pairs: frozenset[str]
    summary: Mapping[str, Any]


def image_encoder(export_params: ExportParams, max_pixels: int) -> Callable[[bytes], bytes]:
    """Original bytes → released image bytes: the canonical decode, encoded as the annotators' display copy."""

    def encode(data: bytes) -> bytes:
        return display_bytes(data, export_params, max_pixels)

    return encode
