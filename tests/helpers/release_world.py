"""A tiny world for release tests: a real ingest of generated images, accepted annotations over them."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pyarrow as pa
import yaml

from pipeline import ingest
from pipeline.core import patterns, schemas
from tests.conftest import tiny_params
from tests.helpers.params import KIND_KEYS

CHANGELOG = """# Changelog

## 1.0.0

- First release.
"""
CITATION = """cff-version: 1.2.0
message: Cite it as below.
title: clipblind test release
authors:
  - family-names: Tester
    given-names: Tess
preferred-citation:
  type: data
  title: clipblind test release
  notes: A release of the test world
"""
WITHHELD_LICENSE = "LicenseRef-All-Rights-Reserved"
# Patterns of the four packaged pairs, stored as validate stores them: the pattern key.
ORIENTATION, COLOR, QUANTITY, STATE = (patterns.by_key(k).key for k in ("orientation", "color", "quantity", "state"))
WORLD_PATTERN_KEYS = (ORIENTATION, COLOR, QUANTITY, STATE)


def accepted_rows(image_ids: list[str]) -> list[dict]:
    """Accepted pairs over real image ids: four good pairs (one without statements) and three bad ones."""

    def row(a: str, b: str, pattern: str, question: str, opts: tuple[str, str], answers: tuple[str, str],
            statements: tuple[str | None, str | None], verification: str = "verified",
            writer_answers: tuple[str | None, str | None] = (None, None)) -> dict:
        a, b = sorted((a, b))
        return {
            "pair_id": schemas.pair_id(a, b), "image_a": a, "image_b": b,
            "clip_sim": 0.97, "dino_sim": 0.41, "pattern": pattern, "tags": [patterns.by_key("text").key] if pattern == COLOR else [],
            "question": question, "option_a": opts[0], "option_b": opts[1],
            "answer_a": answers[0], "answer_b": answers[1], "statement_a": statements[0], "statement_b": statements[1],
            "writer": "ann1", "verification": verification,
            "writer_answer_a": writer_answers[0], "writer_answer_b": writer_answers[1],
            "verifier_answers_a": [answers[0], answers[0]], "verifier_answers_b": [answers[1], "(a)" if answers[1] == "(b)" else "(b)"],
        }

    i = image_ids
    return [
        row(i[0], i[1], ORIENTATION, "Is the arrow pointing left or right?", ("Left", "Right"), ("(a)", "(b)"),
            ("The arrow points left.", "The arrow points right.")),
        row(i[2], i[3], COLOR, "Is the main shape red or blue?", ("Red", "Blue"), ("(b)", "(a)"),
            ("The shape is blue.", "The shape is red."), "adjudicated", ("(a)", "(b)")),  # the lead corrected it
        row(i[4], i[5], QUANTITY, "How many <b>circles</b>, \"two\" or three?", ("Two", "Three"), ("(a)", "(b)"),
            (None, None)),
        row(i[6], i[7], STATE, "Is the door open or closed?", ("Open", "Closed"), ("(b)", "(a)"),
            ("The door is closed.", "The door is open.")),
        row(i[8], i[9], "texture", "Is it smooth?", ("Yes", "No"), ("(a)", "(b)"), (None, None)),  # unknown pattern
        row(i[10], i[11], patterns.by_key("text").key, "Does the sign say STOP?", ("Yes", "No"), ("(a)", "(a)"), (None, None)),  # same answers
        row(i[12], "f" * 64, patterns.by_key("presence").key, "Is there a hat?", ("Yes", "No"), ("(a)", "(b)"), (None, None)),  # missing image
    ]


def build_inputs(corpus: Path, root: Path) -> dict[str, Path]:
    """Ingest `corpus` through a licence manifest, write accepted annotations, pairs metadata and params."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(corpus, root / "corpus")  # the manifest's paths must stay inside its folder
    files = sorted(p.relative_to(corpus).as_posix() for p in corpus.rglob("*") if p.is_file())
    manifest = root / "corpus.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "license"])
        for k, f in enumerate(files):
            writer.writerow([f"corpus/{f}", WITHHELD_LICENSE if k == 0 else "CC0-1.0"])
    params = tiny_params(
        ingest={"source": {"kind": "manifest", "name": "generated", "license": "CC0-1.0", "license_column": "license",
                           **KIND_KEYS["manifest"]},
                "max_pixels": 10_000_000},
        package={"version": "1.0.0", "name": "clipblind-test", "pretty_name": "clipblind test release",
                 "shard_size": 3},
    )
    params_file = root / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    images_path = root / "images.parquet"
    ingest.main(["--params", str(params_file), "--source", str(manifest), "--images", str(images_path),
                 "--rejects", str(root / "rejects.parquet"), "--metrics", str(root / "ingest.json")])
    images = schemas.read_table(images_path, "images").to_pylist()
    # the withheld image (first listed file) must be in a pair: put it first
    ids = sorted(r["image_id"] for r in images)
    withheld = next(r["image_id"] for r in images if r["source_license"] == WITHHELD_LICENSE)
    ids.remove(withheld)
    ids.insert(0, withheld)
    accepted = pa.Table.from_pylist(accepted_rows(ids), schema=schemas.ACCEPTED)
    schemas.write_table(accepted, root / "accepted.parquet", "accepted")
    pairs = accepted.select(["pair_id", "image_a", "image_b", "clip_sim", "dino_sim"])
    encoders = {"clip": {"name": "clip", "kind": "open_clip", "model": "tiny-clip", "weights": "random", "random_init": True,
                         "resolution": 32, "pooling": "clip_projection", "dtype": "fp32",
                         "versions": {"torch": "2.14.1", "open_clip": "3.3.0"}},
                "dino": {"name": "dino", "kind": "dinov2", "model": "tiny-dino", "weights": "random", "random_init": True,
                         "resolution": 32, "pooling": "cls", "dtype": "fp32"}}
    schemas.write_table(pairs, root / "pairs.parquet", "pairs",
                        meta={"encoders": encoders, "search": "exhaustive", "clip_threshold": 0.9, "dino_threshold": 0.99})
    (root / "mine.json").write_text(json.dumps({"images": len(images), "pairs_possible": 351, "clip_candidates": 40, "pairs": 7}))
    # the accept stage's metrics for these rows: 7 accepted (one adjudicated, its answers corrected by the
    # lead), one pending, one invalid (package's own tests; the journey checks the card against real ones)
    accept_metrics = {"written": 9, "invalid": 1, "valid": 8, "accepted": 7, "verified": 6,
                      "accepted_adjudicated": 1, "answers_corrected": 1, "rejected": 0, "pending": 1,
                      "pending_by_reason": {"awaiting_verification": 0, "awaiting_adjudication": 1},
                      "rejected_by_reason": {"stale_pair": 0, "adjudicated_reject": 0, "duplicate_pair": 0},
                      "human_accuracy": {"answered_questions": 8, "per_question": 0.9167, "per_pair": 0.8333}}
    (root / "accept.json").write_text(json.dumps(accept_metrics))
    (root / "CHANGELOG.md").write_text(CHANGELOG)
    (root / "CITATION.cff").write_text(CITATION)
    return {"params": params_file, "manifest": manifest, "images": images_path, "accepted": root / "accepted.parquet",
            "pairs": root / "pairs.parquet", "mine": root / "mine.json", "ingest": root / "ingest.json",
            "accept": root / "accept.json",
            "changelog": root / "CHANGELOG.md", "citation": root / "CITATION.cff"}


