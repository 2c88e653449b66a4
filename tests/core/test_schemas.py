import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core import schemas


def _pairs(n=2):
    return pa.table(
        {
            "pair_id": [schemas.pair_id("a", f"b{k}") for k in range(n)],
            "image_a": ["a"] * n,
            "image_b": [f"b{k}" for k in range(n)],
            "clip_sim": pa.array([0.97] * n, pa.float32()),
            "dino_sim": pa.array([0.3] * n, pa.float32()),
        }
    )


def test_round_trip_keeps_rows_and_metadata(tmp_path):
    path = tmp_path / "pairs.parquet"
    schemas.write_table(_pairs(), path, "pairs", meta={"search": "exhaustive"})
    back = schemas.read_table(path, "pairs")
    assert back.equals(_pairs().cast(schemas.PAIRS))
    assert schemas.read_meta(path) == {"search": "exhaustive"}
    assert pq.read_schema(path).metadata[b"clipblind.schema_version"] == schemas.SCHEMA_VERSION.encode()


def test_write_refuses_a_wrong_schema(tmp_path):
    bad = _pairs().drop(["dino_sim"])
    with pytest.raises(schemas.SchemaError, match="expected"):
        schemas.write_table(bad, tmp_path / "x.parquet", "pairs")
    assert not (tmp_path / "x.parquet").exists()


def test_read_refuses_another_kind_or_version(tmp_path):
    path = tmp_path / "pairs.parquet"
    schemas.write_table(_pairs(), path, "pairs")
    with pytest.raises(schemas.SchemaError, match="expected 'images'"):
        schemas.read_table(path, "images")
    table = pq.read_table(path)
    meta = dict(table.schema.metadata)
    meta[b"clipblind.schema_version"] = b"0"
    pq.write_table(table.replace_schema_metadata(meta), path)
    with pytest.raises(schemas.SchemaError, match="schema version"):
        schemas.read_table(path, "pairs")


def test_pair_id_is_unordered_and_distinct():
    assert schemas.pair_id("x", "y") == schemas.pair_id("y", "x")
    assert schemas.pair_id("x", "y") != schemas.pair_id("x", "z")


def test_every_table_handed_between_stages_is_defined_in_schemas_itself():
    """Reading a table needs no other module imported first: schemas alone knows every hand-off."""
    import subprocess
    import sys

    code = "from pipeline.core import schemas; print(' '.join(sorted(schemas.TABLES)))"
    kinds = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert {"images", "rejects", "pairs", "candidates", "image_groups", "annotations", "question_outcomes", "accepted",
            "gate"} <= set(kinds)
