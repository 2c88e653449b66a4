"""calibrate: the threshold grid equals brute force counts; the plots are real PNG images."""

import json

import numpy as np
from PIL import Image

from pipeline import calibrate
from tests.test_mine import brute_force, planted, world  # noqa: F401  (world is a fixture)


def test_grid_counts_quantiles_and_plots(world, tmp_path):  # noqa: F811
    clip, dino = planted(seed=4, n_random=300, dim=32)  # dim 32: random pairs reach the lower CLIP values too
    ids, *_ = world(clip, dino, {"recall_clip_threshold": 0.5, "near_duplicate": {"clip": 0.9999, "dino": 0.9999}})
    assert calibrate.main(["--params", str(tmp_path / "params.yaml"), "--images", str(tmp_path / "images.parquet"),
                           "--candidates", str(tmp_path / "candidates.parquet"), "--report", str(tmp_path / "cal.json"),
                           "--plots", str(tmp_path / "plots")]) == 0
    report = json.loads((tmp_path / "cal.json").read_text())
    grid = report["grid"]
    assert grid["clip"] == [0.8, 0.9, 0.95] and grid["dino"] == [0.5, 0.9, 0.99]
    for a, c in enumerate(grid["clip"]):
        for b, d in enumerate(grid["dino"]):
            assert grid["pairs"][a][b] == len(brute_force(clip, dino, c, d)), (c, d)
    assert sum(grid["pairs"][0]) > sum(grid["pairs"][2]) > 0
    assert report["thresholds"] == {"clip": 0.95, "dino": 0.6}
    q = report["quantiles"]
    assert q["clip_exact"]["0.5"] is None  # below the recall threshold: the candidates cannot answer
    assert q["clip_exact"]["0.9999"] is not None and q["dino_sampled"]["0.5"] is not None
    for name in ("clip_vs_dino.png", "similarity_histograms.png"):
        path = tmp_path / "plots" / name
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width > 300 and image.height > 200
            assert len(np.unique(np.asarray(image.convert("L")))) > 10  # drawn, not blank


def test_grid_rows_below_the_recall_threshold_are_null():
    clip = np.array([0.91, 0.95, 0.99], np.float32)
    dino = np.array([0.1, 0.5, 0.9], np.float32)
    assert calibrate.threshold_grid(clip, dino, [0.85, 0.9, 0.95], [0.5, 1.0], recall=0.9) == [[None, None], [1, 3], [0, 1]]
