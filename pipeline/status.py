"""status: what the pipeline has produced so far, read from dvc.yaml and the metrics it declares.

Prints, per stage, whether its outputs exist and its headline counts, the steps that make an
unreleased build releasable (package's `todo`), then what to do next.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Sequence

import yaml

HEADLINES: dict[str, tuple[str, ...]] = {
    "ingest": ("inputs", "accepted", "duplicates", "blocked", "rejected"),
    "embed": ("images", "shards_written", "shards_reused"),
    "search": ("mode", "candidates", "near_duplicates_dropped"),
    "mine": ("clip_candidates", "thresholded", "pairs", "search"),
    "export": ("tasks", "display_images"),
    "gallery": ("shown", "thumbnails"),
    "validate": ("inputs", "accepted", "rejected"),
    "accept": ("written", "valid", "verified", "accepted"),
    "gate": ("ran", "inputs", "dropped"),
    "package": ("status", "version", "packaged", "items"),
}


def stage_outputs(stage: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The (outs, metrics) paths a dvc.yaml stage declares."""

    def paths(entries: list[Any]) -> list[str]:
        return [next(iter(e)) if isinstance(e, dict) else str(e) for e in entries or []]

    return paths(stage.get("outs", [])), paths(stage.get("metrics", []))


def report(dvc_yaml: Path) -> list[str]:
    """Lines describing each stage's outputs and metrics."""
    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]
    root = dvc_yaml.parent
    lines = []
    random_init: set[str] = set()
    todo: list[str] = []
    for name, stage in stages.items():
        outs, metrics = stage_outputs(stage)
        missing = [o for o in outs if not (root / o).exists()]
        state = "missing " + ", ".join(missing) if missing else "ok"
        counts = []
        for metrics_path in metrics:
            path = root / metrics_path
            if path.exists():
                data = json.loads(path.read_text())
                counts += [f"{k}={data[k]}" for k in HEADLINES.get(name, ()) if k in data]
                random_init.update(data.get("random_init_encoders") or [])
                todo += [f"  {name}: {data.get('version')} is unreleased; to release it: {step}" for step in data.get("todo") or []]
        lines.append(f"  {name:<14} {state:<8} {' '.join(counts)}  → {', '.join(outs + metrics)}")
    if random_init:
        lines.append(f"  NOTE: encoders with RANDOM weights were used ({', '.join(sorted(random_init))}): "
                     "the pairs demonstrate the pipeline, not CLIP-blindness.")
    return lines + todo


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: `clipblind status [--dvc-yaml dvc.yaml]`."""
    parser = argparse.ArgumentParser(prog="clipblind status", description=__doc__.splitlines()[0])
    parser.add_argument("--dvc-yaml", default="dvc.yaml")
    args = parser.parse_args(argv)
    print("clipblind pipeline status:")
    print("\n".join(report(Path(args.dvc_yaml))))
    print("next: review the pairs in data/gallery/index.html, then annotate them in Label Studio "
          "(README: 'Annotate'); `dvc repro` after each pull packages what was accepted.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
