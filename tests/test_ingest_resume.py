"""Reruns: finished parts are skipped, a grown corpus decodes only its new files, a killed run
resumes, blocklist changes apply without re-reading, and parallel decode changes nothing."""

from __future__ import annotations

import hashlib
import io
import shutil
from pathlib import Path

import pytest
from PIL import Image

from pipeline import ingest
from pipeline.images.corpus import Corpus
from tests.helpers.params import demo_params, source_params

SOURCE = source_params("folder", name="grow", license="CC0-1.0")


def _jpeg(seed: int) -> bytes:
    out = io.BytesIO()
    Image.effect_noise((24, 16), 20 + seed).convert("RGB").save(out, format="JPEG")
    return out.getvalue()


def _corpus(root: Path, dirs: int = 3, per_dir: int = 4) -> Path:
    for d in range(dirs):
        for k in range(per_dir):
            path = root / f"d{d}" / f"{k}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(_jpeg(d * 100 + k))
    (root / "d0" / "broken.jpg").write_bytes(_jpeg(999)[:100])
    return root


def _ingest(root: Path, state: Path | None, **kw) -> ingest.IngestResult:
    params = demo_params("ingest", source=SOURCE, batch_size=kw.pop("batch_size", 3), workers=kw.pop("workers", 1))
    return ingest.ingest(Corpus(SOURCE, root), params, state_dir=state, **kw)


def _same(a: ingest.IngestResult, b: ingest.IngestResult) -> bool:
    return a.images.equals(b.images) and a.rejects.equals(b.rejects)


def test_grown_corpus_decodes_only_new_files(tmp_path):
    root = _corpus(tmp_path / "c")
    first = _ingest(root, tmp_path / "state")
    assert first.metrics["decoded"] == 13 and first.metrics["parts_reused"] == 0
    (root / "d1" / "new.jpg").write_bytes(_jpeg(5000))
    (root / "d3").mkdir()
    (root / "d3" / "new.jpg").write_bytes(_jpeg(6000))
    grown = _ingest(root, tmp_path / "state")
    assert grown.metrics["decoded"] == 2
    assert grown.metrics["parts"] == 4 and grown.metrics["parts_reused"] == 2
    assert grown.metrics["reused_items"] == 4  # the old files of d1, not read again
    assert _same(grown, _ingest(root, None))


def test_changed_file_is_read_again(tmp_path):
    root = _corpus(tmp_path / "c")
    _ingest(root, tmp_path / "state")
    (root / "d2" / "0.jpg").write_bytes(_jpeg(7000))
    rerun = _ingest(root, tmp_path / "state")
    assert rerun.metrics["decoded"] == 1
    assert _same(rerun, _ingest(root, None))


def test_killed_run_resumes_at_the_unfinished_part(tmp_path, monkeypatch):
    root = _corpus(tmp_path / "c")
    real = ingest.examine
    calls = {"n": 0}

    def dies_on_the_ninth(data: bytes, max_pixels: int):
        calls["n"] += 1
        if calls["n"] == 9:
            raise KeyboardInterrupt
        return real(data, max_pixels)

    monkeypatch.setattr(ingest, "examine", dies_on_the_ninth)
    with pytest.raises(KeyboardInterrupt):
        _ingest(root, tmp_path / "state")
    monkeypatch.setattr(ingest, "examine", real)
    resumed = _ingest(root, tmp_path / "state")
    assert resumed.metrics["parts_reused"] == 1  # d0 (5 files) finished before the kill, d1 did not
    assert resumed.metrics["decoded"] == 8
    assert _same(resumed, _ingest(root, None))


def test_blocklist_changes_apply_without_reading_again(tmp_path):
    root = _corpus(tmp_path / "c")
    _ingest(root, tmp_path / "state")
    flagged = hashlib.sha256((root / "d1" / "2.jpg").read_bytes()).hexdigest()
    blocked = _ingest(root, tmp_path / "state", blocklist=frozenset({flagged}))
    assert blocked.metrics["decoded"] == 0 and blocked.metrics["blocked"] == 1
    assert flagged not in blocked.images.column("image_id").to_pylist()
    assert blocked.rejects.to_pylist()[-1]["location"] == "d1/2.jpg"
    # an item never decoded because it was blocked is decoded once it is unblocked
    fresh_state = tmp_path / "state2"
    _ingest(root, fresh_state, blocklist=frozenset({flagged}))
    unblocked = _ingest(root, fresh_state)
    assert unblocked.metrics["decoded"] == 1 and unblocked.metrics["blocked"] == 0
    assert _same(unblocked, _ingest(root, None))


def test_parallel_decode_gives_identical_results(tmp_path):
    root = _corpus(tmp_path / "c", dirs=2, per_dir=20)
    shutil.copy(root / "d0" / "3.jpg", root / "d1" / "copy.jpg")
    one = _ingest(root, None, workers=1, batch_size=7)
    two = _ingest(root, None, workers=2, batch_size=7)
    assert one.metrics == two.metrics and _same(one, two)
    assert one.metrics["duplicates"] == 1


def test_finished_parts_record_their_counts(tmp_path):
    import json

    root = _corpus(tmp_path / "c")
    _ingest(root, tmp_path / "state")
    markers = [json.loads(p.read_text()) for p in (tmp_path / "state").glob("*.done")]
    d0 = next(m for m in markers if m["part"] == "d0")
    assert d0["inputs"] == 5 and d0["by_status"] == {"ok": 4, "truncated": 1}


def test_nonsense_sizes_are_params_errors():
    from pipeline.core.config import ParamsError

    with pytest.raises(ParamsError, match="ingest.batch_size"):
        demo_params("ingest", source=SOURCE, batch_size=0)
    with pytest.raises(ParamsError, match="ingest.source.max_bytes"):
        source_params("folder", max_bytes=0)
