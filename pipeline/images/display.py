"""Display copies: the canonical decode, resized and re-encoded for people (Label Studio, gallery, release)."""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image

from pipeline.images.decode import decode, rules_digest
from pipeline.params import ExportParams


def display_name(image_id: str) -> str:
    """File name of an image's display copy inside the display folder."""
    return f"{image_id}.jpg"


def display_bytes(data: bytes, params: ExportParams, max_pixels: int, comment: bytes = b"") -> bytes:
    """The display copy of image bytes: canonical decode, downscaled to fit, JPEG (with `comment`, if any)."""
    image = decode(data, max_pixels=max_pixels).image
    if max(image.size) > params.display_max_side:
        image = image.copy()
        image.thumbnail((params.display_max_side, params.display_max_side))
    out = io.BytesIO()
    # comment is always passed: Pillow would otherwise copy the source file's own JPEG comment
    image.save(out, format="JPEG", quality=params.jpeg_quality, optimize=True, comment=comment)
    return out.getvalue()


def display_stamp(params: ExportParams) -> bytes:
    """What a display copy is made with (decode rules, size, quality), kept as its JPEG comment.

    A copy whose stamp differs was made under other rules or settings and is made again.
    """
    made_with = {"decode_rules": rules_digest(), "display_max_side": params.display_max_side,
                 "jpeg_quality": params.jpeg_quality}
    return json.dumps(made_with, sort_keys=True).encode()


def _stamp_of(path: Path) -> bytes | None:
    try:
        with Image.open(path) as image:
            return image.info.get("comment")
    except (OSError, ValueError):  # unreadable or not an image: made again
        return None
