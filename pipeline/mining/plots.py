"""Plots of the mining funnel as PNG files: the CLIP-vs-DINOv2 scatter of candidates and both distributions.

matplotlib is imported lazily (headless Agg backend), so the rest of the pipeline runs without it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.atomic import atomic_path
from pipeline.mining.candidates import CandidatesMeta

SCATTER_FILE = "clip_vs_dino.png"
HISTOGRAM_FILE = "similarity_histograms.png"


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as err:
        raise ImportError("plots need matplotlib: pip install 'clipblind[pipeline]' (or pip install matplotlib)") from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})


def write_plots(
    directory: Path, clip: np.ndarray, dino: np.ndarray, meta: CandidatesMeta, thresholds: Mapping[str, Any],
    max_points: int, seed: int,
) -> list[Path]:
    """Write the scatter and histogram PNGs into `directory`; return their paths."""
    plt = _pyplot()
    directory.mkdir(parents=True, exist_ok=True)
    recall = meta.recall_clip_threshold
    t_clip, t_dino = thresholds.get("clip"), thresholds.get("dino")

    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    shown: np.ndarray = np.arange(len(clip))
    if len(shown) > max_points:
        shown = np.sort(np.random.default_rng(seed).choice(len(clip), size=max_points, replace=False))
    ax.scatter(clip[shown], dino[shown], s=4, alpha=0.5, color="#4c72b0", linewidths=0,
               label=f"candidates ({len(shown):,} of {len(clip):,})")
    if t_clip is not None:
        ax.axvline(t_clip, color="#c44e52", lw=1.2, label=f"CLIP threshold {t_clip:.4f}")
    if t_dino is not None:
        ax.axhline(t_dino, color="#dd8452", lw=1.2, label=f"DINOv2 threshold {t_dino:.4f}")
    ax.set_xlim(recall, 1.0)
    ax.set_xlabel("CLIP cosine")
    ax.set_ylabel("DINOv2 cosine")
    ax.set_title("Candidates: CLIP-blind pairs are bottom right")
    ax.legend(loc="upper left", fontsize=8)
    scatter = directory / SCATTER_FILE
    _save(fig, scatter)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, name, values, line in ((axes[0], "clip", clip, t_clip), (axes[1], "dino", dino, t_dino)):
        sampled = getattr(meta.sample, name)
        bins = np.linspace(-1.0, 1.0, 101)
        if sampled:
            # the all-pairs distribution as its 1001 sampled quantiles, each holding 1/1000 of the pairs
            ax.hist(sampled, bins=bins, weights=np.full(len(sampled), 1.0 / len(sampled)),
                    alpha=0.6, color="#8c8c8c", label=f"all pairs (sample of {meta.sample.pairs:,})")
        if len(values):
            ax.hist(values, bins=bins, weights=np.full(len(values), 1.0 / len(values)), alpha=0.6, color="#4c72b0",
                    label=f"candidates ({len(values):,})")
        if line is not None:
            ax.axvline(line, color="#c44e52", lw=1.2, label=f"threshold {line:.4f}")
        ax.set_yscale("log")
        ax.set_xlabel(f"{'CLIP' if name == 'clip' else 'DINOv2'} cosine")
        ax.set_ylabel("share of pairs")
        ax.legend(loc="upper left", fontsize=8)
    histograms = directory / HISTOGRAM_FILE
    _save(fig, histograms)
    plt.close(fig)
    return [scatter, histograms]
