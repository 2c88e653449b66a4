"""Corpus sources: each kind lists its items with locations and licences and reads them back."""

from __future__ import annotations

import hashlib
import io
import tarfile
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline import ingest
from pipeline.images.corpus import Corpus, SourceUnavailable
from pipeline.images.decode import DecodeError, RejectReason
from tests.helpers.params import demo_params, source_params


def _png(shade: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (12, 10), (shade, 255 - shade, 7)).save(out, format="PNG")
    return out.getvalue()


def _shard(samples: dict[str, dict[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as archive:
        for key, members in samples.items():
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime = len(data), 0
                archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _roundtrip(corpus: Corpus) -> list[str]:
    """Ingest `corpus`, check every location reads back to its image's bytes; return the locations."""
    result = ingest.ingest(corpus, demo_params("ingest", source=corpus.params))
    assert result.metrics["rejected"] == 0
    locations = []
    for row in result.images.to_pylist():
        for location in row["locations"]:
            assert hashlib.sha256(corpus.read(location)).hexdigest() == row["image_id"]
            locations.append(location)
    return sorted(locations)


def test_parquet_manifest_rows_keep_their_licence(tmp_path):
    for k in range(5):
        (tmp_path / f"{k}.png").write_bytes(_png(k * 40))
    table = pa.table({"file": [f"{k}.png" for k in range(5)], "lic": ["CC-BY-4.0", None, "CC0-1.0", "", "MIT"]})
    pq.write_table(table, tmp_path / "list.parquet")
    source = source_params("manifest", license="unknown", path_column="file", license_column="lic", part_size=2)
    corpus = Corpus(source, tmp_path / "list.parquet")
    assert [p.id for p in corpus.parts()] == ["rows 0-1", "rows 2-3", "rows 4-4"]
    result = ingest.ingest(corpus, demo_params("ingest", source=source))
    licences = dict(zip(result.images.column("source_path").to_pylist(), result.images.column("source_license").to_pylist()))
    assert licences == {"0.png": "CC-BY-4.0", "1.png": "unknown", "2.png": "CC0-1.0", "3.png": "unknown", "4.png": "MIT"}


def test_folder_read_refuses_paths_outside_the_root(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "secret.png").write_bytes(_png(1))
    corpus = Corpus(source_params("folder"), tmp_path / "root")
    for location in ("../secret.png", str(tmp_path / "secret.png"), "a/../../secret.png"):
        with pytest.raises(DecodeError) as err:
            corpus.read(location)
        assert err.value.reason is RejectReason.PATH_ESCAPE


def test_webdataset_shards_by_directory_pattern_gzip_and_fsspec_url(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "part-0.tar").write_bytes(_shard({"a": {"png": _png(1), "json": b'{"license": "CC-BY-4.0"}'}, "b": {"png": _png(2)}}))
    gz = io.BytesIO()
    with tarfile.open(fileobj=gz, mode="w:gz") as archive:
        data = _png(3)
        info = tarfile.TarInfo("c.png")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    (shards / "part-1.tar.gz").write_bytes(gz.getvalue())
    expected = ["part-0.tar#a.png", "part-0.tar#b.png", "part-1.tar.gz#c.png"]
    assert _roundtrip(Corpus(source_params("webdataset"), shards)) == expected
    pattern = f"{shards}/part-{{0..0}}.tar"
    assert _roundtrip(Corpus(source_params("webdataset"), pattern)) == [f"{shards}/part-0.tar#a.png", f"{shards}/part-0.tar#b.png"]
    url = f"file://{shards}/part-0.tar"
    assert _roundtrip(Corpus(source_params("webdataset"), url)) == [f"{url}#a.png", f"{url}#b.png"]


def test_webdataset_from_a_non_local_fsspec_filesystem(tmp_path):
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe("/clipblind-test/shard-0.tar", _shard({"x": {"jpg": _png(9)}, "y": {"png": _png(10)}}))
    try:
        assert _roundtrip(Corpus(source_params("webdataset"), "memory://clipblind-test/shard-*.tar")) == [
            "memory:///clipblind-test/shard-0.tar#x.jpg", "memory:///clipblind-test/shard-0.tar#y.png"]
    finally:
        fs.rm("/clipblind-test", recursive=True)


def test_pipe_urls_run_only_when_allowed(tmp_path):
    (tmp_path / "s.tar").write_bytes(_shard({"a": {"png": _png(4)}}))
    url = f"pipe:cat {tmp_path / 's.tar'}"
    with pytest.raises(SourceUnavailable, match="allow_pipe"):
        Corpus(source_params("webdataset"), url)
    assert _roundtrip(Corpus(source_params("webdataset", allow_pipe=True), url)) == [f"{url}#a.png"]


def test_hf_dataset_on_disk_with_image_and_licence_columns(tmp_path):
    datasets = pytest.importorskip("datasets")
    images = [{"bytes": _png(k * 30), "path": None} for k in range(4)] + [None]
    ds = datasets.Dataset.from_dict(
        {"image": images, "lic": ["CC-BY-4.0", None, "CC0-1.0", "MIT", "MIT"]},
        features=datasets.Features({"image": datasets.Image(), "lic": datasets.Value("string")}),
    )
    ds.save_to_disk(str(tmp_path / "ds"))
    source = source_params("hf", license="unknown", license_column="lic", part_size=3)
    corpus = Corpus(source, tmp_path / "ds")
    result = ingest.ingest(corpus, demo_params("ingest", source=source))
    assert result.metrics["inputs"] == 5 and result.metrics["accepted"] == 4
    assert result.metrics["rejected_by_reason"] == {"no_image": 1}
    rows = {r["source_path"]: r["source_license"] for r in result.images.to_pylist()}
    assert rows == {"0": "CC-BY-4.0", "1": "unknown", "2": "CC0-1.0", "3": "MIT"}
    for row in result.images.to_pylist():
        assert hashlib.sha256(corpus.read(row["source_path"])).hexdigest() == row["image_id"]


def test_hf_hub_id_offline_fails_fast_with_the_fix(monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    with pytest.raises(SourceUnavailable, match="huggingface-cli download --repo-type dataset someone/some-images"):
        Corpus(source_params("hf"), "someone/some-images")
    assert time.monotonic() - started < 10


def test_missing_image_column_names_the_columns(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"picture": [b"x"]}).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(SourceUnavailable, match=r"no column 'image' \(columns: \['picture'\]\)"):
        Corpus(source_params("hf"), tmp_path / "ds")


def test_missing_sources_are_clear_errors(tmp_path):
    with pytest.raises(SourceUnavailable, match="no folder"):
        Corpus(source_params("folder", name="photos"), tmp_path / "nope")
    with pytest.raises(SourceUnavailable, match="no .tar shards"):
        Corpus(source_params("webdataset"), tmp_path)
    with pytest.raises(SourceUnavailable, match="no manifest"):
        Corpus(source_params("manifest"), tmp_path / "list.csv")
