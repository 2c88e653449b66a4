"""Mining thresholds: a cosine or a quantile of the similarity over all pairs, resolved against the candidates."""

from __future__ import annotations

import math

import numpy as np

from pipeline.core.errors import ClipblindError
from pipeline.mining.candidates import CandidatesMeta
from pipeline.params import Threshold, _spec


class ThresholdError(ClipblindError, ValueError):
    """A threshold cannot be resolved from the candidates the search kept."""


def describe(threshold: float | Threshold) -> dict[str, float]:
    """The threshold as written in params, e.g. {"value": 0.95} or {"quantile": 0.9999}."""
    spec = _spec(threshold, "threshold")
    return {"value": spec.value} if spec.value is not None else {"quantile": float(spec.quantile)}  # type: ignore[arg-type]


def resolve_clip_threshold(threshold: float | Threshold, clip_sims: np.ndarray, meta: CandidatesMeta) -> float:
    """The CLIP cosine threshold: a given value, or the exact quantile over all pairs counted from the candidates.

    A quantile q resolves to the cosine with floor((1 − q) · pairs_possible) pairs strictly above it.
    """
    spec = _spec(threshold, "clip_threshold")
    recall = meta.recall_clip_threshold
    if spec.value is not None:
        if spec.value < recall:
            raise ThresholdError(
                f"mine.clip_threshold {spec.value} is below the search's recall threshold {recall}: pairs in between "
                f"were never kept; lower search.recall_clip_threshold to ≤ {spec.value} and rerun the search"
            )
        return spec.value
    above = math.floor((1.0 - float(spec.quantile)) * meta.pairs_possible)  # type: ignore[arg-type]
    guarded = meta.near_duplicates_dropped
    stored = np.sort(clip_sims)[::-1]
    rank = above - guarded  # guarded pairs all lie above the guard's CLIP cosine
    if rank >= len(stored):
        raise ThresholdError(
            f"mine.clip_threshold quantile {spec.quantile} needs the {above + 1}th most similar pair, but only "
            f"{len(stored) + guarded} pairs lie above the search's recall threshold {recall}: lower "
            "search.recall_clip_threshold and rerun the search"
        )
    guard_clip = meta.near_duplicate.clip
    if rank < 0 or stored[rank] >= guard_clip:
        raise ThresholdError(
            f"mine.clip_threshold quantile {spec.quantile} falls among the near-duplicates the search dropped "
            f"(CLIP > {guard_clip}): raise search.near_duplicate.clip or use a lower quantile"
        )
    return float(stored[rank])


def resolve_dino_threshold(threshold: float | Threshold, meta: CandidatesMeta) -> float:
    """The DINOv2 cosine threshold: a given value, or a quantile of the search's random sample of pairs."""
    spec = _spec(threshold, "dino_threshold")
    if spec.value is not None:
        return spec.value
    sample = meta.sample
    if not sample.dino:
        raise ThresholdError("mine.dino_threshold is a quantile but the search sampled no pairs: set search.sample_pairs > 0")
    return float(np.interp(float(spec.quantile), sample.grid, sample.dino))  # type: ignore[arg-type]
