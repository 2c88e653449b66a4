"""Plots of the mining funnel as PNG files: the CLIP-vs-DINOv2 scatter of candidates and both distributions.

Each axis spans the data it shows (and the threshold lines) with a small margin, never the
whole −1…1 cosine range; its tick labels are thinned until none touches its neighbour. A plot
made from randomly initialised encoders carries `report.RANDOM_WEIGHTS_MARK` above it (and in the
PNG's Description), and an empty plot says why it is empty.

matplotlib is imported lazily (headless Agg backend), so the rest of the pipeline runs without it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.atomic import atomic_path
from pipeline.core.report import RANDOM_WEIGHTS_MARK
from pipeline.mining.candidates import CandidatesMeta

SCATTER_FILE = "clip_vs_dino.png"
HISTOGRAM_FILE = "similarity_histograms.png"
HISTOGRAM_BINS = 60
MARGIN = 0.05  # of the shown span on each side, at least MIN_MARGIN cosine
MIN_MARGIN = 0.005
MAX_TICKS = 8  # the most tick intervals an axis tries before thinning
MIN_TICK_GAP_PX = 6.0  # the least space between two neighbouring tick labels


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as err:
        raise ImportError("plots need matplotlib: pip install 'clipblind[pipeline]' (or pip install matplotlib)") from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def random_init_encoders(meta: CandidatesMeta) -> list[str]:
    """Names of the encoders behind the candidates that had randomly initialised weights."""
    return sorted(str(d.get("name", role)) for role, d in meta.encoders.items() if d.get("random_init"))


def view_range(values: Iterable[np.ndarray | Sequence[float]], lines: Iterable[float | None]) -> tuple[float, float]:
    """The axis limits that show every value and every line, with a margin; (−1, 1) when there is nothing."""
    points: list[np.ndarray] = [np.asarray(v, dtype=np.float64).ravel() for v in values]
    points += [np.array([line], dtype=np.float64) for line in lines if line is not None]
    flat = np.concatenate(points) if points else np.empty(0)
    flat = flat[np.isfinite(flat)]
    if not len(flat):
        return -1.0, 1.0
    lo, hi = float(flat.min()), float(flat.max())
    margin = max(MIN_MARGIN, MARGIN * (hi - lo))
    return lo - margin, hi + margin


def _visible_tick_labels(axis: Any) -> list[Any]:
    lo, hi = sorted(axis.get_view_interval())
    return [tick.label1 for tick in axis.get_major_ticks()
            if lo <= tick.get_loc() <= hi and tick.label1.get_visible() and tick.label1.get_text()]


def tick_label_gaps(fig: Any, axis: Any) -> list[float]:
    """Pixels between each pair of neighbouring tick labels of `axis` as drawn (negative: they overlap)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    horizontal = axis.axis_name == "x"
    boxes = sorted(((b.x0, b.x1) if horizontal else (b.y0, b.y1))
                   for b in (label.get_window_extent(renderer) for label in _visible_tick_labels(axis)))
    return [later[0] - earlier[1] for earlier, later in zip(boxes, boxes[1:])]


def _fit_ticks(fig: Any, axis: Any) -> None:
    """Use the most ticks (up to MAX_TICKS intervals) whose labels keep MIN_TICK_GAP_PX apart."""
    from matplotlib.ticker import MaxNLocator

    for intervals in range(MAX_TICKS, 1, -1):
        axis.set_major_locator(MaxNLocator(nbins=intervals, steps=[1, 2, 2.5, 5, 10]))
        if all(gap >= MIN_TICK_GAP_PX for gap in tick_label_gaps(fig, axis)):
            return


def _empty_note(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=10, color="#a00", wrap=True)


def _mark_random(fig: Any, random_encoders: Sequence[str]) -> None:
    if random_encoders:
        fig.text(0.5, 1.0, f"{RANDOM_WEIGHTS_MARK} ({', '.join(random_encoders)}: randomly initialised)",
                 ha="center", va="bottom", fontsize=12, fontweight="bold", color="white",
                 bbox={"facecolor": "#c0392b", "edgecolor": "none", "pad": 4})


