"""evaluate: score CLIP-family encoders and vision-language models on a benchmark folder.

Inputs: a release folder, or an original MMVP folder (`Questions.csv` + `MMVP Images/`), or an
MMVP-VLM folder (`Questions.csv` + `MLLM_VLM Images/`); params section `evaluate` (a list of
open_clip encoders and a list of VLM backends).
Outputs: a results JSON (DVC metrics), a markdown table and an SVG chart of pair accuracy per
pattern (each path given, or else `evaluate/<folder name>/results.json`, `table.md`, `chart.svg`);
the diagnostics of the same models (`pipeline.diagnostics`: shuffles, the encoder-vs-VLM 2x2 with
the `evaluate.clip` encoders and each local VLM's own vision tower, the text-side audits): their
tables (`diagnostics/`, one parquet per table, predictions included), a section of the markdown
table, and two SVG charts (`shuffle.svg`, `buckets.svg`); a response cache per VLM (JSONL), so an
interrupted run resumes without repeating calls.
Metrics: per model, question and pair accuracy overall and per pattern, with chance stated;
pairs without statements (CLIP) or without images are counted, not hidden.

Protocols (see `pipeline.vlm.scoring`): VLMs get the fixed prompt `vlm.PROMPT` per image and a pair
scores when both answers are right; CLIP encoders are scored as MMVP-VLM's script does (each
statement, "a photo of <statement>", against the pair's two images), with the reverse beside.
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core import patterns
from pipeline.core.atomic import write_bytes
from pipeline.core.config import command_params
from pipeline.core.report import RANDOM_WEIGHTS_MARK, progress, summary, warn, write_headline, write_metrics
from pipeline.diagnostics import report as diagnostics_report
from pipeline.diagnostics.features import OpenClipFeatures
from pipeline.diagnostics.run import diagnose, write_diagnostics
from pipeline.embedding.encoders import OpenClipEncoder, load_encoders
from pipeline.images.decode import decode
from pipeline.params import DiagnoseParams, EncoderParams, EvaluateParams
from pipeline.release import folder as release
from pipeline.release import mmvp
from pipeline.vlm import scoring
from pipeline.vlm.backends import Backend, build_prompt, cached_backend, load_backend
from pipeline.vlm.pairs import EvalPair, pairs_from_items

STAGE = "evaluate"
CACHE_DIR = ".cache/evaluate"  # VLM reply caches; dvc.yaml and README name the same folder
UNLABELLED = "unlabelled"  # MMVP's Questions.csv carries no pattern per question
DEFAULT_OUT = "evaluate"  # outputs not named on the command line go to DEFAULT_OUT/<folder name>/
DEFAULT_FILES = ("results.json", "table.md", "chart.svg", "shuffle.svg", "buckets.svg", "diagnostics")  # their names there


def detect_format(folder: Path) -> str:
    """Which layout a folder holds: release, mmvp or mmvp_vlm."""
    if (folder / release.PARQUET_PATH).exists() or release.is_awaiting(folder):
        return "release"
    if (folder / mmvp.MMVP_IMAGES).is_dir():
        return "mmvp"
    if (folder / mmvp.VLM_IMAGES).is_dir():
        return "mmvp_vlm"
    raise mmvp.LayoutError(
        f"{folder} is not a release folder, an MMVP folder ('{mmvp.MMVP_IMAGES}/') or an MMVP-VLM folder "
        f"('{mmvp.VLM_IMAGES}/')"
    )


def load_pairs(folder: str | Path, fmt: str = "auto") -> list[EvalPair]:
    """The pairs of a benchmark folder in its own order."""
    root = Path(folder)
    fmt = detect_format(root) if fmt == "auto" else fmt
    if fmt == "release":
        return _release_pairs(root)
    if fmt == "mmvp":
        return _mmvp_pairs(root)
    if fmt == "mmvp_vlm":
        return _vlm_pairs(root)
    raise mmvp.LayoutError(f"unknown format {fmt!r}; use auto, release, mmvp or mmvp_vlm")


def _pattern_name(name: str) -> str:
    """A pattern given in any spelling (key, paper, MMVP-VLM type), reported by the paper's name.

    A name that is none of the nine (a foreign folder's own type) is reported as written.
    """
    try:
        return patterns.lookup(name).paper
    except patterns.PatternError:
        return name


def _release_pairs(root: Path) -> list[EvalPair]:
    if release.is_awaiting(root):
        return []  # no accepted annotations yet: nothing to score
    return pairs_from_items(sorted(release.read_items(root), key=lambda i: i["mmvp_index"]))


def _read_optional(path: Path) -> bytes | None:
    return path.read_bytes() if path.exists() else None


def _mmvp_pairs(root: Path) -> list[EvalPair]:
    rows = mmvp.read_mmvp(root)
    if len(rows) % 2:
        raise mmvp.LayoutError(f"{root / mmvp.QUESTIONS} has {len(rows)} rows: MMVP pairs consecutive rows, so it must be even")
    pairs = []
    for position in range(0, len(rows), 2):
        first, second = rows[position], rows[position + 1]
        # MMVP's own scripts take the image number from the row position, not the Index cell
        images = tuple(_read_optional(root / mmvp.mmvp_image_path(position + k + 1)) for k in (0, 1))
        pairs.append(EvalPair(f"mmvp-{position + 1}", UNLABELLED, first.question, mmvp.parse_options(first.options),
                              (first.answer, second.answer), images))  # type: ignore[arg-type]
    return pairs


def _vlm_pairs(root: Path) -> list[EvalPair]:
    rows = mmvp.read_vlm(root)
    by_id = {r.question_id: r for r in rows}
    pairs = []
    for first in rows:
        if first.question_id % 2 == 0:
            continue
        second = by_id.get(first.question_id + 1)
        if second is None:
            raise mmvp.LayoutError(f"MMVP-VLM question {first.question_id} has no partner {first.question_id + 1}")
        images = tuple(_read_optional(root / mmvp.vlm_image_path(r.question_id, r.type)) for r in (first, second))
        pairs.append(EvalPair(f"vlm-{first.question_id}", _pattern_name(first.type), None, None, None, images,  # type: ignore[arg-type]
                              (first.statement, second.statement)))
    return pairs


# ---------------------------------------------------------------- CLIP-family encoders


class ClipScorer:
    """An open_clip model's image and text towers (weights resolved as the embed stage does)."""

    def __init__(self, params: EncoderParams, encoder: OpenClipEncoder | None = None) -> None:
        self.encoder = encoder or OpenClipEncoder("clip", params)
        self.features = OpenClipFeatures(self.encoder)  # the same towers as the diagnostics see them
        self.name = self.features.name
        self.random_init = self.encoder.random_init

    def images(self, images: Sequence[bytes]) -> np.ndarray:
        """L2-normalised image embeddings of encoded images (canonical decode first)."""
        import torch

        batch = torch.stack([self.encoder.preprocess(decode(i).image) for i in images])
        return self.encoder.encode(batch)

    def texts(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised text embeddings (the text tower as `OpenClipFeatures` runs it, on the model's device)."""
        vectors = self.features.texts(texts)
        assert vectors is not None  # an open_clip model always has a text tower
        return vectors


def load_clip_scorers(specs: Sequence[EncoderParams]) -> list[ClipScorer]:
    """A scorer per `evaluate.clip` entry; one error names every entry whose weights cannot be had."""
    for i, p in enumerate(specs):
        if p.kind != "open_clip":
            raise ValueError(f"evaluate.clip[{i}] ({p.model!r}) has kind {p.kind!r}: set kind: open_clip "
                             "(its image and text towers are scored)")
    encoders = load_encoders({f"evaluate.clip[{i}] {p.model}": p for i, p in enumerate(specs)})
    return [ClipScorer(p, e) for p, e in zip(specs, encoders.values())]  # type: ignore[arg-type]


def evaluate_clip(pairs: Sequence[EvalPair], scorer: ClipScorer) -> dict[str, Any]:
    """MMVP-VLM scores of one encoder on the pairs that have both statements and both images."""
    scored, without = [], Counter[str]()
    missing_images = 0
    for pair in progress(pairs, desc=f"clip {scorer.name}", unit="pair"):
        if not all(pair.statements):
            without[pair.pattern] += 1
            continue
        if not all(i is not None for i in pair.images):
            missing_images += 1
            continue
        image_vectors = scorer.images(pair.images)  # type: ignore[arg-type]
        text_vectors = scorer.texts([scoring.CLIP_TEXT.format(statement=s) for s in pair.statements])
        sim = image_vectors @ text_vectors.T
        scored.append(scoring.PairSimilarity(pair.pair_id, pair.pattern, ((float(sim[0, 0]), float(sim[0, 1])),
                                                                          (float(sim[1, 0]), float(sim[1, 1])))))
    result = scoring.score_clip(scored, dict(without))
    result.update({"kind": "clip", "random_init": scorer.random_init, "pairs_missing_images": missing_images})
    return result


# ---------------------------------------------------------------- vision-language models


def ask_vlm(backend: Backend, pair: EvalPair, member: int) -> str | None:
    """The option the model chose for one image of a pair, with the fixed prompt."""
    assert pair.question is not None and pair.options is not None
    reply = backend.ask(build_prompt(pair.question, *pair.options), pair.images[member])
    return scoring.extract_answer(reply, pair.options)


def evaluate_vlm(pairs: Sequence[EvalPair], backend: Backend) -> dict[str, Any]:
    """Question and pair accuracy of one VLM on the pairs that have questions and both images."""
    results = []
    missing_images = no_question = 0
    for pair in progress(pairs, desc=f"vlm {backend.name}", unit="pair"):
        if pair.question is None or pair.answers is None:
            no_question += 1
            continue
        if not all(i is not None for i in pair.images):
            missing_images += 1
            continue
        for member, name in enumerate(release.MEMBERS):
            results.append(scoring.QuestionResult(pair.pair_id, name, pair.pattern, pair.answers[member],
                                                  ask_vlm(backend, pair, member)))
    result = scoring.score_questions(results)
    result.update({"kind": "vlm", "pairs_missing_images": missing_images, "pairs_without_questions": no_question,
                   "prompt": build_prompt("{question}", "{option_a}", "{option_b}")})
    return result


# ---------------------------------------------------------------- reports


def pattern_columns(results: dict[str, Any]) -> list[str]:
    """The patterns any model was scored on: the nine in `pipeline.patterns.PATTERNS` order, then any
    other name (MMVP's `unlabelled`, a foreign folder's own type) in the order the results first name it."""
    return patterns.in_order(p for r in results["models"].values() for p in r["per_pattern"])


def markdown_table(results: dict[str, Any]) -> str:
    """A markdown table: one row per model, pair accuracy overall and per pattern (in pattern order); below it,
    the models with random weights and, when nothing was scored, why."""
    columns = pattern_columns(results)
    header = ["model", "kind", "question acc.", "pair acc.", *columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, r in results["models"].items():
        cells = [name.replace("|", "\\|"), r["kind"], _pct(r.get("question_accuracy")), _pct(r["pair_accuracy"])]
        cells += [_pct(r["per_pattern"].get(p, {}).get("pair_accuracy")) for p in columns]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("| chance | | 50.0 | 25.0 |" + " |" * len(columns))
    random_models = random_weight_models(results)
    if random_models:
        lines += ["", f"**{RANDOM_WEIGHTS_MARK}**: {', '.join(random_models)}"]
    empty = why_unscored(results)
    if empty:
        lines += ["", empty]
    return "\n".join(lines) + "\n"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def random_weight_models(results: dict[str, Any]) -> list[str]:
    """The models in `results` whose weights were randomly initialised (their scores check the pipeline only)."""
    return [name for name, r in results["models"].items() if r.get("random_init")]


def why_unscored(results: dict[str, Any]) -> str | None:
    """Why no model has a pair accuracy for any pattern, in words; None when some model scored."""
    models = results["models"]
    if any(v.get("pair_accuracy") is not None for r in models.values() for v in r["per_pattern"].values()):
        return None
    if not models:
        return "no model scored: evaluate.clip and evaluate.vlm are empty in params"
    if results["benchmark"].get("pairs") == 0:
        release_awaits = results["benchmark"].get("format") == "release"
        awaiting = " yet (the release awaits its first accepted annotations)" if release_awaits else ""
        return f"no model scored: the benchmark holds no pairs{awaiting}"
    reasons = []
    for name, r in models.items():
        unscorable = "without statements" if r["kind"] == "clip" else "without questions"
        missing = r.get("pairs_without_statements", 0) if r["kind"] == "clip" else r.get("pairs_without_questions", 0)
        reasons.append(f"{name}: {missing} pairs {unscorable}, {r.get('pairs_missing_images', 0)} without both images")
    return "no model scored: " + "; ".join(reasons)


CHAR_PX = 7  # the most a character of the chart's 11 px sans-serif takes, for wrapping and sizing


def _wrapped(text: str, width: int) -> list[str]:
    """`text` in lines of at most `width` characters, broken at spaces (a longer word keeps a line of its own)."""
    lines: list[str] = []
    for word in text.split():
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines


def svg_chart(results: dict[str, Any]) -> str:
    """An SVG bar chart of pair accuracy per pattern (in pattern order), one bar per model, chance as a line.

    Randomly initialised models are marked (`report.RANDOM_WEIGHTS_MARK` above the chart and beside
    their names); a chart with no bar says why (`why_unscored`).
    """
    models = list(results["models"])
    columns = pattern_columns(results)
    random_models = random_weight_models(results)
    banner = 26 if random_models else 0
    labels = [model + (" (random weights)" if model in random_models else "") for model in models]
    widest = max((len(label) for label in labels), default=0) * CHAR_PX
    left, top, plot_h = 50, 30 + banner, 210
    width = max(360, 90 * len(columns) + 120, widest + 70)
    plot_w = width - left - 20
    group = plot_w / max(1, len(columns))
    # a pattern's name wraps at words to fit its group; one legend line per model below the names
    names = {p: _wrapped(p, max(1, int(group * 0.9 / CHAR_PX))) for p in columns}
    name_lines = max((len(lines) for lines in names.values()), default=1)
    legend_y = top + plot_h + 14 * name_lines + 24
    height = legend_y + 16 * len(models)
    bar = group * 0.8 / max(1, len(models))
    colors = ["#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2"]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">']
    if random_models:
        parts.append(f'<rect x="0" y="0" width="{width}" height="22" fill="#c0392b"/>'
                     f'<text class="random-weights" x="{width / 2:.1f}" y="15" text-anchor="middle" fill="#fff" '
                     f'font-size="13" font-weight="bold">{_xml(RANDOM_WEIGHTS_MARK)} '
                     f'({len(random_models)} of {len(models)} models)</text>')
    parts.append(f'<text x="{left}" y="{16 + banner}">pair accuracy per pattern (chance 25 %)</text>')
    for g, pattern in enumerate(columns):
        for m, model in enumerate(models):
            value = results["models"][model]["per_pattern"].get(pattern, {}).get("pair_accuracy") or 0.0
            x = left + g * group + group * 0.1 + m * bar
            h = value * plot_h
            parts.append(f'<rect x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{bar:.1f}" height="{h:.1f}" '
                         f'fill="{colors[m % len(colors)]}"><title>{_xml(model)}: {_pct(value)} %</title></rect>')
        x = left + g * group + group / 2
        spans = "".join(f'<tspan x="{x:.1f}" y="{top + plot_h + 14 * (i + 1)}">{_xml(line)}</tspan>'
                        for i, line in enumerate(names[pattern]))
        parts.append(f'<text class="pattern" text-anchor="middle">{spans}</text>')
    chance_y = top + plot_h * 0.75
    parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{chance_y:.1f}" y2="{chance_y:.1f}" stroke="#888" stroke-dasharray="4"/>')
    parts.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + plot_h}" stroke="#000"/>')
    empty = why_unscored(results)
    if empty:
        lines = _wrapped(empty, int(plot_w * 0.9 / (CHAR_PX * 12 / 11)))  # at 12 px
        first_y = top + plot_h / 2 - 8 * (len(lines) - 1)
        spans = "".join(f'<tspan x="{left + plot_w / 2:.1f}" y="{first_y + 16 * i:.1f}">{_xml(line)}</tspan>'
                        for i, line in enumerate(lines))
        parts.append(f'<text class="empty" text-anchor="middle" font-size="12" fill="#a00">{spans}</text>')
    for m, label in enumerate(labels):
        parts.append(f'<text class="legend" x="{left}" y="{legend_y + 16 * m}" fill="{colors[m % len(colors)]}">'
                     f'{_xml(label)}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def evaluate(pairs: Sequence[EvalPair], clip_scorers: Iterable[ClipScorer], backends: Iterable[Backend],
             benchmark: dict[str, Any]) -> dict[str, Any]:
    """Results of every model on `pairs`."""
    models: dict[str, Any] = {}
    for scorer in clip_scorers:
        models[scorer.name] = evaluate_clip(pairs, scorer)
    for backend in backends:
        models[backend.name] = evaluate_vlm(pairs, backend)
    return {"benchmark": benchmark, "models": models}


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: `clipblind evaluate <folder> [--out DIR] [--results R.json] [--table T.md] [--chart C.svg]`."""
    parser = argparse.ArgumentParser(prog="clipblind evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="release folder, MMVP folder or MMVP-VLM folder")
    parser.add_argument("--format", default="auto", choices=("auto", "release", "mmvp", "mmvp_vlm"))
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", help=f"folder for the outputs not named below; default {DEFAULT_OUT}/<folder name>")
    results_file, table_file, chart_file, shuffle_file, buckets_file, tables_dir = DEFAULT_FILES
    parser.add_argument("--results", help=f"output results JSON (its full record); default <out>/{results_file}")
    parser.add_argument("--headline", help="output headline metrics JSON (what `dvc metrics show` lists: report.HEADLINES)")
    parser.add_argument("--table", help=f"output markdown table; default <out>/{table_file}")
    parser.add_argument("--chart", help=f"output SVG chart of pair accuracy per pattern; default <out>/{chart_file}")
    parser.add_argument("--shuffle-chart", help=f"output SVG: accuracy vs shuffle grid per pattern; default <out>/{shuffle_file}")
    parser.add_argument("--buckets-chart", help=f"output SVG: the encoder-vs-VLM 2x2 per model; default <out>/{buckets_file}")
    parser.add_argument("--diagnostics", help=f"output folder of the diagnostics tables; default <out>/{tables_dir}")
    parser.add_argument("--cache", default=CACHE_DIR, help=f"folder of VLM response caches (resume); default {CACHE_DIR}")
    args = parser.parse_args(argv)
    params = command_params(parser, args.params, STAGE, EvaluateParams)
    folder = Path(args.folder)
    out = Path(args.out) if args.out else Path(DEFAULT_OUT) / folder.resolve().name
    results_path, table_path, chart_path, shuffle_path, buckets_path, tables_path = (
        Path(given) if given else out / name for given, name in
        zip((args.results, args.table, args.chart, args.shuffle_chart, args.buckets_chart, args.diagnostics), DEFAULT_FILES))
    diagnose_params = command_params(parser, args.params, "diagnose", DiagnoseParams) if params.diagnostics else None
    fmt = detect_format(folder) if args.format == "auto" else args.format
    pairs = load_pairs(folder, fmt)
    benchmark = {"folder": str(folder), "format": fmt, "pairs": len(pairs)}
    if fmt == "release":
        benchmark["version"] = release.read_manifest(folder)["version"]
    scorers = load_clip_scorers(params.clip)
    for scorer in scorers:
        if scorer.random_init:
            warn(STAGE, f"{scorer.name} has RANDOMLY INITIALISED weights: its scores are a pipeline check, not a result")
    backends = []
    for p in params.vlm:
        backends.append(cached_backend(load_backend(p), args.cache))
    results = evaluate(pairs, scorers, backends, benchmark)
    table = markdown_table(results)
    if diagnose_params is not None:
        encoders = [scorer.features for scorer in scorers] if pairs else []  # loaded once, for scores and diagnostics
        found = diagnose(pairs, backends, encoders, diagnose_params)
        results["diagnostics"] = {**found.summary, "skipped": found.skipped}
        write_diagnostics(found, tables_path)
        asked = [b.name for b in backends]
        table += "\n" + diagnostics_report.markdown(found.summary, asked)
        write_bytes(shuffle_path, diagnostics_report.shuffle_svg(found.summary, asked).encode())
        write_bytes(buckets_path, diagnostics_report.buckets_svg(found.summary, asked).encode())
    write_metrics(results_path, results)
    write_headline(args.headline, STAGE, results)
    write_bytes(table_path, table.encode())
    write_bytes(chart_path, svg_chart(results).encode())
    line = ", ".join(f"{name}: pair {_pct(r['pair_accuracy'])} %" for name, r in results["models"].items())
    summary(STAGE, f"{len(pairs)} pairs ({fmt}) → {line or 'no models in params evaluate'} (chance 25 %) "
                   f"→ {results_path}, {table_path}, {chart_path}"
                   + (f", {shuffle_path}, {buckets_path}, {tables_path}" if diagnose_params else " (diagnostics off)"))
    return 0


if __name__ == "__main__":
    from pipeline.core.errors import run_command

    raise SystemExit(run_command(main, "evaluate"))
