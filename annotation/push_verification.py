"""push-verification: valid questions → tasks of the verification project, without the writer's answers.

Inputs: the annotations table (validate), the display folder; params section `labelstudio`
(server, project title) and `accept.verifiers` (answers wanted per question).
Effect: the verification project (config annotation/verification.xml) on the same server gets
one task per valid question: the two images, the question and the two options. The writer's
answers and name are not in the task. Keyed by question_id, so pushing twice adds nothing; a
question no longer valid is handled like a re-mined pair (stale if answered, else deleted).
Metrics: inputs (valid questions), imported, already_present, stale_marked, stale_deleted.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from annotation import push
from annotation.labelstudio.client import Client
from annotation.labelstudio.roles import VERIFICATION, server
from annotation.labelstudio.server import load_params
from pipeline.core import schemas
from pipeline.core.config import command_params
from pipeline.core.report import summary, write_metrics
from pipeline.params import AcceptParams, LabelStudioParams

STAGE = "push-verification"
VERIFICATION_CONFIG = Path(__file__).with_name("verification.xml")
# Verifiers' own instructions: the writers' say the two answers must differ, which would steer a verifier.
VERIFICATION_GUIDELINES = Path(__file__).with_name("verification_guidelines.html")
TASK_FIELDS = ("question_id", "pair_id", "question", "option_a", "option_b")


def verification_tasks(annotations: pa.Table) -> list[dict[str, Any]]:
    """One verification task per valid question, in question_id order; no answers, no writer."""
    tasks = []
    for row in annotations.to_pylist():
        if row["valid"]:
            data = {k: row[k] for k in TASK_FIELDS}
            tasks.append({"data": {**data, "image_a": row["image_a_url"], "image_b": row["image_b_url"]}})
    return sorted(tasks, key=lambda t: t["data"]["question_id"])


def push_verification(
    client: Client, params: LabelStudioParams, annotations: pa.Table, display_dir: Path, verifiers: int
) -> dict[str, Any]:
    """Create or update the verification project and push a task per valid question; return metrics."""
    return push.sync(client, params.verification_project, VERIFICATION_CONFIG.read_text(),
                     VERIFICATION_GUIDELINES.read_text(), {"maximum_annotations": verifiers}, verification_tasks(annotations), display_dir, key="question_id")


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: `clipblind push-verification [--annotations data/annotations.parquet] [--display data/display]`."""
    parser = argparse.ArgumentParser(prog="clipblind push-verification", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--annotations", default="data/annotations.parquet")
    parser.add_argument("--display", default="data/display")
    parser.add_argument("--metrics", default="metrics/verify_push.json")
    args = parser.parse_args(argv)
    params = load_params(args.params, parser)
    verifiers = command_params(parser, args.params, "accept", AcceptParams).verifiers
    annotations = schemas.read_table(args.annotations, "annotations")
    metrics = push_verification(Client.from_params(params, VERIFICATION), params, annotations, Path(args.display), verifiers)
    write_metrics(args.metrics, metrics)
    summary(STAGE, f"{metrics['imported']} verification tasks imported, {metrics['already_present']} already there "
                   f"→ {server(params, VERIFICATION).url}/projects/{metrics['project_id']}")
    return 0


if __name__ == "__main__":
    from pipeline.core.errors import run_command

    raise SystemExit(run_command(main, "push-verification"))
