"""The hostile corpus: every odd, broken, disguised or escaping input is accounted for exactly,
the same way twice, from a folder and from webdataset shards."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest
import yaml

from pipeline import ingest
from pipeline.core import schemas
from pipeline.images.corpus import Corpus
from tests.conftest import tiny_params
from tests.helpers.corpus_fixtures import (
    BLOCKED,
    DUPLICATE,
    MAX_BYTES,
    MAX_PIXELS,
    OK,
    blocked_hashes,
    variants,
    write_folder,
    write_shards,
)
from tests.helpers.params import KIND_KEYS, demo_params, source_params


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("hostile")
    items = variants()
    blocklist = base / "blocklist.sha256"
    blocklist.write_text("# hashes never to show\n" + "".join(f"{h}  flagged.png\n" for h in blocked_hashes(items)))
    return {
        "base": base,
        "items": items,
        "blocklist": blocklist,
        "folder": write_folder(base / "folder", items, base / "outside"),
        "shards": write_shards(base / "shards", items, base / "exploited"),
    }


def _outcomes(images: list[dict], rejects: list[dict]) -> dict[str, str]:
    got = {}
    for row in images:
        got[row["locations"][0]] = OK
        got.update({loc: DUPLICATE for loc in row["locations"][1:]})
    for row in rejects:
        assert row["location"] not in got, f"{row['location']} has two outcomes"
        got[row["location"]] = row["reason"]
    return got


def _run(base: Path, kind: str, source: Path, blocklist: Path, run: str, state: bool, workers: int = 1) -> tuple[dict, list, list]:
    params = base / f"params-{kind}-{run}.yaml"
    params.write_text(yaml.safe_dump(tiny_params(
        ingest={"source": {"kind": kind, "name": kind, "license": "CC0-1.0", "max_bytes": MAX_BYTES, **KIND_KEYS.get(kind, {})},
                "max_pixels": MAX_PIXELS, "batch_size": 16, "workers": workers}
    )))
    out = base / f"out-{kind}-{run}"
    args = ["--params", str(params), "--source", str(source), "--images", str(out / "images.parquet"),
            "--rejects", str(out / "rejects.parquet"), "--metrics", str(out / "metrics.json"),
            "--blocklist", str(blocklist)]
    if state:
        args += ["--state", str(base / f"state-{kind}")]
    assert ingest.main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    images = schemas.read_table(out / "images.parquet", "images").to_pylist()
    rejects = schemas.read_table(out / "rejects.parquet", "rejects").to_pylist()
    return metrics, images, rejects


def _check(metrics: dict, images: list, rejects: list, expected: dict[str, str]) -> None:
    assert _outcomes(images, rejects) == expected
    want = Counter(expected.values())
    assert metrics["inputs"] == len(expected) >= 60
    assert metrics["accepted"] == want[OK] == len(images)
    assert metrics["duplicates"] == want[DUPLICATE]
    assert metrics["blocked"] == want[BLOCKED]
    assert metrics["rejected_by_reason"] == {k: n for k, n in sorted(want.items()) if k not in (OK, DUPLICATE, BLOCKED)}
    assert metrics["accepted"] + metrics["duplicates"] + metrics["blocked"] + metrics["rejected"] == metrics["inputs"]
    ids = [row["image_id"] for row in images]
    assert ids == sorted(set(ids))


@pytest.mark.parametrize("kind", ["folder", "webdataset"])
def test_hostile_corpus_is_accounted_for_exactly_and_identically_twice(hostile, kind):
    source = hostile["base"] / ("folder" if kind == "folder" else "shards")
    expected = hostile["folder" if kind == "folder" else "shards"]
    first = _run(hostile["base"], kind, source, hostile["blocklist"], "first", state=True)
    _check(*first, expected)
    second = _run(hostile["base"], kind, source, hostile["blocklist"], "second", state=True)
    assert second[0]["parts_reused"] == second[0]["parts"] > 0 and second[0]["decoded"] == 0
    fresh = _run(hostile["base"], kind, source, hostile["blocklist"], "fresh", state=False, workers=2)
    assert first[1:] == second[1:] == fresh[1:]
    assert {k: v for k, v in first[0].items() if not k.startswith(("parts", "decoded", "reused"))} == \
        {k: v for k, v in second[0].items() if not k.startswith(("parts", "decoded", "reused"))}
    out = hostile["base"]
    for name in ("images.parquet", "rejects.parquet"):  # byte-identical tables
        assert (out / f"out-{kind}-first" / name).read_bytes() == (out / f"out-{kind}-fresh" / name).read_bytes()
    assert not (out / "exploited").exists(), "a pickle member was unpickled"


def test_hostile_rejects_say_what_was_seen(hostile):
    _, _, rejects = _run(hostile["base"], "folder", hostile["base"] / "folder", hostile["blocklist"], "detail", state=False)
    detail = {r["location"]: r["detail"] for r in rejects}
    assert detail["disguised/photoshop.jpg"].startswith("PSD content")
    assert detail["disguised/document.jpg"].startswith("PDF content")
    assert "exceeds the cap of 1000000 pixels" in detail["bomb/forged_ihdr.png"]
    assert "leads outside" in detail["links/escape.jpg"]
    assert "blocklist" in detail["blocked/flagged.png"]


def test_webdataset_licence_comes_from_the_sample_json(hostile):
    source = source_params("webdataset", name="w", license="default-licence")
    result = ingest.ingest(Corpus(source, hostile["base"] / "shards"), demo_params("ingest", source=source, max_pixels=MAX_PIXELS))
    licences = Counter(result.images.column("source_license").to_pylist())
    assert set(licences) == {"CC-BY-0", "CC-BY-1", "CC-BY-2"}


def test_every_accepted_image_reads_back_by_location(hostile):
    """embed and export re-read bytes by `source_path`: it must give exactly the ingested bytes."""
    for kind, folder in (("folder", "folder"), ("webdataset", "shards")):
        source = source_params(kind)
        corpus = Corpus(source, hostile["base"] / folder)
        result = ingest.ingest(corpus, demo_params("ingest", source=source, max_pixels=MAX_PIXELS))
        for row in result.images.to_pylist():
            for location in row["locations"]:
                assert hashlib.sha256(corpus.read(location)).hexdigest() == row["image_id"], location
