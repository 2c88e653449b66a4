"""status: each stage's line shows its headline metrics (what `dvc metrics show` lists), and a note
when any stage's full record says encoders had random weights."""

import shutil

from pipeline.commands import status
from pipeline.core.report import write_headline, write_metrics
from tests.conftest import REPO


def test_each_stage_line_shows_the_headline_dvc_metrics_show_lists(tmp_path):
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    ingest = {"inputs": 364, "accepted": 360, "duplicates": 1, "blocked": 0, "rejected": 3, "rejected_by_reason": {"x": 3}}
    search = {"images": 360, "candidates": 52784, "random_init_encoders": ["clip", "dino"]}
    for stage, record in (("ingest", ingest), ("search", search)):
        write_metrics(tmp_path / f"metrics/{stage}.json", record)
        write_headline(tmp_path / f"metrics/headline/{stage}.json", stage, record)
    lines = status.report(tmp_path / "dvc.yaml")
    by_stage = {line.split()[0]: line for line in lines if not line.strip().startswith("NOTE")}
    assert " inputs=364 outputs=360 rejected=3 " in by_stage["ingest"] and "duplicates" not in by_stage["ingest"]
    assert " inputs=360 outputs=52784 " in by_stage["search"]
    assert "metrics/headline/ingest.json" in by_stage["ingest"]  # where the line's numbers come from
    assert "=" not in by_stage["mine"].split("→")[0]  # nothing written yet: no numbers
    assert lines[-1].strip().startswith("NOTE: encoders with RANDOM weights were used (clip, dino)")
