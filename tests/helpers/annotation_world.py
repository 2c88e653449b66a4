"""A tiny annotation world: a real pipeline run on generated images, ending in Label Studio tasks, and the
browser helpers every Label Studio test drives Chromium with."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from annotation.labelstudio import server
from pipeline import embed, export, ingest, mine, search
from tests.conftest import REPO, tiny_params
from tests.helpers.params import merged, section

URL_PREFIX = "/data/local-files/?d=display/"


def run_pipeline(corpus: Path, root: Path) -> tuple[Path, list[dict[str, Any]]]:
    """ingest → embed → mine → export on `corpus` with tiny random encoders; return (params file, tasks)."""
    params = tiny_params(
        export={"url_prefix": URL_PREFIX, "display_max_side": 128, "jpeg_quality": 90},
        mine={"clip_threshold": 0.995, "dino_threshold": 0.995},
    )
    params_file = root / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    data, m = root / "data", root / "metrics"
    common = ["--params", str(params_file)]
    assert ingest.main(common + ["--source", str(corpus), "--images", str(data / "images.parquet"),
                                 "--rejects", str(data / "rejects.parquet"), "--metrics", str(m / "ingest.json")]) == 0
    assert embed.main(common + ["--images", str(data / "images.parquet"), "--source", str(corpus),
                                "--clip", str(data / "clip"), "--dino", str(data / "dino"),
                                "--metrics", str(m / "embed.json")]) == 0
    candidates = ["--candidates", str(data / "candidates.parquet"), "--groups", str(data / "groups.parquet")]
    assert search.main(common + ["--images", str(data / "images.parquet"), "--clip", str(data / "clip"),
                                 "--dino", str(data / "dino"), *candidates, "--metrics", str(m / "search.json")]) == 0
    assert mine.main(common + ["--images", str(data / "images.parquet"), *candidates,
                               "--pairs", str(data / "pairs.parquet"), "--metrics", str(m / "mine.json")]) == 0
    assert export.main(common + ["--pairs", str(data / "pairs.parquet"), "--images", str(data / "images.parquet"),
                                 "--source", str(corpus), "--display", str(data / "display"),
                                 "--tasks", str(data / "tasks.json"), "--metrics", str(m / "export.json")]) == 0
    return params_file, json.loads((data / "tasks.json").read_text())


def labelstudio_section(root: Path, database: str = "sqlite") -> dict[str, Any]:
    """params.yaml's `labelstudio` section for a test's own pair of servers: free ports on 127.0.0.1, their state
    under `root`/labelstudio, the Label Studio virtualenv this checkout built (or CLIPBLIND_LABELSTUDIO_VENV)."""
    ports = []
    for _ in range(2):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            ports.append(int(probe.getsockname()[1]))
    venv = os.environ.get(server.VENV_ENV) or str(REPO / ".venv-labelstudio")
    return merged(section("labelstudio"), {"port": ports[0], "verification_port": ports[1],
                                           "data_dir": str(root / "labelstudio"), "venv": venv, "database": database,
                                           "start_timeout_s": 400})


def pull_and_validate(root: Path, params_file: Path) -> Path:
    """`clipblind pull` (writing) then the validate stage, as the lead runs them, on the world under `root`;
    return the annotations table's path."""
    from annotation import pull, validate

    labels, data, metrics = root / "labels", root / "data", root / "metrics"
    assert pull.main(["writing", "--params", str(params_file), "--out", str(labels / "writing.json"),
                      "--metrics", str(metrics / "pull_writing.json")]) == 0
    annotations = data / "annotations.parquet"
    assert validate.main(["--params", str(params_file), "--snapshot", str(labels / "writing.json"),
                          "--pairs", str(data / "pairs.parquet"), "--annotations", str(annotations),
                          "--metrics", str(metrics / "validate.json")]) == 0
    return annotations


CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "annotation"


def login(page: Any, url: str, email: str, password: str) -> None:
    """Log in through Label Studio's login form, like a person."""
    page.goto(f"{url}/user/login/")
    page.fill("input[name=email]", email)
    page.fill("input[name=password]", password)
    page.click("button[type=submit], input[type=submit]")
    page.wait_for_load_state("networkidle")


def open_task(page: Any, url: str, project_id: int, task_id: int, ready: str) -> None:
    """Open one task in the labeling view and wait for the selector `ready`."""
    page.goto(f"{url}/projects/{project_id}/data?tab=0&task={task_id}")
    page.wait_for_selector(ready, timeout=90_000)


