"""draft: a VLM drafts one question per pair, which push offers writers as a pre-filled form.

Inputs: the task JSON the export stage writes (data/tasks.json), the display folder it fills;
params section `draft` (the VLM, as in `evaluate`, and the picture's panel height) and
`validate` (the rules a draft must pass, the same function validate applies to writers).
Output: the drafts file (default data/drafts.json, canonical JSON, `read_drafts`): the model's
name and, per pair_id, the draft's fields (`FIELDS`): the pattern by the name the writing form
shows, question, two options, the answer letter for each image and one statement per image.
The model sees one picture, image A and image B side by side under large "A" and "B" labels,
and the fixed prompt `PROMPT`; its reply must be a JSON object (code fences allowed). A reply
that is not, or whose question validate would reject (same answer for both images, identical
options, unknown pattern, empty question ...), is counted by reason and never becomes a draft.
Replies are cached (JSONL, keyed by model, prompt and picture), so a rerun asks nothing twice
and an interrupted run resumes.
Metrics: inputs (tasks), accepted (drafts), rejected (= inputs - accepted) by reason
(`REJECT_REASONS`), drafts per pattern key, model, model calls made by this run.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from annotation import validate
from annotation.tables import INVALID_REASONS, NOT_RETURNED
from pipeline.core import patterns
from pipeline.core.atomic import write_bytes
from pipeline.core.config import command_params
from pipeline.core.errors import ClipblindError
from pipeline.core.report import progress, summary, write_metrics
from pipeline.images.decode import DecodeError, decode
from pipeline.images.display import display_name
from pipeline.params import DraftParams, ValidateParams
from pipeline.vlm.backends import Backend, CachedBackend, load_backend

STAGE = "draft"
DRAFTS_VERSION = 1
CACHE_DIR = ".cache/draft"  # VLM reply caches, one JSONL file per model

# The writing form's controls a draft fills, in the order the model is asked for them.
CHOICE_FIELDS: tuple[str, ...] = ("pattern", "answer_a", "answer_b")
TEXT_FIELDS: tuple[str, ...] = ("question", "option_a", "option_b", "statement_a", "statement_b")
FIELDS: tuple[str, ...] = ("pattern", "question", "option_a", "option_b", "answer_a", "answer_b",
                           "statement_a", "statement_b")

# Why a pair gets no draft: its picture could not be made, the reply was no JSON object, or the
# question fails validate's rules (a draft never rejects a pair and is never about a stale pair).
MISSING_IMAGE = "missing_image"
NOT_JSON = "not_json"
REJECT_REASONS: tuple[str, ...] = (MISSING_IMAGE, NOT_JSON,
                                   *(r for r in INVALID_REASONS if r not in NOT_RETURNED))

PROMPT = (
    "The picture shows two photos side by side: image A on the left, image B on the right.\n"
    "Write one multiple-choice question about both images whose correct answer differs between A and B.\n"
    "Reply with one JSON object and nothing else, with these keys:\n"
    '"pattern": the visual pattern the question tests, exactly one of: {patterns};\n'
    '"question": the question; "option_a" and "option_b": its two different options;\n'
    '"answer_a": the correct option for image A, "(a)" or "(b)"; "answer_b": the correct option for image B, '
    "the other letter;\n"
    '"statement_a": one sentence true of image A only; "statement_b": one sentence true of image B only.'
)


class DraftError(ClipblindError, ValueError):
    """A drafts file that is not what `clipblind draft` writes."""


def prompt() -> str:
    """The one prompt every model gets, with the nine patterns by the names the writing form shows."""
    return PROMPT.format(patterns="; ".join(f'"{name}"' for name in patterns.PAPER_NAMES))


def side_by_side(image_a: bytes, image_b: bytes, height: int) -> bytes:
    """Image A and image B scaled to `height`, side by side under large "A" and "B" labels, as PNG."""
    from PIL import Image, ImageDraw, ImageFont

    label, gap = max(24, height // 8), max(8, height // 32)
    panels = []
    for data in (image_a, image_b):
        image = decode(data).image
        width = max(1, round(image.width * height / image.height))
        panels.append(image.resize((width, height), Image.Resampling.BICUBIC))
    canvas = Image.new("RGB", (sum(p.width for p in panels) + 3 * gap, height + label + 2 * gap), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=label)
    x = gap
    for name, panel in zip(("A", "B"), panels):
        draw.text((x + panel.width // 2, gap + label // 2), name, fill="black", font=font, anchor="mm")
        canvas.paste(panel, (x, label + 2 * gap))
        x += panel.width + gap
    out = io.BytesIO()
    canvas.save(out, format="PNG")
    return out.getvalue()


_FENCE = re.compile(r"```(?:json)?\s*(?P<body>.*?)```", re.DOTALL | re.IGNORECASE)
_LETTER = re.compile(r"^\(?\s*([ab])\s*\)?\.?$", re.IGNORECASE)


def parse_reply(reply: str) -> dict[str, str] | None:
    """The draft fields of a reply holding one JSON object (inside code fences or not); None if it holds none.

    A missing field is "", an answer written a, A or (A) is the answer letter, and a pattern in any of
    its spellings becomes the name the writing form shows; anything else is kept as written, for the
    rules to judge.
    """
    fenced = _FENCE.search(reply)
    text = fenced["body"] if fenced else reply
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end < start:
        return None
    try:
        obj = json.loads(text[start:end + 1])
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    draft = {name: str(obj.get(name) or "").strip() for name in FIELDS}
    for name in ("answer_a", "answer_b"):
        letter = _LETTER.match(draft[name])
        if letter:
            draft[name] = f"({letter[1].lower()})"
    key = validate.pattern_key(draft["pattern"])
    if key is not None:
        draft["pattern"] = patterns.by_key(key).paper
    return draft


def values_of(draft: dict[str, str]) -> dict[str, list[str]]:
    """A draft as the control values validate reads from an annotation (empty fields left out)."""
    return {name: [value] for name, value in draft.items() if value}


def check_reply(reply: str, params: ValidateParams) -> tuple[dict[str, str] | None, str | None, str | None]:
    """(draft, None, None) for a reply that drafts a valid question, else (None, reason, detail)."""
    draft = parse_reply(reply)
    if draft is None:
        return None, NOT_JSON, f"the reply holds no JSON object: {reply[:120]!r}"
    reason, detail = validate.check(values_of(draft), True, params)
    if reason is not None:
        return None, reason, detail
    return draft, None, None


def draft(tasks: list[dict[str, Any]], display_dir: Path, backend: Backend, params: DraftParams,
          rules: ValidateParams) -> tuple[dict[str, dict[str, str]], dict[str, Any]]:
    """A draft per task whose picture could be made and whose reply passes the rules, and the metrics."""
    drafts: dict[str, dict[str, str]] = {}
    reasons: Counter[str] = Counter()
    question = prompt()
    for task in progress(tasks, desc="draft", unit="pair"):
        data = task["data"]
        pair = data["pair_id"]
        try:
            shown = [(display_dir / display_name(str(data[f"{m}_id"]))).read_bytes() for m in ("image_a", "image_b")]
            picture = side_by_side(shown[0], shown[1], params.panel_height)
        except (KeyError, OSError, DecodeError) as err:
            reasons[MISSING_IMAGE] += 1
            print(f"[{STAGE}] pair {pair!r}: no picture ({type(err).__name__}: {err}): run `dvc repro export` "
                  "so that data/display holds both images")
            continue
        result, reason, detail = check_reply(backend.ask(question, picture), rules)
        if result is None:
            reasons[str(reason)] += 1
            print(f"[{STAGE}] pair {pair!r}: no draft ({reason}: {detail})")
            continue
        drafts[pair] = result
    per_pattern = Counter(patterns.lookup(d["pattern"]).key for d in drafts.values())
    metrics = {
        "inputs": len(tasks),
        "accepted": len(drafts),
        "rejected": sum(reasons.values()),
        "rejected_by_reason": {r: reasons.get(r, 0) for r in REJECT_REASONS},
        "drafts_per_pattern": {k: per_pattern.get(k, 0) for k in patterns.KEYS},
        "model": backend.name,
    }
    return dict(sorted(drafts.items())), metrics


def encode(model: str, drafts: dict[str, dict[str, str]]) -> bytes:
    """The canonical bytes of a drafts file."""
    body = {"version": DRAFTS_VERSION, "model": model, "drafts": drafts}
    return (json.dumps(body, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode()


def read_drafts(path: str | Path) -> tuple[str, dict[str, dict[str, str]]]:
    """(model, {pair_id: draft}) from a drafts file `clipblind draft` wrote."""
    body = json.loads(Path(path).read_text())
    if not isinstance(body, dict) or body.get("version") != DRAFTS_VERSION or not isinstance(body.get("drafts"), dict):
        raise DraftError(f"{path} is not a drafts file of version {DRAFTS_VERSION}: run `clipblind draft` again")
    for pair, fields in body["drafts"].items():
        if not isinstance(fields, dict) or set(fields) != set(FIELDS):
            raise DraftError(f"{path}: the draft of pair {pair!r} must have exactly the fields {list(FIELDS)}: "
                             "run `clipblind draft` again")
    return str(body["model"]), body["drafts"]


def still_valid(drafts: dict[str, dict[str, str]], rules: ValidateParams) -> tuple[dict[str, dict[str, str]], list[str]]:
    """The drafts that pass validate's check (a drafts file edited by hand may hold others), and a line
    naming each one left out, its reason and the fix."""
    kept, refused = {}, []
    for pair, fields in drafts.items():
        reason, detail = validate.check(values_of(fields), True, rules)
        if reason is None:
            kept[pair] = fields
        else:
            refused.append(f"draft for pair {pair!r} is not a valid question ({reason}: {detail}): "
                           "fix it in the drafts file or run `clipblind draft` again")
    return kept, refused


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: `clipblind draft [--tasks data/tasks.json] [--display data/display] [--out data/drafts.json]`."""
    parser = argparse.ArgumentParser(prog="clipblind draft", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--tasks", default="data/tasks.json")
    parser.add_argument("--display", default="data/display")
    parser.add_argument("--out", default="data/drafts.json", help="drafts file (push reads it)")
    parser.add_argument("--metrics", default="metrics/draft.json")
    parser.add_argument("--cache", default=CACHE_DIR, help=f"folder of VLM reply caches (resume); default {CACHE_DIR}")
    args = parser.parse_args(argv)
    params = command_params(parser, args.params, STAGE, DraftParams)
    rules = command_params(parser, args.params, "validate", ValidateParams)
    if params.vlm is None:
        raise ClipblindError(f"no model to draft with (draft.vlm is null in {args.params}): set draft.vlm as in "
                             "evaluate.vlm (a transformers model folder or an OpenAI-compatible endpoint)")
    if not Path(args.tasks).exists():
        raise ClipblindError(f"no task file at {args.tasks}: run `dvc repro export` first")
    tasks = json.loads(Path(args.tasks).read_text())
    backend = load_backend(params.vlm)
    cached = CachedBackend(backend, Path(args.cache) / (hashlib.sha256(backend.name.encode()).hexdigest()[:16] + ".jsonl"))
    drafts, metrics = draft(tasks, Path(args.display), cached, params, rules)
    metrics["calls"] = cached.calls
    write_bytes(args.out, encode(backend.name, drafts))
    write_metrics(args.metrics, metrics)
    summary(STAGE, f"{metrics['inputs']} pairs → {metrics['accepted']} drafts, {metrics['rejected']} without "
                   f"{ {k: v for k, v in metrics['rejected_by_reason'].items() if v} } ({cached.calls} model calls) "
                   f"→ {args.out}")
    return 0


if __name__ == "__main__":
    from pipeline.core.errors import run_command

    raise SystemExit(run_command(main, "draft"))
