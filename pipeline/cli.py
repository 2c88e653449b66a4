"""The `clipblind` command: one subcommand per stage, each the same `main(argv)` that
`python -m pipeline.<stage>` runs."""

from __future__ import annotations

import difflib
import importlib
import sys
from collections.abc import Sequence

from pipeline import __version__
from pipeline.core.errors import Main, quiet_broken_pipe, run_command

# (subcommand, module, one-line help), in pipeline order; modules load lazily so `--help` stays fast.
_COMMANDS: list[tuple[str, str, str]] = [
    ("sample-corpus", "pipeline.sample_corpus", "generate the deterministic demo corpus"),
    ("ingest", "pipeline.ingest", "corpus → images table, rejects, metrics"),
    ("embed", "pipeline.embed", "images → CLIP and DINOv2 embedding shards"),
    ("search", "pipeline.search", "embeddings → candidate pairs above the recall threshold (exact or partitioned)"),
    ("mine", "pipeline.mine", "candidates → CLIP-blind pairs (thresholds, selection) and funnel metrics"),
    ("calibrate", "pipeline.calibrate", "candidates → threshold grid, quantiles and plots"),
    ("gallery", "pipeline.gallery", "pairs → self-contained HTML gallery for review"),
    ("export", "pipeline.export", "pairs → display images and Label Studio tasks"),
    ("labelstudio", "annotation.labelstudio.server", "start/stop the local Label Studio; add annotator accounts"),
    ("draft", "annotation.draft", "tasks → a VLM's question drafts, pushed as pre-filled forms"),
    ("push", "annotation.push", "tasks (+ drafts) → the Label Studio question-writing project"),
    ("pull", "annotation.pull", "Label Studio project → versioned export snapshot"),
    ("validate", "annotation.validate", "writing snapshot → annotations table with reject reasons"),
    ("feedback", "annotation.feedback", "validate's reject reasons → the writing tasks, for their writers"),
    ("push-verification", "annotation.push_verification", "valid questions → the Label Studio verification project"),
    ("accept", "annotation.accept", "verified questions + adjudication → accepted pairs"),
    ("adjudicate", "annotation.adjudication", "merge disputed questions into the lead's adjudication file"),
    ("gate", "pipeline.gate", "accepted questions → blind-gate flags: those a VLM answers without the right image"),
    ("diagnose", "pipeline.diagnose", "why models fail, per question, on the items the release will hold: shuffles, encoders vs VLM, text audits"),
    ("package", "pipeline.package", "accepted annotations + images → versioned benchmark release"),
    ("verify", "pipeline.commands.verify", "recompute a release's SHA256SUMS: changed, missing, extra files"),
    ("remove", "pipeline.commands.remove", "take items out of a release (takedown) as a new version"),
    ("tag", "pipeline.commands.tag", "git-tag a verified release as <name>@v<version>"),
    ("publish", "pipeline.commands.publish", "push a verified release to the Hugging Face Hub as a tagged revision"),
    ("evaluate", "pipeline.evaluate", "score CLIP encoders and VLMs on a release, MMVP or MMVP-VLM folder"),
    ("status", "pipeline.commands.status", "what the pipeline has produced so far"),
    ("bench", "pipeline.commands.bench", "benchmarks: speed as ratios measured in one run"),
]
COMMANDS: dict[str, tuple[str, str]] = {name: (module, help_) for name, module, help_ in _COMMANDS}
if len(COMMANDS) != len(_COMMANDS):  # two modules must never claim one subcommand
    raise RuntimeError("duplicate clipblind subcommand names in pipeline/cli.py")


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: clipblind <command> [options]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `clipblind <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch `clipblind <command> ...` to the command's module; its errors read `clipblind <command>: ...`."""
    try:
        code = _dispatch(list(sys.argv[1:] if argv is None else argv))
        sys.stdout.flush()  # here, so a reader that went away is seen inside the try
        return code
    except BrokenPipeError:  # `clipblind --help | head -1`
        return quiet_broken_pipe()


def _dispatch(args: list[str]) -> int:
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0
    if args[0] in ("-V", "--version"):
        print(f"clipblind {__version__}")
        return 0
    if args[0] not in COMMANDS:
        close = difflib.get_close_matches(args[0].replace("_", "-"), list(COMMANDS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        print(f"clipblind: unknown command {args[0]!r}{hint}; `clipblind --help` lists the commands", file=sys.stderr)
        return 2
    return run_command(_imported(COMMANDS[args[0]][0]), args[0], args[1:])


def _imported(module: str) -> Main:
    """The `main` of `module`, imported when called: a missing extra is then reported like any error."""

    def main(argv: Sequence[str] | None) -> int | None:
        return importlib.import_module(module).main(argv)

    return main


if __name__ == "__main__":
    raise SystemExit(main())
