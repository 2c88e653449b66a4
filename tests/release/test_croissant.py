"""croissant.json: valid Croissant 1.0 under `mlcroissant`, offline, whose records read back equal the parquets.

Every socket connection is refused while mlcroissant reads the file, so a validation that would fetch
anything (a remote @context, a contentUrl on the web) fails the test instead of passing on the network.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline import package
from pipeline.diagnostics import records
from pipeline.release import croissant
from pipeline.release import folder as release
from tests.helpers.release_world import (
    build_inputs,
    diagnostics_tables,
    package_args,
    refuse_connections,
    write_diagnostics,
)

# Recommended by mlcroissant, left out on purpose: a build's bytes must not depend on the day it ran.
ACCEPTED_WARNINGS = ("datePublished",)


@pytest.fixture(scope="module")
def built(sample_corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("croissant")
    inputs = build_inputs(sample_corpus, root / "inputs")
    folder = write_diagnostics(diagnostics_tables(inputs), root / "diagnostics")
    out = root / "release"
    assert package.main(package_args(inputs, out, root / "package.json", "--diagnostics", str(folder))) == 0
    return out


@pytest.fixture
def offline(monkeypatch):
    """Refuse every network connection (loopback included: nothing here has a server to reach)."""
    refuse_connections(monkeypatch)


def _dataset(folder: Path):
    import mlcroissant as mlc

    return mlc.Dataset(jsonld=str(folder / release.CROISSANT))


def test_mlcroissant_validates_it_offline(built, offline):
    ds = _dataset(built)  # raises mlcroissant.ValidationError on any error
    issues = ds.metadata.ctx.issues
    assert not issues.errors
    assert all(any(w in warning for w in ACCEPTED_WARNINGS) for warning in issues.warnings), issues.warnings
    doc = json.loads((built / release.CROISSANT).read_text())
    assert doc["conformsTo"] == croissant.CONFORMS_TO == "http://mlcommons.org/croissant/1.0"
    assert ds.metadata.version == "1.0.0" and ds.metadata.name == "clipblind-test"


def test_context_is_the_one_mlcroissant_writes_for_croissant_1_0(built):
    from mlcroissant._src.core.rdf import make_context

    assert json.loads((built / release.CROISSANT).read_text())["@context"] == make_context()


def test_distribution_lists_each_parquet_with_its_sha256_and_a_relative_url(built):
    doc = json.loads((built / release.CROISSANT).read_text())
    files = {f["@id"]: f for f in doc["distribution"]}
    manifest = release.read_manifest(built)
    parquets = [c["path"] for c in manifest["configs"].values()]
    assert parquets == [release.PARQUET_PATH, *(release.config_path(c) for c in records.CONFIGS)]
    tars = sorted(p.relative_to(built).as_posix() for p in (built / release.WEBDATASET_DIR).glob("*.tar"))
    assert sorted(files) == sorted(parquets + tars)
    for path, f in files.items():
        assert f["contentUrl"] == path and not Path(path).is_absolute() and "://" not in path
        assert f["sha256"] == release.file_sha256(built / path)
        assert f["encodingFormat"] == (croissant.PARQUET if path.endswith(".parquet") else croissant.TAR)
    assert [r["@id"] for r in doc["recordSet"]] == list(manifest["configs"])


def _plain(value):
    """A value as mlcroissant yields it, in Python's terms: text as str, numpy scalars as Python ones."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value.item() if hasattr(value, "item") else value


def test_default_records_read_back_equal_the_parquet(built, offline):
    rows = pq.read_table(built / release.PARQUET_PATH).to_pylist()
    got = [{k.split("/", 1)[1]: v for k, v in r.items()} for r in _dataset(built).records(release.DEFAULT_CONFIG)]
    assert len(got) == len(rows) == 8
    for row, record in zip(rows, got):
        image = record.pop("image")
        if row["image"] is None:
            assert image is None
        else:  # an ImageObject: the embedded bytes, decoded
            assert image.tobytes() == Image.open(io.BytesIO(row["image"]["bytes"])).tobytes()
        del row["image"]
        assert {k: _plain(v) for k, v in record.items()} == row


@pytest.mark.parametrize("config", list(records.CONFIGS))
def test_each_diagnostics_record_set_reads_back_equal_to_its_parquet(built, offline, config):
    rows = pq.read_table(built / release.config_path(config)).to_pylist()
    got = [{k.split("/", 1)[1]: _plain(v) for k, v in r.items()} for r in _dataset(built).records(config)]
    assert got == rows and rows


def test_fields_are_typed_from_the_arrow_schemas(built):
    doc = json.loads((built / release.CROISSANT).read_text())
    sets = {r["@id"]: r for r in doc["recordSet"]}
    models = {f["name"]: f for f in sets["models"]["field"]}
    assert [f["name"] for f in sets["models"]["field"]] == records.SCHEMAS["models"].names
    assert models["correct"]["dataType"] == "sc:Boolean" and "repeated" not in models["correct"]
    assert models["shuffle_grids"]["dataType"] == "cr:Int64" and models["shuffle_grids"]["repeated"] is True
    assert models["shuffle_accuracy"]["dataType"] == "cr:Float64"
    assert models["buckets"]["dataType"] == "sc:Text" and models["buckets"]["repeated"] is True
    items = {f["name"]: f for f in sets[release.DEFAULT_CONFIG]["field"]}
    assert [f["name"] for f in sets[release.DEFAULT_CONFIG]["field"]] == [name for name, _ in release.FEATURES_SPEC]
    assert items["image"]["dataType"] == "sc:ImageObject"
    assert items["clip_sim"]["dataType"] == "cr:Float32" and items["mmvp_index"]["dataType"] == "cr:Int32"
    assert items["options"]["repeated"] is True


def test_responsible_ai_fields_say_how_it_was_made_and_what_it_is_not(built, offline):
    meta = _dataset(built).metadata
    manifest = release.read_manifest(built)
    biases = " ".join(meta.data_biases)
    assert "CLIP-blind by construction" in biases
    # the world was mined with random-weight encoders: every place that warns says so
    assert "RANDOMLY INITIALISED encoders (clip, dino)" in biases and "RANDOMLY INITIALISED" in meta.data_limitations[0]
    balance = manifest["answer_balance"]
    assert f"(a) in {balance['first_answer_a']} and (b) in {balance['first_answer_b']} of 4 pairs" in biases
    assert "1 questions whose right answer text alone predicts above 0.75" in biases
    protocol = " ".join(meta.data_annotation_protocol)
    assert "Writers" in protocol and "Verifiers" in protocol and "verified" in protocol
    for source, licences in manifest["counts"]["licenses_per_source"].items():
        assert f"{source}: {', '.join(licences)}" in meta.data_collection_raw_data
    assert meta.data_collection and "pairs mined" in meta.data_collection
    assert meta.personal_sensitive_information and meta.data_use_cases and meta.data_social_impact
    assert "clipblind remove" in meta.data_release_maintenance_plan
    assert meta.data_annotation_platform and meta.data_annotation_analysis and meta.annotations_per_item
