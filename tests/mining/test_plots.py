"""The mining plots say what they mean: axes over the data's range, tick labels apart, random weights marked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.core.report import RANDOM_WEIGHTS_MARK
from pipeline.mining import plots
from pipeline.mining.candidates import CandidatesMeta, SimilaritySample
from pipeline.params import NearDuplicateGuard

GRID = tuple(float(q) for q in np.linspace(0.0, 1.0, 1001))
RECALL = 0.9


def _meta(random_init: bool, sample: bool = True) -> CandidatesMeta:
    """A footer like the demo's: all pairs lie in 0.72…1 (CLIP) and 0.48…1 (DINOv2), candidates above 0.9."""
    rng = np.random.default_rng(0)
    clip_all = np.sort(1.0 - rng.gamma(2.0, 0.02, 200_000).clip(0, 0.28))
    dino_all = np.sort(1.0 - rng.gamma(2.0, 0.05, 200_000).clip(0, 0.52))
    quantiles = (tuple(float(x) for x in np.quantile(clip_all, GRID)), tuple(float(x) for x in np.quantile(dino_all, GRID)))
    return CandidatesMeta(
        images_sha256="0" * 64,
        encoders={"clip": {"name": "clip", "random_init": random_init}, "dino": {"name": "dino", "random_init": False}},
        search={"pairs_possible": 200_000, "recall_clip_threshold": RECALL, "near_duplicates_dropped": 0, "mode": "exact"},
        near_duplicate=NearDuplicateGuard(clip=0.999, dino=0.999),
        sample=SimilaritySample(pairs=200_000 if sample else 0, seed=0, grid=GRID if sample else (),
                                clip=quantiles[0] if sample else (), dino=quantiles[1] if sample else ()),
    )


def _candidates() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    clip = rng.uniform(RECALL, 0.996, 5000)
    dino = (clip - 0.15 + rng.normal(0, 0.03, 5000)).clip(-1, 1)
    return clip, dino


THRESHOLDS = {"clip": 0.95, "dino": 0.9}


def _texts(fig) -> list[str]:
    return [t.get_text() for t in fig.texts]


def _assert_labels_apart(fig, axis) -> None:
    """The tick labels the PNG shows, measured as drawn: each ends before the next begins (by ≥ 3 px)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    lo, hi = sorted(axis.get_view_interval())
    labels = [t.label1 for t in axis.get_major_ticks() if lo <= t.get_loc() <= hi and t.label1.get_text()]
    assert len(labels) >= 3, [t.get_text() for t in labels]  # still an axis one can read values from
    horizontal = axis.axis_name == "x"
    spans = sorted((b.x0, b.x1) if horizontal else (b.y0, b.y1) for b in (t.get_window_extent(renderer) for t in labels))
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start - end >= 3, ([t.get_text() for t in labels], spans)


def test_histograms_span_the_data_keep_thresholds_inside_and_labels_apart() -> None:
    clip, dino = _candidates()
    meta = _meta(random_init=False)
    fig = plots.histogram_figure(clip, dino, meta, THRESHOLDS)
    for ax, values, sampled, line in zip(fig.axes, (clip, dino), (meta.sample.clip, meta.sample.dino),
                                         (THRESHOLDS["clip"], THRESHOLDS["dino"])):
        lo, hi = ax.get_xlim()
        data_lo, data_hi = min(min(sampled), values.min()), max(max(sampled), values.max())
        assert lo < data_lo and hi > data_hi and lo < line < hi  # every bar and the threshold inside
        # ... and the axis is the data's, not −1…1: at most 15 % of it empty margin
        assert (data_hi - data_lo) / (hi - lo) > 0.85, (lo, hi, data_lo, data_hi)
        _assert_labels_apart(fig, ax.xaxis)
    assert not any(RANDOM_WEIGHTS_MARK in t for t in _texts(fig))  # real weights: no mark


def test_a_threshold_far_from_the_data_is_still_inside_the_view() -> None:
    clip, dino = _candidates()
    fig = plots.histogram_figure(clip, dino, _meta(random_init=False), {"clip": 0.3, "dino": 0.1})
    assert fig.axes[0].get_xlim()[0] < 0.3 and fig.axes[1].get_xlim()[0] < 0.1
    for ax in fig.axes:
        _assert_labels_apart(fig, ax.xaxis)


def test_scatter_shows_both_thresholds_and_its_labels_apart() -> None:
    clip, dino = _candidates()
    fig = plots.scatter_figure(clip, dino, _meta(random_init=False), {"clip": 0.95, "dino": 0.5}, 1000, 0)
    ax = fig.axes[0]
    assert ax.get_xlim()[0] <= RECALL and ax.get_xlim()[0] < 0.95 < ax.get_xlim()[1]
    assert ax.get_ylim()[0] < 0.5 < ax.get_ylim()[1]
    _assert_labels_apart(fig, ax.xaxis)
    _assert_labels_apart(fig, ax.yaxis)


def test_random_weights_are_marked_in_every_png(tmp_path: Path) -> None:
    clip, dino = _candidates()
    meta = _meta(random_init=True)
    written = plots.write_plots(tmp_path, clip, dino, meta, THRESHOLDS, 1000, 0)
    assert [p.name for p in written] == [plots.SCATTER_FILE, plots.HISTOGRAM_FILE]
    for path in written:
        with Image.open(path) as image:
            assert image.text.get("Description") == RANDOM_WEIGHTS_MARK, path
    # drawn, not only stated: a banner in the figure, inside the saved picture, above the axes
    for fig in (plots.scatter_figure(clip, dino, meta, THRESHOLDS, 1000, 0), plots.histogram_figure(clip, dino, meta, THRESHOLDS)):
        marks = [t for t in fig.texts if t.get_text().startswith(RANDOM_WEIGHTS_MARK)]
        assert len(marks) == 1 and "clip" in marks[0].get_text() and marks[0].get_visible()
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        saved = fig.get_tightbbox(renderer).transformed(fig.dpi_scale_trans)  # what bbox_inches="tight" keeps, in px
        mark = marks[0].get_window_extent(renderer)
        assert saved.x0 <= mark.x0 and mark.x1 <= saved.x1 and saved.y0 <= mark.y0 and mark.y1 <= saved.y1 + 0.5
        assert mark.height >= 12  # big enough to read
        assert all(mark.y0 >= ax.get_window_extent(renderer).y1 for ax in fig.axes)  # covers no data
    # the same plots with real weights carry no mark anywhere
    real = plots.write_plots(tmp_path / "real", clip, dino, _meta(random_init=False), THRESHOLDS, 1000, 0)
    for path in real:
        with Image.open(path) as image:
            assert "Description" not in image.text


@pytest.mark.parametrize("empty", ["no candidates", "nothing at all"])
def test_an_empty_plot_says_why(empty: str) -> None:
    none = np.empty(0)
    meta = _meta(random_init=False, sample=empty == "no candidates")
    scatter = plots.scatter_figure(none, none, meta, {"clip": None, "dino": None}, 1000, 0)
    assert any("no candidates" in t.get_text() for t in scatter.axes[0].texts)
    histograms = plots.histogram_figure(none, none, meta, {"clip": None, "dino": None})
    notes = [t.get_text() for ax in histograms.axes for t in ax.texts]
    if empty == "nothing at all":
        assert len(notes) == 2 and all(n.startswith("no pairs") for n in notes)
    else:  # the sampled distribution is still drawn
        assert notes == [] and all(ax.patches for ax in histograms.axes)
