"""The diagnostics summed up from their tables: what the card, the metrics and the reports say.

One function, `summarise`, reads the four tables (`records.CONFIGS`) and returns plain data:

* `text_bias`: questions scored, the flagged ones (listed for review), the mean score;
* `encoders`: per encoder, pairs judged, how many it separates and by which rule, the mean pooled cosine and the
  statement test's pair accuracy (encoders with a text tower);
* `models`: per model, `trials.model_summary` (accuracy with and without images, blank images, shuffles, gain,
  leakage, bias-aligned errors, per pattern) plus the 2x2 per encoder: pairs per bucket and the share of the
  model's failed pairs that are hidden in plain sight (the encoder separates them) versus encoder-blind.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from statistics import fmean
from typing import Any

import pyarrow as pa

from pipeline.diagnostics import records
from pipeline.diagnostics.records import EncoderPair, ModelQuestion, TextBias
from pipeline.diagnostics.trials import model_summary


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def text_bias_summary(rows: Sequence[TextBias]) -> dict[str, Any]:
    """Questions scored by text alone, the flagged ones (ids, in table order) and the mean score."""
    scored = [r for r in rows if r.text_bias is not None]
    return {"questions": len(rows), "scored": len(scored),
            "flagged": [r.item_id for r in rows if r.text_bias_flagged],
            "mean": round(fmean(r.text_bias for r in scored), 4) if scored else None}  # type: ignore[misc]


def encoder_summary(rows: Sequence[EncoderPair]) -> dict[str, dict[str, Any]]:
    """Per encoder: pairs, pairs it separates (by probe, by patch rule), mean pooled cosine, statement pair accuracy."""
    by_encoder: dict[str, list[EncoderPair]] = defaultdict(list)
    for r in rows:
        by_encoder[r.encoder].append(r)
    out = {}
    for name, group in by_encoder.items():
        statements = [r.statement_forward for r in group if r.statement_forward is not None]
        out[name] = {
            "pairs": len(group),
            "separates": sum(r.separates for r in group),
            "by_probe": sum(r.separates_by == records.BY_PROBE for r in group),
            "by_patch": sum(r.separates_by == records.BY_PATCH for r in group),
            "mean_pooled_cosine": round(fmean(r.pooled_cosine for r in group), 4),
            "statement_pair_accuracy": _share(sum(statements), len(statements)),
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