def type_text(page: Any, name: str, text: str) -> None:
    """Type into a text control and press its Add button."""
    area = page.locator(f"textarea[name={name}]")
    area.click()
    area.type(text)
    area.locator("xpath=ancestor::form[1]").get_by_role("button", name="Add").click()


def choose(page: Any, panel: str, option: str) -> None:
    """Select an option of a choice control inside the panel with HTML id `panel` (a no-op if selected).

    `check`, not `click`: a click on an option already selected (an autosaved draft) deselects it.
    """
    page.locator(f'#{panel} input[name="{option}"]').check()


def wait_for_images(page: Any, panels: tuple[str, ...] = ("panel-image-a", "panel-image-b")) -> None:
    """Wait until every panel shows a loaded image (fails after a minute): the annotator sees both.

    One check in the page, so a re-render between waiting and reading cannot lose the element.
    """
    ids = json.dumps(list(panels))
    page.wait_for_function(f"() => {ids}.every(id => {{ const i = document.querySelector('#' + id + ' img'); "
                           "return i && i.complete && i.naturalWidth > 0; })", timeout=60_000)


# Each image's drawn box (the <img> Label Studio sizes and positions) against what the annotator can see of it:
# the part inside every ancestor that clips its overflow, inside the window, and above the bottom bar.
_IMAGE_BOXES_JS = """(ids) => ids.map(id => {
  const img = document.querySelector('#' + id + ' img');
  const r = img.getBoundingClientRect();
  const seen = {left: r.left, top: r.top, right: r.right, bottom: r.bottom};
  const clip = (c, x, y) => {
    if (x) { seen.left = Math.max(seen.left, c.left); seen.right = Math.min(seen.right, c.right); }
    if (y) { seen.top = Math.max(seen.top, c.top); seen.bottom = Math.min(seen.bottom, c.bottom); }
  };
  for (let e = img.parentElement; e && e !== document.documentElement; e = e.parentElement) {
    const s = getComputedStyle(e);
    clip(e.getBoundingClientRect(), s.overflowX !== 'visible', s.overflowY !== 'visible');
  }
  clip({left: 0, top: 0, right: innerWidth, bottom: innerHeight}, true, true);
  const bar = document.querySelector('.lsf-bottombar');
  if (bar) clip({left: -1e9, right: 1e9, top: -1e9, bottom: bar.getBoundingClientRect().top}, false, true);
  return {panel: id, natural: [img.naturalWidth, img.naturalHeight], drawn: [r.left, r.top, r.width, r.height],
          seen: [seen.left, seen.top, Math.max(0, seen.right - seen.left), Math.max(0, seen.bottom - seen.top)]};
})"""


def image_boxes(page: Any, panels: tuple[str, ...] = ("panel-image-a", "panel-image-b")) -> list[dict[str, Any]]:
    """Per panel: the image's natural size, its drawn box and the part of that box the annotator sees
    ([left, top, width, height] in CSS pixels of the window)."""
    return list(page.evaluate(_IMAGE_BOXES_JS, list(panels)))


def crops(boxes: list[dict[str, Any]], tolerance: float = 0.01) -> list[str]:
    """What is wrong with each image box: part of the drawn image hidden, or drawn at another aspect ratio
    than the image's own (beyond `tolerance`, relative). Empty when every image is seen whole."""
    problems = []
    for box in boxes:
        (nat_w, nat_h), (_, _, w, h), (_, _, seen_w, seen_h) = box["natural"], box["drawn"], box["seen"]
        if seen_w < w - 1 or seen_h < h - 1:
            problems.append(f"{box['panel']}: {w:.0f}x{h:.0f} drawn, {seen_w:.0f}x{seen_h:.0f} seen")
        if w <= 0 or h <= 0 or abs((w / h) / (nat_w / nat_h) - 1) > tolerance:
            problems.append(f"{box['panel']}: drawn {w:.0f}x{h:.0f}, image {nat_w}x{nat_h} (aspect ratio changed)")
    return problems


def submit(page: Any, label: str = "Submit", method: str = "POST") -> None:
    """Press the annotation button `label` and wait for Label Studio to store the annotation."""
    with page.expect_response(lambda r: "/annotations" in r.url and r.request.method == method):
        page.locator("button", has_text=label).first.click()


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Debian Chromium driven by playwright, closed at the end."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def new_page(browser: Any) -> Any:
    """A fresh browser context (its own cookies) and page."""
    return browser.new_context(viewport={"width": 1400, "height": 1600}).new_page()
