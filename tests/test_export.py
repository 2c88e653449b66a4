import json

import numpy as np
import pyarrow as pa
from PIL import Image

from pipeline import export, ingest
from pipeline.core import schemas
from pipeline.images import display
from pipeline.images.decode import decode
from pipeline.params import ExportParams


def test_export_writes_display_copies_and_one_task_per_pair(sample_corpus, params_file, tmp_path):
    data = tmp_path / "data"
    ingest.main([
        "--params", str(params_file), "--source", str(sample_corpus), "--images", str(data / "images.parquet"),
        "--rejects", str(data / "rejects.parquet"), "--metrics", str(tmp_path / "i.json"),
    ])
    images = schemas.read_table(data / "images.parquet", "images").to_pylist()
    a, b, c = images[0]["image_id"], images[1]["image_id"], images[2]["image_id"]
    pairs = pa.table(
        {
            "pair_id": [schemas.pair_id(a, b), schemas.pair_id(a, c)],
            "image_a": [a, a], "image_b": [b, c],
            "clip_sim": pa.array([0.97, 0.96], pa.float32()), "dino_sim": pa.array([0.5, 0.4], pa.float32()),
        }
    )
    schemas.write_table(pairs, data / "pairs.parquet", "pairs", meta={"encoders": {"clip": {"random_init": True}, "dino": {"random_init": False}}})
    assert export.main([
        "--params", str(params_file), "--pairs", str(data / "pairs.parquet"), "--images", str(data / "images.parquet"),
        "--source", str(sample_corpus), "--display", str(data / "display"), "--tasks", str(data / "tasks.json"),
        "--metrics", str(tmp_path / "e.json"),
    ]) == 0
    tasks = json.loads((data / "tasks.json").read_text())
    assert [t["data"]["pair_id"] for t in tasks] == sorted(pairs.column("pair_id").to_pylist())
    first = tasks[0]["data"]
    assert first["image_a"] == "/data/local-files/?d=" + display.display_name(first["image_a_id"])
    assert first["random_init_encoders"] == "clip"
    assert sorted(p.name for p in (data / "display").iterdir()) == sorted(display.display_name(i) for i in (a, b, c))
    # the display copy shows what the canonical decode produced (up to JPEG loss)
    row = next(r for r in images if r["image_id"] == a)
    reference = decode((sample_corpus / row["source_path"]).read_bytes()).image
    reference.thumbnail((128, 128))  # display_max_side in the tiny params
    shown = np.asarray(Image.open(data / "display" / display.display_name(a)).convert("RGB"), dtype=np.float32)
    assert shown.shape == (128, 128, 3)
    assert np.abs(shown - np.asarray(reference, dtype=np.float32)).mean() < 6
    metrics = json.loads((tmp_path / "e.json").read_text())
    assert metrics == {"pairs": 2, "tasks": 2, "pairs_skipped": 0, "images_failed": {}, "display_images": 3,
                       "display_images_written": 3, "random_init_encoders": ["clip"]}


def test_an_image_gone_since_ingest_costs_only_its_pairs(sample_corpus, params_file, tmp_path, capsys):
    import shutil

    corpus = tmp_path / "corpus"
    shutil.copytree(sample_corpus, corpus)
    data = tmp_path / "data"
    ingest.main([
        "--params", str(params_file), "--source", str(corpus), "--images", str(data / "images.parquet"),
        "--rejects", str(data / "rejects.parquet"), "--metrics", str(tmp_path / "i.json"),
    ])
    images = schemas.read_table(data / "images.parquet", "images").to_pylist()
    a, b, c = (r["image_id"] for r in images[:3])
    pairs = pa.table(
        {
            "pair_id": [schemas.pair_id(a, b), schemas.pair_id(b, c)],
            "image_a": [a, b], "image_b": [b, c],
            "clip_sim": pa.array([0.97, 0.96], pa.float32()), "dino_sim": pa.array([0.5, 0.4], pa.float32()),
        }
    )
    schemas.write_table(pairs, data / "pairs.parquet", "pairs")
    (corpus / images[0]["source_path"]).write_bytes(b"")  # image a is emptied after ingest
    assert export.main([
        "--params", str(params_file), "--pairs", str(data / "pairs.parquet"), "--images", str(data / "images.parquet"),
        "--source", str(corpus), "--display", str(data / "display"), "--tasks", str(data / "tasks.json"),
        "--metrics", str(tmp_path / "e.json"),
    ]) == 0
    tasks = json.loads((data / "tasks.json").read_text())
    assert [t["data"]["pair_id"] for t in tasks] == [schemas.pair_id(b, c)]
    metrics = json.loads((tmp_path / "e.json").read_text())
    assert metrics["pairs"] == metrics["tasks"] + metrics["pairs_skipped"] == 2
    assert metrics["images_failed"] == {a: "empty_file"}
    assert a in capsys.readouterr().err


def test_display_copy_carries_no_text_of_the_source_file():
    import io

    source = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(source, format="JPEG", comment=b"private note of the photographer")
    params = ExportParams(url_prefix="/data/local-files/?d=display/", display_max_side=64, jpeg_quality=90)
    plain = Image.open(io.BytesIO(display.display_bytes(source.getvalue(), params, max_pixels=10_000)))
    assert "comment" not in plain.info
    stamped = Image.open(io.BytesIO(display.display_bytes(source.getvalue(), params, max_pixels=10_000, comment=b"rules")))
    assert stamped.info["comment"] == b"rules"