def package_args(inputs: dict[str, Path], out: Path, metrics: Path, *extra: str) -> list[str]:
    """Arguments of `pipeline.package.main` for the world's inputs."""
    return [
        "--params", str(inputs["params"]), "--accepted", str(inputs["accepted"]), "--images", str(inputs["images"]),
        "--source", str(inputs["manifest"]), "--pairs", str(inputs["pairs"]), "--mine-metrics", str(inputs["mine"]),
        "--ingest-metrics", str(inputs["ingest"]), "--accept-metrics", str(inputs["accept"]), "--changelog", str(inputs["changelog"]),
        "--citation", str(inputs["citation"]), "--out", str(out),
        "--metrics", str(metrics), *extra,
    ]


def build_release(corpus: Path, root: Path, *extra: str) -> Path:
    """Build the world's release into `root / "release"` and return its folder."""
    from pipeline import package

    inputs = build_inputs(corpus, root / "inputs")
    assert package.main(package_args(inputs, root / "release", root / "package.json", *extra)) == 0
    return root / "release"


# Diagnostics of the world's packaged pairs, planted so that their summary is known by construction: the three
# pairs with both images (by pair_id: P1, P2, P3) and the pair with a withheld image (W, only in the text audit).
DIAG_MODEL = "scripted-vlm"
TEXT_BIAS_FLAGGED = 0.9  # above params diagnose.text_bias.threshold (0.75): P1's first question is listed
# encoder → does it separate P1, P2, P3
DIAG_SEPARATES = {"clip": (True, False, True), "dino": (True, True, True)}
# the model with the image: (member a right, member b right) on P1, P2, P3: right on P1 only, per pair
DIAG_RIGHT = ((True, True), (True, False), (False, True))
DIAG_GRIDS = (2, 4)
DIAG_SHUFFLE_ACCURACY = (1.0, 0.5)


def world_pairs(inputs: dict[str, Path]) -> list[dict]:
    """The world's packaged pairs by pair_id: pair_id, pattern key and whether one of its images is withheld."""
    images = {r["image_id"]: r for r in schemas.read_table(inputs["images"], "images").to_pylist()}
    rows = [r for r in schemas.read_table(inputs["accepted"], "accepted").to_pylist() if r["pattern"] in WORLD_PATTERN_KEYS]
    return sorted(({"pair_id": r["pair_id"], "pattern": r["pattern"],
                    "withheld": any(images[r[f"image_{m}"]]["source_license"] == WITHHELD_LICENSE for m in "ab")}
                   for r in rows), key=lambda p: p["pair_id"])


