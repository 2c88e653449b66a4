"""calibrate: candidates → pair counts over a grid of thresholds, similarity quantiles, and plots.

Inputs: the images table and the candidates table of the search stage; params sections
`calibrate` (the grids) and `mine` (the chosen thresholds, drawn as lines in the plots).
Outputs: the calibration report (JSON, a DVC metric): the number of pairs with CLIP > c and
DINOv2 < d for every c, d of the grids (null where c lies below the search's recall threshold,
so the candidates cannot answer), the quantiles of both similarity distributions over all
pairs, and the resolved thresholds; and plots as PNG files (DVC plots): a CLIP-vs-DINOv2
scatter of the candidates with the threshold lines, and histograms of both distributions.
Choosing thresholds from the report needs no new products: `mine` reruns on the same candidates.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core import schemas
from pipeline.core.config import command_params
from pipeline.core.report import summary, write_headline, write_metrics
from pipeline.mining.candidates import CandidatesMeta, read_candidates
from pipeline.mining.plots import write_plots
from pipeline.mining.thresholds import ThresholdError, resolve_clip_threshold, resolve_dino_threshold
from pipeline.params import CalibrateParams, MineParams, Threshold

STAGE = "calibrate"
REPORTED_QUANTILES = (0.5, 0.9, 0.99, 0.999, 0.9999, 0.99999, 0.999999)


def threshold_grid(clip: np.ndarray, dino: np.ndarray, clip_grid: Sequence[float], dino_grid: Sequence[float], recall: float) -> list[list[int | None]]:
    """counts[a][b] = candidates with CLIP > clip_grid[a] and DINOv2 < dino_grid[b]; None below the recall threshold."""
    out: list[list[int | None]] = []
    for c in clip_grid:
        if c < recall:
            out.append([None] * len(dino_grid))
            continue
        d = np.sort(dino[clip > c])
        out.append([int(np.searchsorted(d, t, side="left")) for t in dino_grid])
    return out


def quantiles(clip: np.ndarray, meta: CandidatesMeta) -> dict[str, dict[str, float | None]]:
    """Quantiles over all pairs: CLIP exact from the candidates where they reach, else null; DINOv2 from the sample."""
    sample = meta.sample
    report: dict[str, dict[str, float | None]] = {"clip_exact": {}, "clip_sampled": {}, "dino_sampled": {}}
    for q in REPORTED_QUANTILES:
        key = f"{q:g}"
        try:
            report["clip_exact"][key] = round(resolve_clip_threshold(Threshold(quantile=q), clip, meta), 6)
        except ThresholdError:
            report["clip_exact"][key] = None
        if sample.clip:
            report["clip_sampled"][key] = round(float(np.interp(q, sample.grid, sample.clip)), 6)
            report["dino_sampled"][key] = round(float(np.interp(q, sample.grid, sample.dino)), 6)
    return report


def calibrate(clip: np.ndarray, dino: np.ndarray, meta: CandidatesMeta, params: CalibrateParams, mine_params: MineParams) -> dict[str, Any]:
    """The calibration report of a candidates table."""
    recall = meta.recall_clip_threshold
    try:
        chosen: dict[str, Any] = {
            "clip": resolve_clip_threshold(mine_params.clip_threshold, clip, meta),
            "dino": resolve_dino_threshold(mine_params.dino_threshold, meta),
        }
    except ThresholdError as err:
        chosen = {"clip": None, "dino": None, "error": str(err)}
    return {
        "candidates": int(len(clip)),
        "pairs_possible": meta.pairs_possible,
        "recall_clip_threshold": recall,
        "near_duplicates_dropped": meta.near_duplicates_dropped,
        "grid": {
            "clip": list(params.clip_grid),
            "dino": list(params.dino_grid),
            "pairs": threshold_grid(clip, dino, params.clip_grid, params.dino_grid, recall),
        },
        "quantiles": quantiles(clip, meta),
        "sample_pairs": meta.sample.pairs,
        "thresholds": chosen,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: `python -m pipeline.calibrate --images T --candidates C --report R --plots DIR`."""
    parser = argparse.ArgumentParser(prog="clipblind calibrate", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--images", required=True)
    parser.add_argument("--candidates", required=True)
    parser.add_argument("--report", required=True, help="output calibration JSON")
    parser.add_argument("--headline", help="output headline metrics JSON (what `dvc metrics show` lists: report.HEADLINES)")
    parser.add_argument("--plots", required=True, help="output folder of PNG plots")
    args = parser.parse_args(argv)
    params = command_params(parser, args.params, STAGE, CalibrateParams)
    mine_params = command_params(parser, args.params, "mine", MineParams)
    image_ids = schemas.read_table(args.images, "images").column("image_id").to_pylist()
    candidates, meta = read_candidates(args.candidates, image_ids, ["clip_sim", "dino_sim"])
    clip = candidates.column("clip_sim").to_numpy()
    dino = candidates.column("dino_sim").to_numpy()
    report = calibrate(clip, dino, meta, params, mine_params)
    write_metrics(args.report, report)
    write_headline(args.headline, STAGE, report)
    written = write_plots(Path(args.plots), clip, dino, meta, report["thresholds"], params.scatter_points, params.seed)
    summary(
        STAGE,
        f"{report['candidates']} candidates → {len(params.clip_grid)}×{len(params.dino_grid)} threshold grid in "
        f"{args.report}; plots: {', '.join(p.name for p in written)}",
    )
    return 0


if __name__ == "__main__":
    from pipeline.core.errors import run_command

    raise SystemExit(run_command(main, "calibrate"))
