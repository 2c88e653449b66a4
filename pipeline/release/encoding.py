"""The image bytes a release holds: the canonical decode, encoded as the display copy annotators judged.

The manifest records how (`provenance.image_encoding`, `encoding_record`), so fetching a withheld
image later (`pipeline.release.withheld`) encodes it as the release encoded its own images.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pipeline.images.display import display_bytes
from pipeline.params import ExportParams

DECODE = "canonical (EXIF-upright 8-bit RGB)"


def encoding_record(export_params: ExportParams, max_pixels: int) -> dict[str, Any]:
    """The manifest's record of how a release encodes images."""
    return {"decode": DECODE, "max_side": export_params.display_max_side, "jpeg_quality": export_params.jpeg_quality,
            "max_pixels": max_pixels}


def encoder_from_record(record: Mapping[str, Any]) -> Callable[[bytes], bytes]:
    """Original bytes → released image bytes, as the manifest's `image_encoding` record says."""
    # only the size and quality decide the bytes; a display copy's URL plays no part in them
    params = ExportParams(url_prefix="", display_max_side=record["max_side"], jpeg_quality=record["jpeg_quality"])
    max_pixels = int(record["max_pixels"])

    def encode(data: bytes) -> bytes:
        return display_bytes(data, params, max_pixels)

    return encode
