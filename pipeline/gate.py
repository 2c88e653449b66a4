"""gate: ask a VLM every accepted question without the right image, and flag questions that do not need it.

Inputs: the accepted-annotations table, the images table and the corpus source (images are
shown exactly as released: `package.image_encoder`), params section `gate` (the VLM, the rule
threshold, and whether flagged items are dropped or kept by `package`).
Outputs: the gate table (kind `gate`, one row per item = one image of a pair: trial counts and
flags), with the model's name in its metadata; a response cache (JSONL) so a rerun resumes.
Metrics: inputs (pairs), passed, dropped, items, flagged_items, flags by rule, unchecked pairs
with reasons; passed + dropped == inputs.

Rules, per item (the question asked about one image X of a pair whose other image is Y; each
condition is asked with the options in their order and swapped, the reply mapped back):

* `blind_answerable`: over six trials that withhold the right image (no image, a blank image
  of X's size, the other image Y; each in both option orders) the model gives X's answer at
  least `blind_min_right` times. At chance it would give it three times; six of six has
  probability 1/64 under chance. Such a question is answered from its text, not the image.
* `swap_insensitive`: shown X, the model picks the same letter whichever order the options are
  in: its answer follows position, not content.
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import pyarrow as pa

from pipeline.core import schemas
from pipeline.core.config import command_params
from pipeline.core.patterns import ANSWERS
from pipeline.core.report import progress, summary, write_headline, write_metrics
from pipeline.core.schemas import GATE
from pipeline.images.corpus import Corpus
from pipeline.images.decode import DecodeError
from pipeline.params import ExportParams, GateParams, IngestParams
from pipeline.vlm.backends import Backend, cached_backend, load_backend
from pipeline.vlm.gate_rules import RULES, check_item, image_encoder

STAGE = "gate"


def gate(accepted: pa.Table, images: pa.Table, read_bytes: Callable[[str], bytes], encode: Callable[[bytes], bytes],
         backend: Backend, params: GateParams) -> tuple[pa.Table, dict[str, Any]]:
    """The gate table for every accepted pair, and the stage's metrics."""
    location = dict(zip(images.column("image_id").to_pylist(), images.column("source_path").to_pylist()))
    rows: list[dict[str, Any]] = []
    unchecked: Counter[str] = Counter()
    pairs = sorted(accepted.to_pylist(), key=lambda r: r["pair_id"])
    for pair in progress(pairs, desc="gate", unit="pair"):
        base = [{"item_id": f"{pair['pair_id']}-{m}", "pair_id": pair["pair_id"], "member": m} for m in ("a", "b")]
        try:
            if {pair["answer_a"], pair["answer_b"]} != set(ANSWERS):
                raise ValueError(f"answers {pair['answer_a']}, {pair['answer_b']} must be {' and '.join(ANSWERS)}, one each")
            shown = [encode(read_bytes(location[pair[f"image_{m}"]])) for m in ("a", "b")]
        except (ValueError, KeyError, DecodeError, OSError) as err:
            # DecodeError first: it is not a ValueError, but keep the reasons distinct and closed
            reason = {KeyError: "missing_image", ValueError: "bad_answers"}.get(type(err), "unreadable_image")
            unchecked[reason] += 1
            rows += [{**b, "checked": False, "blind_right": 0, "real_answers": [], "flags": [],
                      "detail": f"{reason}: {err}"} for b in base]
            continue
        options = (pair["option_a"], pair["option_b"])
        for k, b in enumerate(base):
            member = b["member"]
            rows.append({**b, **check_item(backend, pair["question"], options, pair[f"answer_{member}"],
                                           shown[k], shown[1 - k], params)})
    table = pa.Table.from_pylist(rows, schema=GATE)
    flagged_pairs = sorted({r["pair_id"] for r in rows if r["flags"]})
    dropped = len(flagged_pairs) if params.flagged == "drop" else 0
    metrics = {
        "inputs": len(pairs),
        "passed": len(pairs) - dropped,
        "dropped": dropped,
        "items": len(rows),
        "flagged_items": sum(1 for r in rows if r["flags"]),
        "flagged_pairs": len(flagged_pairs),
        "flags": {rule: sum(rule in r["flags"] for r in rows) for rule in RULES},
        "unchecked_pairs": dict(sorted(unchecked.items())),
        "policy": params.flagged,
        "blind_min_right": params.blind_min_right,
        "model": backend.name,
    }
    return table, metrics


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: `python -m pipeline.gate --accepted A --images T --source S --out G --metrics M`."""
    parser = argparse.ArgumentParser(prog="clipblind gate", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--accepted", required=True)
    parser.add_argument("--images", required=True)
    parser.add_argument("--source", required=True, nargs="+", help="the corpus source(s) ingest read, as in params")
    parser.add_argument("--out", required=True, help="output gate table (parquet)")
    parser.add_argument("--metrics", required=True)
    parser.add_argument("--headline", help="output headline metrics JSON (what `dvc metrics show` lists: report.HEADLINES)")
    parser.add_argument("--cache", default=".cache/gate", help="folder of VLM response caches (resume)")
    args = parser.parse_args(argv)
    params = command_params(parser, args.params, STAGE, GateParams)
    accepted = schemas.read_table(args.accepted, "accepted")
    if params.vlm is None:
        schemas.write_table(schemas.empty("gate"), args.out, "gate", meta={"ran": False})
        not_run = {"inputs": accepted.num_rows, "passed": accepted.num_rows, "dropped": 0, "ran": False}
        write_metrics(args.metrics, not_run)
        write_headline(args.headline, STAGE, not_run)
        summary(STAGE, "no VLM configured (gate.vlm: null): the gate did not run; the card says so")
        return 0
    export_params = command_params(parser, args.params, "export", ExportParams)
    ingest_params = command_params(parser, args.params, "ingest", IngestParams)
    backend = load_backend(params.vlm)
    cached = cached_backend(backend, args.cache)
    table, metrics = gate(accepted, schemas.read_table(args.images, "images"), Corpus(ingest_params.source, args.source).read,
                          image_encoder(export_params, ingest_params.max_pixels), cached, params)
    metrics["ran"] = True
    schemas.write_table(table, args.out, "gate", meta={"ran": True, "model": backend.name})
    write_metrics(args.metrics, metrics)
    write_headline(args.headline, STAGE, metrics)
    summary(STAGE, f"{metrics['inputs']} pairs, {metrics['items']} questions → {metrics['flagged_items']} flagged "
                   f"{metrics['flags']}; flagged pairs {'dropped' if params.flagged == 'drop' else 'kept'} by package; "
                   f"{cached.calls} new model calls")
    return 0


if __name__ == "__main__":
    from pipeline.core.errors import run_command

    raise SystemExit(run_command(main, "gate"))
