"""gallery: pairs → a self-contained HTML gallery to review before spending annotator hours.

Inputs: the pairs table, the images table, the corpus source; params section `gallery`.
Outputs: a folder holding `index.html` and `thumbs/<image_id>.jpg` (thumbnails made from the
canonical decode, the pixels the encoders saw). The page needs no network: inline CSS and
JavaScript, relative image paths; open it from disk or copy the folder anywhere. Every pair
shows both thumbnails, both source names (escaped: a name is untrusted text), CLIP and
DINOv2 cosines and their gap; the pairs can be filtered by CLIP, DINOv2 and name. The header
states how the pairs were mined (search, thresholds); pairs mined with randomly initialised
encoders carry a banner (`report.RANDOM_WEIGHTS_MARK`) above everything else.
Metrics: pairs, shown, thumbnails, thumbnails_failed (by reason; a failed thumbnail shows a
placeholder and costs no other pair).
"""

from __future__ import annotations

import argparse
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.core import schemas
from pipeline.core.atomic import write_bytes
from pipeline.core.config import command_params
from pipeline.core.report import RANDOM_WEIGHTS_MARK, progress, summary, write_headline, write_metrics
from pipeline.images.corpus import Corpus
from pipeline.images.decode import DecodeError
from pipeline.images.display import display_bytes
from pipeline.params import ExportParams, GalleryParams, IngestParams

STAGE = "gallery"
THUMBS = "thumbs"


def thumbnail_name(image_id: str) -> str:
    """Path of an image's thumbnail inside the gallery folder."""
    return f"{THUMBS}/{image_id}.jpg"


def write_thumbnails(image_ids: Sequence[str], images: pa.Table, corpus: Corpus, folder: Path, params: GalleryParams, max_pixels: int) -> dict[str, str]:
    """Write thumbnails of `image_ids` into `folder`; return image_id → failure reason for those that failed."""
    location = dict(zip(images.column("image_id").to_pylist(), images.column("source_path").to_pylist()))
    settings = ExportParams(url_prefix="", display_max_side=params.thumb_size, jpeg_quality=params.jpeg_quality)  # a thumbnail has no URL
    failed: dict[str, str] = {}
    for image_id in progress(sorted(set(image_ids)), desc="thumbnails", unit="img"):
        try:
            write_bytes(folder / thumbnail_name(image_id), display_bytes(corpus.read(location[image_id]), settings, max_pixels))
        except DecodeError as err:
            failed[image_id] = err.reason.value
        except KeyError:
            failed[image_id] = "not_in_images_table"
    return failed


_STYLE = """
body{font:14px system-ui,sans-serif;margin:1rem;background:#fafafa;color:#222}
header{position:sticky;top:0;background:#fafafa;padding:.5rem 0;border-bottom:1px solid #ddd;z-index:1}
label{margin-right:1rem} input[type=number]{width:5rem}
.grid{display:flex;flex-wrap:wrap;gap:1rem;margin-top:1rem}
.pair{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.5rem;width:540px}
.pair.hidden{display:none}
.imgs{display:flex;gap:.5rem} figure{margin:0;width:264px}
figure img{width:256px;height:256px;object-fit:contain;background:#eee;display:block}
figcaption{font-size:12px;word-break:break-all;color:#555}
.sims{margin-top:.3rem;font-variant-numeric:tabular-nums}
.missing{width:256px;height:256px;display:flex;align-items:center;justify-content:center;background:#fee;color:#a00}
.random-weights{background:#c0392b;color:#fff;font-size:18px;padding:.6rem 1rem;border-radius:6px;margin:.3rem 0}
.about{color:#555}
"""

_SCRIPT = """
function applyFilters(){
  const minClip=parseFloat(document.getElementById('min-clip').value)||-1;
  const maxDino=parseFloat(document.getElementById('max-dino').value);
  const text=document.getElementById('name-filter').value.toLowerCase();
  let shown=0;
  for(const card of document.querySelectorAll('.pair')){
    const ok=parseFloat(card.dataset.clip)>=minClip
      &&(isNaN(maxDino)||parseFloat(card.dataset.dino)<=maxDino)
      &&(!text||card.dataset.names.toLowerCase().includes(text));
    card.classList.toggle('hidden',!ok); if(ok) shown++;
  }
  document.getElementById('count').textContent=shown;
}
for(const id of ['min-clip','max-dino','name-filter']) document.getElementById(id).addEventListener('input',applyFilters);
applyFilters();
"""


def _figure(image_id: str, name: str, failed: dict[str, str]) -> str:
    caption = f"<figcaption>{html.escape(name)}</figcaption>"
    if image_id in failed:
        return f'<figure><div class="missing">no thumbnail: {html.escape(failed[image_id])}</div>{caption}</figure>'
    src = html.escape(thumbnail_name(image_id), quote=True)
    return f'<figure><img src="{src}" alt="{html.escape(name, quote=True)}" loading="lazy">{caption}</figure>'


def _about(meta: dict[str, Any]) -> str:
    """How the pairs were mined, as a line of text (search, CLIP and DINOv2 thresholds)."""
    facts = []
    if "search" in meta:
        facts.append(f"search: {meta['search']}")
    if meta.get("clip_threshold") is not None:
        facts.append(f"CLIP > {float(meta['clip_threshold']):.4f}")
    if meta.get("dino_threshold") is not None:
        facts.append(f"DINOv2 < {float(meta['dino_threshold']):.4f}")
    return html.escape(" · ".join(facts))


