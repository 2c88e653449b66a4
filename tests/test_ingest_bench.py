"""The ingest benchmark runs end to end on a tiny corpus (its speed is measured by `clipblind bench ingest`, not here)."""

import json

from pipeline.commands.benchmarks import ingest as bench


def test_benchmark_reports_rates_and_ratios(tmp_path):
    out = tmp_path / "report.json"
    assert bench.main(["--images", "30", "--size", "32x24", "--workers", "1", "--repeats", "1",
                       "--corpus", str(tmp_path / "corpus"), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["images"] == 30 and set(report["runs"]) == {"ingest_w1", "ingest_w1_state"}
    for run in report["runs"].values():
        assert run["images_per_s"] > 0 and run["ratio_to_bare"] > 0
    assert len(list((tmp_path / "corpus").rglob("*.jpg"))) == 30
