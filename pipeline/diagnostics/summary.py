"""The diagnostics summed up from their tables: what the card, the metrics and the reports say.

One function, `summarise`, reads the four tables (`records.CONFIGS`) and returns plain data:

* `text_bias`: questions scored, the flagged ones (listed for review), the mean score;
* `encoders`: per encoder, pairs judged, how many it separates and by which rule, the mean pooled cosine and the
  statement test's pair accuracy (encoders with a text tower);
* `models`: per model, `model_summary` (accuracy with and without images, blank images, shuffles, gain,
  leakage, bias-aligned errors, per pattern) plus the 2x2 per encoder: pairs per bucket and the share of the
  model's failed pairs that are hidden in plain sight (the encoder separates them) versus encoder-blind.

`release_account` is what a release's manifest and card say about the diagnostics it ships (`package`
writes it, `remove` writes it again for the rows it keeps). Rates are rounded to 4 places, as `scoring`
rounds its accuracies. Summing up runs no model: the release commands use it with the base install.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from statistics import fmean
from typing import Any

import pyarrow as pa

from pipeline.core import patterns
from pipeline.core.errors import ClipblindError
from pipeline.diagnostics import records
from pipeline.diagnostics.records import EncoderPair, ModelQuestion, TextBias
from pipeline.vlm import scoring


class SummaryError(ClipblindError, ValueError):
    """Diagnostics records that cannot be summed up as asked."""


def _share(part: float, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _mean(values: Sequence[float]) -> float | None:
    return round(fmean(values), 4) if values else None


def _per_grid(questions: Sequence[ModelQuestion], pairs: Sequence[ModelQuestion]) -> list[dict[str, Any]]:
    """Per grid run: mean accuracy and flip rate over questions, mean pair-right rate over pairs."""
    grids = sorted({g for q in questions for g in q.shuffle_grids})

    def at(q: ModelQuestion, values: tuple[float, ...], grid: int) -> list[float]:
        return [values[q.shuffle_grids.index(grid)]] if grid in q.shuffle_grids else []

    return [{"grid": g,
             "accuracy": _mean([v for q in questions for v in at(q, q.shuffle_accuracy, g)]),
             "flip_rate": _mean([v for q in questions for v in at(q, q.shuffle_flip_rate, g)]),
             "pair_right_rate": _mean([v for q in pairs for v in at(q, q.shuffle_pair_right_rate, g)])}
            for g in grids]


def _figures(questions: Sequence[ModelQuestion]) -> dict[str, Any]:
    """The figures a model's summary and each of its patterns share."""
    first: dict[str, ModelQuestion] = {}
    for q in questions:
        first.setdefault(q.pair_id, q)
    pairs = list(first.values())  # pair figures (same for both questions of a pair) read once per pair
    token = [q for q in questions if q.token_shuffle_accuracy is not None]
    return {
        "questions": len(questions),
        "pairs": len(pairs),
        "accuracy": _share(sum(q.correct for q in questions), len(questions)),
        "pair_accuracy": _share(sum(q.pair_right for q in pairs), len(pairs)),
        "no_image_accuracy": _share(sum(q.no_image_correct for q in questions), len(questions)),
        "blank_accuracy": _share(sum(q.blank_correct for q in questions), len(questions)),
        "pixel_shuffle": _per_grid(questions, pairs),
        "token_shuffle": {
            "accuracy": _mean([q.token_shuffle_accuracy for q in token if q.token_shuffle_accuracy is not None]),
            "flip_rate": _mean([q.token_shuffle_flip_rate for q in token if q.token_shuffle_flip_rate is not None]),
            "pair_right_rate": _mean([q.token_shuffle_pair_right_rate for q in pairs
                                      if q.token_shuffle_pair_right_rate is not None]),
        } if token else None,
        "global_cue_pairs": sum(q.global_cue is True for q in pairs),
    }


def model_summary(questions: Sequence[ModelQuestion]) -> dict[str, Any]:
    """One model's figures over its questions: accuracy with the image, with none and with a blank one, pair
    accuracy, the gain the images bring, leakage (right with no image beyond chance), how many of its right
    answers it also gives with no image (`prior_share`), how many of its wrong ones are bias-aligned, the
    shuffles per grid and of tokens, global-cue pairs; and most of it again per pattern."""
    models = sorted({q.model for q in questions})
    if len(models) > 1:
        raise SummaryError(f"model_summary sums up one model, got questions of {models}: group them by model first")
    figures = _figures(questions)
    right = [q for q in questions if q.correct]
    wrong = [q for q in questions if not q.correct]
    accuracy, no_image = figures["accuracy"], figures["no_image_accuracy"]
    by_pattern: dict[str, list[ModelQuestion]] = defaultdict(list)
    for q in questions:
        by_pattern[q.pattern].append(q)
    per_pattern = {}
    for pattern in patterns.in_order(by_pattern):  # MMVP's order, as every table shows patterns
        group = by_pattern[pattern]
        f = _figures(group)
        per_pattern[pattern] = {
            "questions": f["questions"], "accuracy": f["accuracy"], "pair_accuracy": f["pair_accuracy"],
            "no_image_accuracy": f["no_image_accuracy"], "blank_accuracy": f["blank_accuracy"],
            "pixel_shuffle": [{k: s[k] for k in ("grid", "accuracy", "pair_right_rate")} for s in f["pixel_shuffle"]],
            "token_shuffle_accuracy": f["token_shuffle"]["accuracy"] if f["token_shuffle"] else None,
            "global_cue_pairs": f["global_cue_pairs"],
        }
    return {
        **{k: figures[k] for k in ("questions", "pairs", "accuracy", "pair_accuracy", "no_image_accuracy",
                                   "blank_accuracy")},
        "gain": round(accuracy - no_image, 4) if accuracy is not None and no_image is not None else None,
        "leakage": round(no_image - scoring.CHANCE_QUESTION, 4) if no_image is not None else None,
        "prior_share": _share(sum(q.no_image_correct for q in right), len(right)),
        "bias_aligned_error_rate": _share(sum(q.bias_aligned_error is True for q in wrong), len(wrong)),
        **{k: figures[k] for k in ("pixel_shuffle", "token_shuffle", "global_cue_pairs")},
        "per_pattern": per_pattern,
    }


