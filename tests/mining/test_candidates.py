"""The candidates metadata: a typed record that search writes to the table's footer and mine and calibrate read."""

import json

import pytest

from pipeline.core import schemas
from pipeline.mining.candidates import CandidatesMeta, SimilaritySample, ids_digest, read_candidates
from pipeline.params import NearDuplicateGuard

IDS = ["a", "b", "c"]
# the footer as the search stage has always written it (a partitioned search adds its recall fields)
FOOTER = {
    "images_sha256": ids_digest(IDS),
    "encoders": {"clip": {"name": "clip", "random_init": True, "dim": 8}, "dino": {"name": "dino", "dim": 8}},
    "search": {"images": 3, "pairs_possible": 3, "mode": "partitioned", "recall_clip_threshold": 0.9, "candidates": 0,
               "near_duplicates_dropped": 1, "dot_products": 9, "recall_against_exact": 1.0,
               "recall_interval": [0.5, 1.0]},
    "near_duplicate": {"clip": 0.995, "dino": 0.98},
    "sample": {"pairs": 2, "seed": 0, "grid": [0.0, 0.5, 1.0], "clip": [0.1, 0.2, 0.3], "dino": [0.0, 0.1, 0.2]},
}


def _write(path, footer):
    schemas.write_table(schemas.CANDIDATES.empty_table(), path, "candidates", meta=footer)


def test_the_footer_reads_as_a_typed_record_and_writes_back_the_same_json(tmp_path):
    _write(tmp_path / "c.parquet", FOOTER)
    meta = read_candidates(tmp_path / "c.parquet", IDS)[1]
    assert isinstance(meta, CandidatesMeta)
    assert meta.near_duplicate == NearDuplicateGuard(clip=0.995, dino=0.98)
    assert meta.sample == SimilaritySample(pairs=2, seed=0, grid=(0.0, 0.5, 1.0), clip=(0.1, 0.2, 0.3), dino=(0.0, 0.1, 0.2))
    assert (meta.pairs_possible, meta.recall_clip_threshold, meta.near_duplicates_dropped) == (3, 0.9, 1)
    assert meta.search["recall_interval"] == [0.5, 1.0] and meta.encoders["clip"]["random_init"] is True
    # the same footer bytes: search writes to_footer() where it wrote the dict
    assert json.dumps(meta.to_footer(), sort_keys=True) == json.dumps(FOOTER, sort_keys=True)
    _write(tmp_path / "again.parquet", meta.to_footer())
    assert schemas.read_meta(tmp_path / "again.parquet") == FOOTER


def test_the_record_is_frozen():
    meta = CandidatesMeta.from_footer(FOOTER, "c.parquet")
    with pytest.raises(AttributeError):
        meta.images_sha256 = "x"  # type: ignore[misc]


@pytest.mark.parametrize("drop", ["sample", "near_duplicate", "encoders", "search.pairs_possible",
                                  "search.recall_clip_threshold", "search.near_duplicates_dropped"])
def test_a_footer_missing_a_field_names_the_file_the_field_and_the_fix(tmp_path, drop):
    footer = json.loads(json.dumps(FOOTER))
    if "." in drop:
        del footer["search"][drop.split(".")[1]]
    else:
        del footer[drop]
    _write(tmp_path / "old.parquet", footer)
    with pytest.raises(schemas.SchemaError, match=rf"old\.parquet: the candidates metadata lacks '{drop}'.*rerun the search stage"):
        read_candidates(tmp_path / "old.parquet", IDS)


def test_a_table_for_other_images_is_refused_before_its_metadata_is_read(tmp_path):
    _write(tmp_path / "c.parquet", {"images_sha256": ids_digest(["z"])})
    with pytest.raises(schemas.SchemaError, match="indexes another images table"):
        read_candidates(tmp_path / "c.parquet", IDS)