def diagnostics_tables(inputs: dict[str, Path], models: bool = True) -> dict[str, pa.Table]:
    """The four diagnostics tables of the world's packaged pairs (`models`/`predictions` empty when `models` is False)."""
    from pipeline.diagnostics import records

    pairs = world_pairs(inputs)
    seen = [p for p in pairs if not p["withheld"]]
    audit = [records.TextBias(records.item_id(p["pair_id"], m), p["pair_id"], m, p["pattern"], False,
                              TEXT_BIAS_FLAGGED if (k, m) == (0, "a") else 0.5, (k, m) == (0, "a"))
             for k, p in enumerate(seen + [p for p in pairs if p["withheld"]]) for m in "ab"]
    verdicts = [records.EncoderPair(encoder, p["pair_id"], p["pattern"], 0.9, 0.2 if separates[k] else 0.01, 0.1, None,
                                    None, None, 0, None, None, None, separates[k], records.BY_PATCH)
                for encoder, separates in DIAG_SEPARATES.items() for k, p in enumerate(seen)]
    questions, predictions = [], []
    for k, p in enumerate(seen if models else []):
        pair_right = all(DIAG_RIGHT[k])
        for m, right in zip("ab", DIAG_RIGHT[k]):
            item = records.item_id(p["pair_id"], m)
            no_image_right = m == "a"  # the model answers (a) without an image; planted: right on every first image
            questions.append(records.ModelQuestion(
                DIAG_MODEL, item, p["pair_id"], m, p["pattern"], right, pair_right, no_image_right, False,
                None if right else no_image_right, DIAG_GRIDS, DIAG_SHUFFLE_ACCURACY, (0.0, 0.5), (1.0, 0.0),
                None, None, None, None, tuple(DIAG_SEPARATES),
                tuple(records.bucket(s[k], pair_right) for s in DIAG_SEPARATES.values())))
            predictions.append(records.Prediction(DIAG_MODEL, item, p["pair_id"], m, records.IMAGE, None, None,
                                                  "(a)" if right == (m == "a") else "(b)",
                                                  "(a)" if right == (m == "a") else "(b)", right))
            predictions.append(records.Prediction(DIAG_MODEL, item, p["pair_id"], m, records.NO_IMAGE, None, None,
                                                  "(a)", "(a)", no_image_right))
    return {"diagnostics": records.to_table("diagnostics", audit), "encoders": records.to_table("encoders", verdicts),
            "models": records.to_table("models", questions), "predictions": records.to_table("predictions", predictions)}


def write_diagnostics(tables: dict[str, pa.Table], folder: Path) -> Path:
    """The diagnose stage's output folder for `tables`: `<config>.parquet` each."""
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    for config, table in tables.items():
        pq.write_table(table, folder / f"{config}.parquet")
    return folder


def refuse_connections(monkeypatch) -> None:
    """Refuse every socket connection (loopback included) for the rest of the test: what reads a release offline."""
    import socket

    def refuse(self, address):
        raise AssertionError(f"tried to connect to {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", lambda address, *a, **k: refuse(None, address))


# What a release written before the diagnostics and the answer balance existed lacks (pipeline/release/folder.py
# at that time): the items' options_swapped column, the manifest's configs, answer_balance and diagnostics, the
# croissant.json and its layout entry.
PRE_DIAGNOSTICS_MANIFEST_KEYS = ("configs", "answer_balance", "diagnostics")
PRE_DIAGNOSTICS_COLUMN = "options_swapped"


def as_release_before_diagnostics(folder: Path, out: Path) -> Path:
    """A copy of the release at `folder` (built without diagnostics) as the package stage wrote it before the
    diagnostics existed, in what `remove` reads: the items' parquet, the manifest, croissant.json (the card and the
    webdataset shards keep today's text), SHA256SUMS written anew over what is left."""
    import pyarrow.parquet as pq

    from pipeline.diagnostics import records
    from pipeline.release import folder as release

    shutil.copytree(folder, out)
    for config in records.CONFIGS:
        assert not (out / config).exists(), f"{folder} carries diagnostics: build it without --diagnostics"
    (out / release.CROISSANT).unlink()
    path = out / release.PARQUET_PATH
    table = pq.read_table(path).drop_columns([PRE_DIAGNOSTICS_COLUMN])
    meta = dict(table.schema.metadata or {})
    hf = json.loads(meta[b"huggingface"])
    del hf["info"]["features"][PRE_DIAGNOSTICS_COLUMN]
    meta[b"huggingface"] = json.dumps(hf).encode()
    pq.write_table(table.replace_schema_metadata(meta), path, row_group_size=100, compression="zstd",
                   write_statistics=False)
    manifest = json.loads((out / release.MANIFEST).read_text())
    for key in PRE_DIAGNOSTICS_MANIFEST_KEYS:
        del manifest[key]
    del manifest["layouts"]["croissant"]
    (out / release.MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    files = {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
             if p.is_file() and p.name != release.SUMS}
    (out / release.SUMS).write_text(release.sums_text(files))
    return out