def text_bias_summary(rows: Sequence[TextBias]) -> dict[str, Any]:
    """Questions scored by text alone, the flagged ones (ids, in table order) and the mean score."""
    scored = [r for r in rows if r.text_bias is not None]
    return {"questions": len(rows), "scored": len(scored),
            "flagged": [r.item_id for r in rows if r.text_bias_flagged],
            "mean": round(fmean(r.text_bias for r in scored), 4) if scored else None}  # type: ignore[misc]


def encoder_summary(rows: Sequence[EncoderPair]) -> dict[str, dict[str, Any]]:
    """Per encoder: pairs; pairs it separates; pairs judged by the probe and by the patch rule; pairs the probe got
    right in a pattern where it did not beat its chance control (`probe_right_by_chance`: not separated); the mean
    pooled cosine; the statement test's pair accuracy; and per probed pattern the probe's pair accuracy, its chance
    level (labels permuted) and p."""
    by_encoder: dict[str, list[EncoderPair]] = defaultdict(list)
    for r in rows:
        by_encoder[r.encoder].append(r)
    out = {}
    for name, group in by_encoder.items():
        statements = [r.statement_forward for r in group if r.statement_forward is not None]
        probed: dict[str, list[EncoderPair]] = defaultdict(list)
        for r in group:
            if r.probe_pattern_accuracy is not None:
                probed[r.pattern].append(r)
        out[name] = {
            "pairs": len(group),
            "separates": sum(r.separates for r in group),
            "by_probe": sum(r.separates_by == records.BY_PROBE for r in group),
            "by_patch": sum(r.separates_by == records.BY_PATCH for r in group),
            "probe_right_by_chance": sum(r.separates_by == records.BY_PROBE and bool(r.probe_right) and not r.separates
                                         for r in group),
            "mean_pooled_cosine": round(fmean(r.pooled_cosine for r in group), 4),
            "statement_pair_accuracy": _share(sum(statements), len(statements)),
            "probe_patterns": {pattern: {"pairs": len(probed[pattern]), "accuracy": probed[pattern][0].probe_pattern_accuracy,
                                         "chance": probed[pattern][0].probe_chance,
                                         "p_value": probed[pattern][0].probe_p_value}
                               for pattern in patterns.in_order(probed)},
        }
    return out


def bucket_summary(questions: Sequence[ModelQuestion]) -> dict[str, dict[str, Any]]:
    """One model's 2x2 per encoder: pairs per bucket, and of the pairs it got wrong the share hidden in plain sight."""
    per_pair: dict[str, dict[str, str]] = {}
    for q in questions:
        per_pair.setdefault(q.pair_id, dict(zip(q.bucket_encoders, q.buckets)))
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for cells in per_pair.values():
        for encoder, cell in cells.items():
            counts[encoder][cell] += 1
    out = {}
    for encoder, c in counts.items():
        failed = c[records.HIDDEN_IN_PLAIN_SIGHT] + c[records.ENCODER_BLIND]
        out[encoder] = {
            "pairs": sum(c.values()),
            "buckets": {b: c[b] for b in records.BUCKETS},
            "hidden_share": _share(c[records.HIDDEN_IN_PLAIN_SIGHT], failed),  # of the model's failed pairs
            "encoder_blind_share": _share(c[records.ENCODER_BLIND], failed),
        }
    return out


def summarise(tables: Mapping[str, pa.Table]) -> dict[str, Any]:
    """Everything the card, the metrics and the reports say about the diagnostics, from their tables."""
    rows = {name: records.from_table(name, tables[name]) if name in tables else [] for name in records.CONFIGS}
    by_model: dict[str, list[ModelQuestion]] = defaultdict(list)
    for q in rows["models"]:
        by_model[q.model].append(q)
    calls = Counter(p.model for p in rows["predictions"])
    models = {}
    for name, questions in by_model.items():
        models[name] = {**model_summary(questions), "calls": calls[name],
                        "calls_per_question": _share(calls[name], len(questions)), "encoders": bucket_summary(questions)}
    return {"text_bias": text_bias_summary(rows["diagnostics"]), "encoders": encoder_summary(rows["encoders"]),
            "models": models}


def release_account(tables: Mapping[str, pa.Table], text_bias_threshold: float) -> dict[str, Any] | None:
    """What a release's manifest and card say about the diagnostics tables it ships (`ReleaseSpec.diagnostics`):
    their summary and the text-bias threshold the audit flagged by; None when it ships none."""
    if not tables:
        return None
    return {**summarise(tables), "text_bias_threshold": text_bias_threshold}
