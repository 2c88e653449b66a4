"""The diagnostics as people read them: markdown tables and two SVG charts, from `summary.summarise`'s output.

* `markdown(summary)`: the 2x2 per model and encoder, shuffle sensitivity per pattern beside the no-image and
  blank-image accuracy, gain / leakage / bias-aligned errors, encoder verdicts, text-bias flags.
* `shuffle_svg(summary)`: accuracy against the grid size g per pattern, one panel per model (g = 1 is the
  unshuffled image), the no-image and blank-image accuracy as dashed lines, chance dotted.
* `buckets_svg(summary)`: the 2x2 per model and encoder, pairs per cell.
A chart with nothing to draw says why.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.core import patterns
from pipeline.diagnostics import records
from pipeline.vlm.scoring import CHANCE_QUESTION

BUCKET_TITLES = {
    records.SEEN_AND_ANSWERED: "encoder separates, VLM right",
    records.HIDDEN_IN_PLAIN_SIGHT: "encoder separates, VLM wrong (hidden in plain sight)",
    records.ANSWERED_BLIND: "encoder cannot, VLM right",
    records.ENCODER_BLIND: "encoder cannot, VLM wrong (encoder-blind)",
}
NO_MODEL = "no VLM scored (evaluate.vlm is empty): the shuffle and 2x2 diagnostics need one"
NO_QUESTIONS = "no question to ask the models yet ({models})"


def why_no_model(configured: Sequence[str]) -> str:
    """Why no model figures show: none configured, or models configured and no question to ask them."""
    return NO_QUESTIONS.format(models=", ".join(configured)) if configured else NO_MODEL
COLORS = ["#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#ff9da6", "#9d755d", "#bab0ac"]


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _share(value: float | None) -> str:
    """A share as a percentage with its sign, or "n/a" (e.g. the failures of a model that failed no pair)."""
    return "n/a" if value is None else f"{100 * value:.1f} %"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")




def markdown(summary: Mapping[str, Any], configured: Sequence[str] = ()) -> str:
    """The diagnostics as markdown sections (`configured`: the models asked, named when they had nothing to answer)."""
    out = ["## Why models fail", ""]
    models = summary["models"]
    if not models:
        out += [why_no_model(configured) + ".", ""]
    else:
        out += ["### Encoder vs VLM, per pair (the 2x2)", "",
                "| model | encoder | pairs | " + " | ".join(BUCKET_TITLES[b] for b in records.BUCKETS)
                + " | failures hidden in plain sight | failures encoder-blind |",
                "|---|---|---|" + "---|" * (len(records.BUCKETS) + 2)]
        for model, m in models.items():
            for encoder, e in m["encoders"].items():
                cells = [str(e["buckets"][b]) for b in records.BUCKETS]
                out.append(f"| {_cell(model)} | {_cell(encoder)} | {e['pairs']} | " + " | ".join(cells)
                           + f" | {_share(e['hidden_share'])} | {_share(e['encoder_blind_share'])} |")
        out += ["", "### Shuffle sensitivity, beside the same model's no-image and blank-image accuracy", ""]
        for model, m in models.items():
            grids = [s["grid"] for s in m["pixel_shuffle"]]
            token = m["token_shuffle"] is not None
            header = ["pattern", "questions", "image", "no image", "blank", *(f"g={g}" for g in grids),
                      *(["tokens shuffled"] if token else []), "global-cue pairs"]
            out += [f"**{_cell(model)}** (question accuracy, %)", "", "| " + " | ".join(header) + " |",
                    "|" + "---|" * len(header)]
            per_pattern = m["per_pattern"]
            for name in patterns.in_order(list(per_pattern)):
                p = per_pattern[name]
                row = [_cell(name), str(p["questions"]), _pct(p["accuracy"]), _pct(p["no_image_accuracy"]),
                       _pct(p["blank_accuracy"]), *(_pct(s["accuracy"]) for s in p["pixel_shuffle"]),
                       *([_pct(p["token_shuffle_accuracy"])] if token else []), str(p["global_cue_pairs"])]
                out.append("| " + " | ".join(row) + " |")
            row = ["all", str(m["questions"]), _pct(m["accuracy"]), _pct(m["no_image_accuracy"]),
                   _pct(m["blank_accuracy"]), *(_pct(s["accuracy"]) for s in m["pixel_shuffle"]),
                   *([_pct(m["token_shuffle"]["accuracy"])] if token else []), str(m["global_cue_pairs"])]
            out += ["| " + " | ".join(f"**{c}**" for c in row) + " |", ""]
        out += ["### Text side: what the images add", "",
                "| model | accuracy | no image | gain | leakage (no image - chance) | right answers also right with no image "
                "| wrong answers equal to the no-image answer | calls per question |", "|---|---|---|---|---|---|---|---|"]
        for model, m in models.items():
            out.append(f"| {_cell(model)} | {_pct(m['accuracy'])} | {_pct(m['no_image_accuracy'])} | {_pct(m['gain'])} "
                       f"| {_pct(m['leakage'])} | {_pct(m['prior_share'])} | {_pct(m['bias_aligned_error_rate'])} "
                       f"| {m['calls_per_question']} |")
        out.append("")
    encoders = summary["encoders"]
    if encoders:
        out += ["### Can the encoders tell the pairs apart", "",
                "A pair counts as separated when the leave-one-pair-out probe answers both its images right *and* the "
                "probe beats its chance control in that pattern (labels permuted across pairs); with too few pairs in a "
                "pattern for a probe, the patch rule decides.", "",
                "| encoder | pairs | separates | judged by the probe | probe right, pattern not above chance "
                "| judged by the patch rule | mean pooled cosine | statement test, pairs right |",
                "|---|---|---|---|---|---|---|---|"]
        for name, e in encoders.items():
            out.append(f"| {_cell(name)} | {e['pairs']} | {e['separates']} | {e['by_probe']} "
                       f"| {e['probe_right_by_chance']} | {e['by_patch']} "
                       f"| {e['mean_pooled_cosine']:.4f} | {_share(e['statement_pair_accuracy'])} |")
        probes = [(name, pattern, f) for name, e in encoders.items() for pattern, f in e["probe_patterns"].items()]
        if probes:
            out += ["", "| encoder | pattern | pairs | probe pair accuracy | chance (labels permuted) | p |",
                    "|---|---|---|---|---|---|"]
            out += [f"| {_cell(name)} | {_cell(pattern)} | {f['pairs']} | {_share(f['accuracy'])} | {_share(f['chance'])} "
                    f"| {f['p_value']:.3f} |" for name, pattern, f in probes]
        out.append("")
    bias = summary["text_bias"]
    flagged = bias["flagged"]
    out += ["### Text-only bias", ""]
    if not bias["questions"]:
        out += ["No questions to audit yet.", ""]
    elif not bias["scored"]:
        out += [f"{bias['questions']} questions, too few pairs for the k folds (grouped by pair) of the audit.", ""]
    else:
        out += [f"{bias['scored']} of {bias['questions']} questions scored from text alone (k folds grouped by pair); "
                f"mean P(right answer) {_pct(bias['mean'])} %; {len(flagged)} listed for review"
                + (": " + ", ".join(f"`{i}`" for i in flagged) if flagged else "") + ".", ""]
    return "\n".join(out)


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def _empty_svg(title: str, why: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="520" height="80" font-family="sans-serif" font-size="12">'
            f'<text x="10" y="20">{_xml(title)}</text><text class="empty" x="10" y="50" fill="#a00">{_xml(why)}</text></svg>\n')


CHAR_PX = 7  # the most a character of the charts' 11 px sans-serif takes, for sizing
SPREAD_PX = 2.0  # patterns whose lines coincide are drawn this far apart, so none hides another


def _spaced(ys: list[float], gap: float) -> list[float]:
    """Label heights moved apart (downwards, in order) so no two are closer than `gap`."""
    out: list[float] = []
    for y in sorted(ys):
        out.append(max(y, out[-1] + gap) if out else y)
    order = sorted(range(len(ys)), key=lambda i: ys[i])
    placed = [0.0] * len(ys)
    for rank, i in enumerate(order):
        placed[i] = out[rank]
    return placed


def shuffle_svg(summary: Mapping[str, Any], configured: Sequence[str] = ()) -> str:
    """Accuracy vs grid size per pattern, a panel per model (legend: each pattern with its question count);
    the model's no-image and blank-image accuracy dashed beside it, chance dotted. Lines that coincide are drawn
    `SPREAD_PX` apart, with a marker at every point."""
    title = "question accuracy as the image's tiles are shuffled (g x g grid)"
    models = summary["models"]
    if not models:
        return _empty_svg(title, why_no_model(configured))
    names = patterns.in_order(sorted({p for m in models.values() for p in m["per_pattern"]}))
    panel_w, panel_h, left, top = 420, 200, 50, 40
    refs_w = 130  # the reference lines' labels, right of the panel
    legend = {name: f"{name} (n={max(m['per_pattern'].get(name, {}).get('questions', 0) for m in models.values())})"
              for name in names}
    legend_w = max(len(text) for text in legend.values()) * CHAR_PX + 20
    panel_gap = max(60, 14 * len(names) - panel_h + 60)
    width = max(left + panel_w + refs_w + legend_w, max(len(m) for m in models) * CHAR_PX + left)
    height = top + len(models) * (panel_h + panel_gap)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
             f'font-size="11"><text x="{left}" y="18" font-size="13">{_xml(title)}</text>']
    for k, (model, m) in enumerate(models.items()):
        y0 = top + k * (panel_h + panel_gap) + 16
        grids = [1] + [s["grid"] for s in m["pixel_shuffle"]]
        xs = {g: left + 10 + i * (panel_w - 20) / max(1, len(grids) - 1) for i, g in enumerate(grids)}

        def y(v: float, y0: float = y0) -> float:
            return y0 + 6 + (panel_h - 12) * (1 - v)

        parts.append(f'<text x="{left}" y="{y0 - 4}" font-weight="bold">{_xml(model)}</text>')
        parts.append(f'<rect x="{left}" y="{y0}" width="{panel_w}" height="{panel_h}" fill="none" stroke="#000"/>')
        for g, x in xs.items():
            parts.append(f'<text x="{x:.1f}" y="{y0 + panel_h + 14}" text-anchor="middle">'
                         f'{"image" if g == 1 else f"g={g}"}</text>')
        for v in (0.0, 0.5, 1.0):
            parts.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{int(v * 100)} %</text>')
        parts.append(f'<line class="chance" x1="{left}" x2="{left + panel_w}" y1="{y(CHANCE_QUESTION):.1f}" '
                     f'y2="{y(CHANCE_QUESTION):.1f}" stroke="#888" stroke-dasharray="1 3"/>')
        refs = [(label, value, dash) for label, value, dash in
                (("no image", m["no_image_accuracy"], "6 3"), ("blank image", m["blank_accuracy"], "2 2"))
                if value is not None]
        for (label, value, dash), label_y in zip(refs, _spaced([y(v) + 4 for _, v, _ in refs], 13)):
            parts.append(f'<line class="reference" x1="{left}" x2="{left + panel_w}" y1="{y(value):.1f}" '
                         f'y2="{y(value):.1f}" stroke="#333" stroke-dasharray="{dash}"><title>{label}: '
                         f'{_pct(value)} %</title></line><text x="{left + panel_w + 6}" y="{label_y:.1f}">'
                         f'{label} {_pct(value)} %</text>')
        shown = [name for name in names if name in m["per_pattern"]]
        for i, name in enumerate(shown):
            p = m["per_pattern"][name]
            spread = (i - (len(shown) - 1) / 2) * SPREAD_PX
            values = [p["accuracy"]] + [s["accuracy"] for s in p["pixel_shuffle"]]
            points = [(xs[g], y(v) + spread) for g, v in zip(grids, values) if v is not None]
            color = COLORS[names.index(name) % len(COLORS)]
            parts.append(f'<polyline class="pattern" fill="none" stroke="{color}" stroke-width="2" points="'
                         + " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
                         + f'"><title>{_xml(legend[name])}</title></polyline>')
            parts.extend(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="2.5" fill="{color}"/>' for px, py in points)
            parts.append(f'<text class="legend" x="{left + panel_w + refs_w}" y="{y0 + 12 + 14 * i}" fill="{color}">'
                         f'{_xml(legend[name])}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def buckets_svg(summary: Mapping[str, Any], configured: Sequence[str] = ()) -> str:
    """The 2x2 per model and encoder: pairs per cell, the failed pairs' cells shaded."""
    title = "encoder vs VLM per pair: does the encoder separate the pair, did the VLM get it right"
    cells = [(m, e, s) for m, v in summary["models"].items() for e, s in v["encoders"].items()]
    if not cells:
        why = why_no_model(configured) if not summary["models"] else "no encoder judged the pairs"
        return _empty_svg(title, why)
    box, gap, left, top = 90, 40, 20, 50
    per_row = 3
    width = left + per_row * (2 * box + gap + 60)
    rows = (len(cells) + per_row - 1) // per_row
    height = top + rows * (2 * box + 90)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
             f'font-size="11"><text x="{left}" y="18" font-size="13">{_xml(title)}</text>']
    layout = {records.SEEN_AND_ANSWERED: (0, 0), records.ANSWERED_BLIND: (0, 1),
              records.HIDDEN_IN_PLAIN_SIGHT: (1, 0), records.ENCODER_BLIND: (1, 1)}  # (row: VLM right/wrong, col: separates)
    fills = {records.SEEN_AND_ANSWERED: "#dfefdc", records.ANSWERED_BLIND: "#eef3f8",
             records.HIDDEN_IN_PLAIN_SIGHT: "#f4b6a6", records.ENCODER_BLIND: "#c9c9c9"}
    for k, (model, encoder, s) in enumerate(cells):
        x0 = left + (k % per_row) * (2 * box + gap + 60) + 50
        y0 = top + (k // per_row) * (2 * box + 90) + 34
        parts.append(f'<text x="{x0 - 50}" y="{y0 - 22}" font-weight="bold">{_xml(model)}</text>'
                     f'<text x="{x0 - 50}" y="{y0 - 8}">{_xml(encoder)}</text>')
        for name, (r, c) in layout.items():
            n = s["buckets"][name]
            x, yy = x0 + c * box, y0 + r * box
            parts.append(f'<rect class="bucket" x="{x}" y="{yy}" width="{box}" height="{box}" fill="{fills[name]}" '
                         f'stroke="#000"><title>{_xml(BUCKET_TITLES[name])}: {n} pairs</title></rect>'
                         f'<text x="{x + box / 2}" y="{yy + box / 2 + 5}" text-anchor="middle" font-size="16">{n}</text>')
        parts.append(f'<text x="{x0 + box / 2}" y="{y0 + 2 * box + 14}" text-anchor="middle">separates</text>'
                     f'<text x="{x0 + 1.5 * box}" y="{y0 + 2 * box + 14}" text-anchor="middle">cannot</text>'
                     f'<text x="{x0 - 4}" y="{y0 + box / 2}" text-anchor="end">right</text>'
                     f'<text x="{x0 - 4}" y="{y0 + 1.5 * box}" text-anchor="end">wrong</text>'
                     f'<text x="{x0}" y="{y0 + 2 * box + 30}">failures hidden in plain sight: {_share(s["hidden_share"])}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
