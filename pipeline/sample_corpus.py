"""A generated sample corpus for the demo and tests: deterministic, made at run time.

Each scene is drawn several times, each variant changing one of MMVP's visual patterns
(orientation, count, colour, position, text, state, viewpoint, presence of a feature), so
that near-identical images that differ in one visual detail exist. A few unusable files
(truncated JPEG, non-image, empty) and an exact duplicate show the ingest accounting.
"""

from __future__ import annotations

import argparse
import io
import random
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image, ImageDraw

from pipeline.core.atomic import write_bytes
from pipeline.core.report import progress, summary

PALETTE = [
    (220, 50, 47), (38, 139, 210), (133, 153, 0), (181, 137, 0),
    (108, 113, 196), (42, 161, 152), (211, 54, 130), (203, 75, 22),
]
WORDS = ["STOP", "OPEN", "EXIT", "SALE", "PUSH", "PULL", "GO", "WAIT"]


@dataclass(frozen=True)
class Scene:
    """Everything that decides how a generated image looks."""

    background: tuple[int, int, int]
    color: tuple[int, int, int]
    arrow_angle: int  # degrees, 0 = pointing right
    count: int
    x: float  # main object's horizontal position, 0..1
    word: str
    door_open: bool
    zoom: float
    has_hat: bool
    noise_seed: int


def random_scene(rng: random.Random) -> Scene:
    return Scene(
        background=tuple(rng.randint(150, 245) for _ in range(3)),  # type: ignore[arg-type]
        color=rng.choice(PALETTE),
        arrow_angle=rng.choice([0, 90, 180, 270]),
        count=rng.randint(1, 4),
        x=rng.uniform(0.25, 0.75),
        word=rng.choice(WORDS),
        door_open=rng.random() < 0.5,
        zoom=1.0,
        has_hat=rng.random() < 0.5,
        noise_seed=rng.randint(0, 2**31),
    )


def variants(scene: Scene, rng: random.Random) -> list[tuple[str, Scene]]:
    """The scene and one variant per visual pattern."""
    other_color = rng.choice([c for c in PALETTE if c != scene.color])
    other_word = rng.choice([w for w in WORDS if w != scene.word])
    return [
        ("base", scene),
        ("orientation", replace(scene, arrow_angle=(scene.arrow_angle + 180) % 360)),
        ("quantity", replace(scene, count=scene.count % 4 + 1)),
        ("color", replace(scene, color=other_color)),
        ("position", replace(scene, x=1.0 - scene.x)),
        ("text", replace(scene, word=other_word)),
        ("state", replace(scene, door_open=not scene.door_open)),
        ("viewpoint", replace(scene, zoom=1.35)),
        ("presence", replace(scene, has_hat=not scene.has_hat)),
    ]


def draw(scene: Scene, size: int = 256) -> Image.Image:
    """Render a scene: a door, an arrow, a row of dots, a figure and a sign."""
    canvas = int(size * scene.zoom)
    im = Image.new("RGB", (canvas, canvas), scene.background)
    d = ImageDraw.Draw(im)
    s = canvas / 256
    noise = random.Random(scene.noise_seed)
    for _ in range(60):  # texture, so images are not flat colour
        px, py = noise.randrange(canvas), noise.randrange(canvas)
        shade = tuple(max(0, c - noise.randint(5, 25)) for c in scene.background)
        d.point((px, py), fill=shade)
    # door (state): a frame and either a closed slab or an open gap
    d.rectangle([16 * s, 120 * s, 70 * s, 230 * s], outline=(60, 40, 20), width=max(1, int(3 * s)))
    if scene.door_open:
        d.polygon([(16 * s, 120 * s), (34 * s, 130 * s), (34 * s, 220 * s), (16 * s, 230 * s)], fill=(120, 80, 40))
    else:
        d.rectangle([19 * s, 123 * s, 67 * s, 227 * s], fill=(120, 80, 40))
    # arrow (orientation)
    cx, cy, r = 190 * s, 60 * s, 28 * s
    arrow = Image.new("RGBA", (int(2 * r), int(2 * r)), (0, 0, 0, 0))
    ad = ImageDraw.Draw(arrow)
    ad.rectangle([0, r - 5 * s, r, r + 5 * s], fill=(30, 30, 30))
    ad.polygon([(r, r - 18 * s), (2 * r, r), (r, r + 18 * s)], fill=(30, 30, 30))
    arrow = arrow.rotate(scene.arrow_angle, resample=Image.Resampling.BICUBIC)
    im.paste(arrow, (int(cx - r), int(cy - r)), arrow)
    # dots (quantity), coloured object (colour), placed at x (position)
    for k in range(scene.count):
        ox = (90 + 26 * k) * s
        d.ellipse([ox, 200 * s, ox + 18 * s, 218 * s], fill=(40, 40, 40))
    x = scene.x * canvas
    d.ellipse([x - 26 * s, 95 * s, x + 26 * s, 147 * s], fill=scene.color)
    if scene.has_hat:  # presence of a specific feature
        d.polygon([(x - 20 * s, 100 * s), (x + 20 * s, 100 * s), (x, 70 * s)], fill=(20, 20, 90))
    # sign (text)
    d.rectangle([20 * s, 20 * s, 120 * s, 60 * s], fill=(250, 250, 250), outline=(0, 0, 0))
    d.text((30 * s, 30 * s), scene.word, fill=(0, 0, 0), font_size=int(18 * s))
    if scene.zoom != 1.0:  # a closer viewpoint: crop the centre back to `size`
        off = (canvas - size) // 2
        im = im.crop((off, off, off + size, off + size))
    return im


def encode(im: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    im.save(out, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return out.getvalue()


def generate(out_dir: Path, scenes: int = 40, seed: int = 0) -> int:
    """Write the sample corpus into `out_dir` (replacing it); return the number of files."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    rng = random.Random(seed)
    count = 0
    for k in progress(range(scenes), desc="sample corpus", unit="scene"):
        scene = random_scene(rng)
        for name, variant in variants(scene, rng):
            fmt = "PNG" if (k + len(name)) % 5 == 0 else "JPEG"
            suffix = "png" if fmt == "PNG" else "jpg"
            write_bytes(out_dir / f"scene{k:03d}" / f"{name}.{suffix}", encode(draw(variant), fmt))
            count += 1
    base = (out_dir / "scene000" / "base.png")
    if not base.exists():
        base = out_dir / "scene000" / "base.jpg"
    first = base.read_bytes()
    write_bytes(out_dir / "extras" / f"duplicate-of-scene000-base{base.suffix}", first)
    write_bytes(out_dir / "extras" / "truncated.jpg", encode(draw(random_scene(rng)), "JPEG")[:700])
    write_bytes(out_dir / "extras" / "notes.txt", b"not an image\n")
    write_bytes(out_dir / "extras" / "empty.png", b"")
    return count + 4


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: `clipblind sample-corpus --out DIR [--scenes N] [--seed S]`."""
    parser = argparse.ArgumentParser(prog="clipblind sample-corpus", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--scenes", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    n = generate(Path(args.out), args.scenes, args.seed)
    summary("sample-corpus", f"{n} files ({args.scenes} scenes × 9 variants + 4 extras) → {args.out}")
    return 0


if __name__ == "__main__":
    from pipeline.core.errors import run_command

    raise SystemExit(run_command(main, "sample-corpus"))