def scatter_figure(clip: np.ndarray, dino: np.ndarray, meta: CandidatesMeta, thresholds: Mapping[str, Any],
                   max_points: int, seed: int) -> Any:
    """The CLIP-vs-DINOv2 scatter of the candidates (at most `max_points`, a seeded sample) with the threshold lines."""
    plt = _pyplot()
    t_clip, t_dino = thresholds.get("clip"), thresholds.get("dino")
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    shown: np.ndarray = np.arange(len(clip))
    if len(shown) > max_points:
        shown = np.sort(np.random.default_rng(seed).choice(len(clip), size=max_points, replace=False))
    if len(shown):
        ax.scatter(clip[shown], dino[shown], s=4, alpha=0.5, color="#4c72b0", linewidths=0,
                   label=f"candidates ({len(shown):,} of {len(clip):,})")
    else:
        _empty_note(ax, f"no candidates: no pair has CLIP cosine above the search's recall threshold "
                        f"{meta.recall_clip_threshold:.4f}")
    if t_clip is not None:
        ax.axvline(t_clip, color="#c44e52", lw=1.2, label=f"CLIP threshold {t_clip:.4f}")
    if t_dino is not None:
        ax.axhline(t_dino, color="#dd8452", lw=1.2, label=f"DINOv2 threshold {t_dino:.4f}")
    # every candidate lies above the recall threshold: the x axis starts there
    ax.set_xlim(*view_range([clip[shown]], [meta.recall_clip_threshold, t_clip]))
    ax.set_ylim(*view_range([dino[shown]], [t_dino]))
    ax.set_xlabel("CLIP cosine")
    ax.set_ylabel("DINOv2 cosine")
    ax.set_title("Candidates: CLIP-blind pairs are bottom right")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", fontsize=8)
    _mark_random(fig, random_init_encoders(meta))
    _fit_ticks(fig, ax.xaxis)
    _fit_ticks(fig, ax.yaxis)
    return fig


def histogram_figure(clip: np.ndarray, dino: np.ndarray, meta: CandidatesMeta, thresholds: Mapping[str, Any]) -> Any:
    """Both cosine distributions (all pairs as sampled, and the candidates), each over its own data's range."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, name, values, line in ((axes[0], "clip", clip, thresholds.get("clip")),
                                   (axes[1], "dino", dino, thresholds.get("dino"))):
        sampled = np.asarray(getattr(meta.sample, name), dtype=np.float64)
        lo, hi = view_range([sampled, values], [line])
        bins = np.linspace(lo, hi, HISTOGRAM_BINS + 1)
        if len(sampled):
            # the all-pairs distribution as its sampled quantiles, each holding an equal share of the pairs
            ax.hist(sampled, bins=bins, weights=np.full(len(sampled), 1.0 / len(sampled)),
                    alpha=0.6, color="#8c8c8c", label=f"all pairs (sample of {meta.sample.pairs:,})")
        if len(values):
            ax.hist(values, bins=bins, weights=np.full(len(values), 1.0 / len(values)), alpha=0.6, color="#4c72b0",
                    label=f"candidates ({len(values):,})")
        if line is not None:
            ax.axvline(line, color="#c44e52", lw=1.2, label=f"threshold {line:.4f}")
        if len(sampled) or len(values):
            ax.set_yscale("log")
        else:
            _empty_note(ax, "no pairs: the search sampled none and found no candidates")
        ax.set_xlim(lo, hi)
        ax.set_xlabel(f"{'CLIP' if name == 'clip' else 'DINOv2'} cosine")
        ax.set_ylabel("share of pairs")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper left", fontsize=8)
    _mark_random(fig, random_init_encoders(meta))
    for ax in axes:
        _fit_ticks(fig, ax.xaxis)
    return fig


def _save(fig: Any, path: Path, random_encoders: Sequence[str]) -> None:
    metadata = {"Software": None, **({"Description": RANDOM_WEIGHTS_MARK} if random_encoders else {})}
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight", metadata=metadata)


def write_plots(
    directory: Path, clip: np.ndarray, dino: np.ndarray, meta: CandidatesMeta, thresholds: Mapping[str, Any],
    max_points: int, seed: int,
) -> list[Path]:
    """Write the scatter and histogram PNGs into `directory`; return their paths."""
    plt = _pyplot()
    directory.mkdir(parents=True, exist_ok=True)
    random_encoders = random_init_encoders(meta)
    written = []
    for name, fig in ((SCATTER_FILE, scatter_figure(clip, dino, meta, thresholds, max_points, seed)),
                      (HISTOGRAM_FILE, histogram_figure(clip, dino, meta, thresholds))):
        _save(fig, directory / name, random_encoders)
        plt.close(fig)
        written.append(directory / name)
    return written