def _random_banner(meta: dict[str, Any]) -> str:
    """The banner of pairs mined with randomly initialised encoders; empty for real weights."""
    encoders = meta.get("random_init_encoders") or []
    if not encoders:
        return ""
    names = html.escape(", ".join(encoders))
    return (f'<div class="random-weights" role="alert"><strong>{html.escape(RANDOM_WEIGHTS_MARK)}</strong>: '
            f"these pairs were mined with randomly initialised encoders ({names}); they check the pipeline, "
            "they are not images a real model confuses.</div>")


def render(rows: Sequence[dict[str, Any]], names: dict[str, str], failed: dict[str, str], params: GalleryParams, meta: dict[str, Any]) -> str:
    """The gallery page for `rows` (pairs table rows); every piece of data text is escaped.

    `meta`: the pairs' search, clip_threshold and dino_threshold, and random_init_encoders if any.
    """
    cards = []
    for r in rows:
        name_a, name_b = names.get(r["image_a"], r["image_a"]), names.get(r["image_b"], r["image_b"])
        clip, dino = float(r["clip_sim"]), float(r["dino_sim"])
        cards.append(
            f'<div class="pair" data-clip="{clip:.6f}" data-dino="{dino:.6f}" '
            f'data-names="{html.escape(name_a + " " + name_b, quote=True)}" id="pair-{html.escape(r["pair_id"], quote=True)}">'
            f'<div class="imgs">{_figure(r["image_a"], name_a, failed)}{_figure(r["image_b"], name_b, failed)}</div>'
            f'<div class="sims">CLIP {clip:.4f} · DINOv2 {dino:.4f} · gap {clip - dino:.4f}</div>'
            f'<div class="pid">pair {html.escape(r["pair_id"])}</div></div>'
        )
    title = html.escape(params.title)
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src 'self'; "
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">"
        f"<title>{title}</title><style>{_STYLE}</style></head><body>"
        f"<header>{_random_banner(meta)}<h1>{title}</h1><p class=\"about\">{_about(meta)}</p>"
        "<label>CLIP ≥ <input id=\"min-clip\" type=\"number\" step=\"0.001\" value=\"\"></label>"
        "<label>DINOv2 ≤ <input id=\"max-dino\" type=\"number\" step=\"0.01\" value=\"\"></label>"
        "<label>name contains <input id=\"name-filter\" type=\"search\"></label>"
        f"<span><span id=\"count\">{len(rows)}</span> of {len(rows)} pairs shown</span></header>"
        f"<main class=\"grid\">{''.join(cards)}</main><script>{_SCRIPT}</script></body></html>\n"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: `python -m pipeline.gallery --pairs P --images T --source S --out DIR --metrics M`."""
    parser = argparse.ArgumentParser(prog="clipblind gallery", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--pairs", required=True)
    parser.add_argument("--images", required=True)
    parser.add_argument("--source", required=True, nargs="+", help="the corpus source(s) ingest read, as in params")
    parser.add_argument("--out", required=True, help="output gallery folder")
    parser.add_argument("--metrics", required=True)
    parser.add_argument("--headline", help="output headline metrics JSON (what `dvc metrics show` lists: report.HEADLINES)")
    args = parser.parse_args(argv)
    params = command_params(parser, args.params, STAGE, GalleryParams)
    ingest_params = command_params(parser, args.params, "ingest", IngestParams)
    pairs = schemas.read_table(args.pairs, "pairs")
    pairs_meta = schemas.read_meta(args.pairs)
    images = schemas.read_table(args.images, "images")
    rows = pairs.to_pylist()
    if params.max_pairs > 0:
        rows = rows[: params.max_pairs]
    needed = [r["image_a"] for r in rows] + [r["image_b"] for r in rows]
    folder = Path(args.out)
    failed = write_thumbnails(needed, images, Corpus(ingest_params.source, args.source), folder, params, ingest_params.max_pixels)
    names = dict(zip(images.column("image_id").to_pylist(), images.column("source_path").to_pylist()))
    meta: dict[str, Any] = {k: pairs_meta[k] for k in ("search", "clip_threshold", "dino_threshold") if k in pairs_meta}
    random_init = sorted(n for n, d in pairs_meta.get("encoders", {}).items() if d.get("random_init"))
    if random_init:
        meta["random_init_encoders"] = random_init
    write_bytes(folder / "index.html", render(rows, names, failed, params, meta).encode())
    reasons: dict[str, int] = {}
    for reason in failed.values():
        reasons[reason] = reasons.get(reason, 0) + 1
    metrics = {
        "pairs": pairs.num_rows,
        "shown": len(rows),
        "thumbnails": len(set(needed)) - len(failed),
        "thumbnails_failed": len(failed),
        "thumbnails_failed_by_reason": reasons,
    }
    write_metrics(args.metrics, metrics)
    write_headline(args.headline, STAGE, metrics)
    summary(STAGE, f"{len(rows)} of {pairs.num_rows} pairs, {metrics['thumbnails']} thumbnails → {folder / 'index.html'}")
    return 0


if __name__ == "__main__":
    from pipeline.core.errors import run_command

    raise SystemExit(run_command(main, "gallery"))
