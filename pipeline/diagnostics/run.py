"""Every diagnostic on a list of pairs: text audit, encoders, and each VLM's trials, joined into the 2x2.

`diagnose(pairs, backends, encoders, params)` returns the four tables (`records.CONFIGS`), their
summary (`summary.summarise`) and what was skipped. A local transformers VLM's own vision tower
joins the encoders for that model's 2x2 (and the `encoders` table).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.atomic import atomic_path, write_bytes
from pipeline.core.report import progress
from pipeline.diagnostics import records, separation, summary, text_bias, trials
from pipeline.diagnostics.features import FeatureEncoder, vlm_tower
from pipeline.diagnostics.records import EncoderPair, ModelQuestion
from pipeline.params import DiagnoseParams
from pipeline.vlm.backends import Backend
from pipeline.vlm.pairs import EvalPair

SUMMARY = "summary.json"  # beside the tables in a diagnostics folder


@dataclass
class Diagnostics:
    """The tables of one run, their summary, and the pairs no diagnostic could use (with why)."""

    tables: dict[str, pa.Table]
    summary: dict[str, Any]
    skipped: dict[str, int] = field(default_factory=dict)


def with_buckets(questions: Sequence[ModelQuestion], verdicts: Sequence[EncoderPair]) -> list[ModelQuestion]:
    """The model's questions with the 2x2 cell of their pair for every encoder that judged the pair."""
    by_pair: dict[str, list[EncoderPair]] = {}
    for v in verdicts:
        by_pair.setdefault(v.pair_id, []).append(v)
    out = []
    for q in questions:
        judged = by_pair.get(q.pair_id, [])
        out.append(dataclasses.replace(q, bucket_encoders=tuple(v.encoder for v in judged),
                                       buckets=tuple(records.bucket(v.separates, q.pair_right) for v in judged)))
    return out


def skipped_pairs(pairs: Sequence[EvalPair]) -> dict[str, int]:
    """Pairs the model-side diagnostics cannot use: no question (MMVP-VLM folders), an image missing."""
    return {"without_questions": sum(p.question is None or p.answers is None for p in pairs),
            "missing_images": sum(not all(i is not None for i in p.images) for p in pairs)}


def diagnose(pairs: Sequence[EvalPair], backends: Sequence[Backend], encoders: Sequence[FeatureEncoder],
             params: DiagnoseParams) -> Diagnostics:
    """Text audit, encoder verdicts and every model's trials on `pairs`."""
    audit = text_bias.text_bias(pairs, params.text_bias)
    verdicts: list[EncoderPair] = []
    for encoder in progress(encoders, desc="encoders", unit="encoder"):
        verdicts.extend(separation.encoder_pairs(pairs, encoder, params.encoders))
    predictions, questions = [], []
    for backend in backends:
        asked = trials.run_trials(pairs, backend, params.shuffle)
        tower = vlm_tower(backend)
        own = separation.encoder_pairs(pairs, tower, params.encoders) if tower is not None else []
        verdicts.extend(own)
        judges = {e.name for e in encoders} | {v.encoder for v in own}  # the shared encoders and this model's tower
        questions.extend(with_buckets(trials.model_questions(pairs, asked, params.shuffle),
                                      [v for v in verdicts if v.encoder in judges]))
        predictions.extend(asked)
    tables = {"diagnostics": records.to_table("diagnostics", audit),
              "encoders": records.to_table("encoders", verdicts),
              "models": records.to_table("models", questions),
              "predictions": records.to_table("predictions", predictions)}
    return Diagnostics(tables, summary.summarise(tables), skipped_pairs(pairs))


def write_diagnostics(result: Diagnostics, out: str | Path) -> None:
    """Each table as `<config>.parquet` and the summary as `summary.json` in `out`, each file written atomically."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    for name, table in result.tables.items():
        with atomic_path(folder / f"{name}.parquet") as tmp:
            pq.write_table(table, tmp)
    write_bytes(folder / SUMMARY, (json.dumps(result.summary, indent=2, sort_keys=True) + "\n").encode())
