"""The gallery in a real headless Chromium: every thumbnail loads, markup in names is text, filters work."""

import json
import os

import numpy as np
import pyarrow as pa
import pytest
import yaml
from PIL import Image

from pipeline import gallery, ingest
from pipeline.core import schemas
from tests.conftest import tiny_params

pytestmark = [pytest.mark.browser, pytest.mark.slow]

HOSTILE = '<i>bold<img src=x onerror="window.pwned=1">'  # file names cannot hold "/", so no closing tags
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


@pytest.fixture
def built_gallery(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    rng = np.random.default_rng(0)
    names = [f"img{k}.png" for k in range(5)] + [f"{HOSTILE}.png"]
    for k, name in enumerate(names):
        pixels = rng.integers(0, 255, size=(40 + k, 60, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(corpus / name)
    params = tiny_params(gallery={"thumb_size": 64, "jpeg_quality": 80, "max_pairs": 0, "title": "review <pairs>"})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert ingest.main(["--params", str(tmp_path / "params.yaml"), "--source", str(corpus), "--images", str(tmp_path / "images.parquet"),
                        "--rejects", str(tmp_path / "rejects.parquet"), "--metrics", str(tmp_path / "ingest.json")]) == 0
    images = schemas.read_table(tmp_path / "images.parquet", "images")
    by_name = dict(zip(images.column("source_path").to_pylist(), images.column("image_id").to_pylist()))
    links = [(0, 1, 0.97, 0.2), (2, 3, 0.96, 0.5), (4, 5, 0.99, 0.1), (0, 5, 0.951, 0.59)]
    rows = []
    for a, b, c, d in links:
        ia, ib = sorted((by_name[names[a]], by_name[names[b]]))
        rows.append({"pair_id": schemas.pair_id(ia, ib), "image_a": ia, "image_b": ib, "clip_sim": c, "dino_sim": d})
    schemas.write_table(pa.Table.from_pylist(rows, schema=schemas.PAIRS), tmp_path / "pairs.parquet", "pairs",
                        meta={"search": "exhaustive", "encoders": {"clip": {"random_init": True}}})
    out = tmp_path / "gallery"
    assert gallery.main(["--params", str(tmp_path / "params.yaml"), "--pairs", str(tmp_path / "pairs.parquet"),
                         "--images", str(tmp_path / "images.parquet"), "--source", str(corpus), "--out", str(out),
                         "--metrics", str(tmp_path / "gallery.json")]) == 0
    return out, json.loads((tmp_path / "gallery.json").read_text())


def test_gallery_loads_offline_shows_markup_as_text_and_filters(built_gallery):
    from playwright.sync_api import sync_playwright

    out, metrics = built_gallery
    assert metrics == {"pairs": 4, "shown": 4, "thumbnails": 6, "thumbnails_failed": 0, "thumbnails_failed_by_reason": {}}
    requests = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=os.environ.get("CHROMIUM", "/usr/bin/chromium"), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.on("request", lambda r: requests.append(r.url))
            page.goto((out / "index.html").as_uri())
            page.wait_for_load_state("load")
            images = page.eval_on_selector_all("main img", "els => els.map(e => [e.complete, e.naturalWidth, e.getAttribute('src')])")
            assert len(images) == 8
            assert all(done and width > 0 for done, width, _ in images), images
            assert page.evaluate("window.pwned === undefined")  # the hostile name's onerror never ran
            assert page.locator("main i").count() == 0  # ... and its <i> is no element
            captions = page.eval_on_selector_all("figcaption", "els => els.map(e => e.textContent)")
            assert f"{HOSTILE}.png" in captions  # shown as the literal text it is
            assert page.title() == "review <pairs>"
            assert page.locator("#count").text_content() == "4"
            page.fill("#min-clip", "0.965")
            assert page.locator("#count").text_content() == "2"
            assert page.locator(".pair:not(.hidden)").count() == 2
            page.fill("#min-clip", "")
            page.fill("#max-dino", "0.3")
            assert page.locator("#count").text_content() == "2"
            page.fill("#max-dino", "")
            page.fill("#name-filter", "<i>")
            assert page.locator("#count").text_content() == "2"
        finally:
            browser.close()
    assert all(url.startswith("file://") for url in requests), requests  # a self-contained folder: nothing fetched from a network
