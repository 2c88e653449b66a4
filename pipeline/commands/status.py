"""status: what the pipeline has produced so far, read from dvc.yaml and the stages' metrics.

Prints, per stage, whether its outputs exist and its headline metrics (what `dvc metrics show`
lists: report.HEADLINES), then what to do next, from
the state the metrics and the release record show: run the pipeline; annotate; verify or adjudicate
pending questions; make an unreleased build releasable (package's `todo`); tag a releasable build.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from annotation.tables import AWAITING_ADJUDICATION, AWAITING_VERIFICATION, NOT_RETURNED
from pipeline.core.report import HEADLINE_KEYS
from pipeline.release import folder as release


def stage_outputs(stage: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The (outs, metrics) paths a dvc.yaml stage declares."""

    def paths(entries: list[Any]) -> list[str]:
        return [next(iter(e)) if isinstance(e, dict) else str(e) for e in entries or []]

    return paths(stage.get("outs", [])), paths(stage.get("metrics", []))


def stage_records(stage: dict[str, Any]) -> list[str]:
    """The paths of a stage's full metrics records: its uncached JSON outs (the declared metrics hold
    only the headline, report.HEADLINES)."""
    return [path for entry in stage.get("outs", []) if isinstance(entry, dict)
            for path, options in entry.items()
            if path.endswith(".json") and (options or {}).get("cache") is False]


def _headline_order(key: str) -> tuple[int, str]:
    """Headline keys in HEADLINE_KEYS order, any other after them by name."""
    return (HEADLINE_KEYS.index(key) if key in HEADLINE_KEYS else len(HEADLINE_KEYS), key)


def report(dvc_yaml: Path) -> list[str]:
    """Lines describing each stage's outputs and metrics."""
    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]
    root = dvc_yaml.parent
    lines = []
    random_init: set[str] = set()
    for name, stage in stages.items():
        outs, metrics = stage_outputs(stage)
        missing = [o for o in outs if not (root / o).exists()]
        state = "missing " + ", ".join(missing) if missing else "ok"
        counts = []
        for metrics_path in metrics:
            if (root / metrics_path).exists():
                headline = json.loads((root / metrics_path).read_text())
                counts += [f"{k}={headline[k]}" for k in sorted(headline, key=_headline_order)]
        for record_path in stage_records(stage):
            if (root / record_path).exists():
                random_init.update(json.loads((root / record_path).read_text()).get("random_init_encoders") or [])
        lines.append(f"  {name:<14} {state:<8} {' '.join(counts)}  → {', '.join(outs + metrics)}")
    if random_init:
        lines.append(f"  NOTE: encoders with RANDOM weights were used ({', '.join(sorted(random_init))}): "
                     "the pairs demonstrate the pipeline, not CLIP-blindness.")
    return lines


def _stage_metrics(root: Path, stage: dict[str, Any] | None) -> dict[str, Any] | None:
    """The first metrics record a stage writes, if it exists."""
    for metrics_path in stage_records(stage or {}):
        if (root / metrics_path).exists():
            return json.loads((root / metrics_path).read_text())
    return None


def _release_folder(root: Path, stage: dict[str, Any] | None) -> str | None:
    """The package stage's output that holds a release manifest (relative to `root`)."""
    return next((o for o in stage_outputs(stage or {})[0] if (root / o / release.MANIFEST).exists()), None)


def _is_recorded(root: Path, folder: str) -> bool:
    """Whether the release in `folder` is in the record of released versions, with these very bytes."""
    manifest = release.read_manifest(root / folder)
    sums = release.file_sha256(root / folder / release.SUMS)
    return any(r["name"] == manifest["name"] and r["version"] == manifest["version"] and r["sums_sha256"] == sums
               for r in release.read_released(root / release.RELEASED_RECORD))


def next_steps(dvc_yaml: Path) -> list[str]:
    """What to do next, in order, from the state the accept and package metrics and the release record show."""
    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]
    root = dvc_yaml.parent
    package = _stage_metrics(root, stages.get("package"))
    if package is None:
        return ["`dvc repro`: the pipeline has not packaged anything yet (README: 'Run it')"]
    if not all((root / o).exists() for o in stage_outputs(stages.get("package") or {})[0]):
        # a fresh clone: the committed metrics describe a release this checkout does not hold yet
        return ["`dvc repro` (the demo: `make demo`): the pipeline's outputs are not in this checkout yet"]
    accept = _stage_metrics(root, stages.get("accept")) or {}
    pending = accept.get("pending_by_reason") or {}
    annotate = ("review the pairs in data/gallery/index.html, `clipblind push` them to Label Studio and write "
                "questions there (README: 'Annotate'), then `clipblind pull` and `dvc repro`")
    steps = []
    if not accept.get("written"):
        steps.append(annotate)
    returned = {reason: n for reason, n in sorted((accept.get("invalid_by_reason") or {}).items())
                if n and reason not in NOT_RETURNED}
    if returned:
        said = ", ".join(f"{n} {reason}" for reason, n in returned.items())
        steps.append(f"{sum(returned.values())} questions failed validation ({said}): `clipblind feedback` returns "
                     "each to its writer in Label Studio with the reason; once they are fixed, `clipblind pull` and "
                     "`dvc repro`")
    if pending.get(AWAITING_VERIFICATION):
        steps.append(f"{pending[AWAITING_VERIFICATION]} valid questions await verification: `clipblind push-verification`, "
                     "verifiers answer them in Label Studio, then `clipblind pull verification` and `dvc repro`")
    if pending.get(AWAITING_ADJUDICATION):
        steps.append(f"{pending[AWAITING_ADJUDICATION]} questions await adjudication: `clipblind adjudicate`, decide "
                     "each row of labels/adjudication.csv, then `dvc repro`")
    status, version = package.get("status"), package.get("version")
    folder = _release_folder(root, stages.get("package"))
    if status == release.AWAITING and not steps:
        steps.append("no pair is accepted yet: " + annotate)
    elif status == release.UNRELEASED:
        steps += [f"{version} is unreleased; to release it: {step}" for step in package.get("todo") or []]
        steps.append("then `dvc repro` builds the release as that version")
    elif status == release.RELEASABLE and folder is not None:
        try:
            recorded = _is_recorded(root, folder)
        except release.ReleaseError as err:  # a damaged record: say how to restore it, as tag would
            steps.append(str(err))
            return steps
        if not recorded:
            steps.append(f"{version} is releasable: commit what the run changed (`git add dvc.lock metrics labels data_cards && "
                         f"git commit`), then `clipblind tag {folder}` (or `clipblind publish {folder} --repo-id org/name`)")
        elif not steps:
            steps.append(f"{version} is released; for the next version annotate more pairs (" + annotate + ")")
    return steps


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: `clipblind status [--dvc-yaml dvc.yaml]`."""
    parser = argparse.ArgumentParser(prog="clipblind status", description=__doc__.splitlines()[0])
    parser.add_argument("--dvc-yaml", default="dvc.yaml")
    args = parser.parse_args(argv)
    print("clipblind pipeline status:")
    print("\n".join(report(Path(args.dvc_yaml))))
    print("next:\n" + "\n".join(f"  {n}. {step}" for n, step in enumerate(next_steps(Path(args.dvc_yaml)), start=1)))
    return 0


if __name__ == "__main__":
    from pipeline.core.errors import run_command

    raise SystemExit(run_command(main, "status"))
