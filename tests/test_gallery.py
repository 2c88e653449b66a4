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
from pipeline.core.report import RANDOM_WEIGHTS_MARK
from pipeline.params import GalleryParams
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
            page = browser.new_page(viewport={"width": 1280, "height": 4000})  # every thumbnail in view (loading="lazy")
            page.on("request", lambda r: requests.append(r.url))
            page.goto((out / "index.html").as_uri())
            page.wait_for_load_state("load")
            page.wait_for_function("[...document.querySelectorAll('main img')].every(e => e.complete)", timeout=30_000)
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


def test_random_weights_show_as_a_banner_above_the_pairs_not_as_raw_json(built_gallery):
    from playwright.sync_api import sync_playwright

    out, _ = built_gallery
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=os.environ.get("CHROMIUM", "/usr/bin/chromium"), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto((out / "index.html").as_uri())
            banner = page.locator(".random-weights")
            assert banner.count() == 1 and banner.is_visible()
            text = banner.text_content()
            assert text.startswith(RANDOM_WEIGHTS_MARK) and "(clip)" in text
            box = banner.bounding_box()
            first_pair = page.locator(".pair").first.bounding_box()
            assert box["y"] + box["height"] <= first_pair["y"] and box["y"] < 100  # the first thing on the page
            assert box["height"] >= 20 and box["width"] >= 600
            header = page.locator("header").inner_text()
            assert "{" not in header and '"' not in header  # no JSON left
            assert page.locator(".about").inner_text() == "search: exhaustive"
            page.set_viewport_size({"width": 1280, "height": 500})
            assert page.evaluate("window.scrollTo(0, document.body.scrollHeight), window.scrollY") > 0
            assert 0 <= banner.bounding_box()["y"] < 100  # still on screen after scrolling through the pairs
        finally:
            browser.close()


def test_real_weights_get_no_banner_and_the_thresholds_read_as_text():
    params = GalleryParams(thumb_size=64, jpeg_quality=80, max_pairs=0, title="t")
    page = gallery.render([], {}, {}, params, {"search": "exhaustive", "clip_threshold": 0.95, "dino_threshold": 0.6})
    assert "class=\"random-weights\"" not in page and RANDOM_WEIGHTS_MARK not in page
    assert '<p class="about">search: exhaustive · CLIP &gt; 0.9500 · DINOv2 &lt; 0.6000</p>' in page
    marked = gallery.render([], {}, {}, params, {"random_init_encoders": ["clip", "<dino>"]})
    assert f"<strong>{RANDOM_WEIGHTS_MARK}</strong>" in marked and "(clip, &lt;dino&gt;)" in marked
