"""The canonical decode: bytes → an upright RGB image, the one every stage touching pixels uses.

Encoders, display copies for annotators and the packaged benchmark all see the output of
`decode`, so what a person judges is what the models embedded. A file that cannot be
decoded raises `DecodeError` with a code from the closed set `RejectReason`.

Rules: only allowlisted formats reach a decoder; the pixel count is checked from the header
before the full decode; EXIF orientation is applied; CMYK/YCCK are converted with PIL's
Adobe-aware JPEG path; 16-bit channels are scaled to 8 bits (not clipped); palette and alpha
images are composited on white (`BACKGROUND`); animated files give their first frame.
"""

from __future__ import annotations

import enum
import io
import struct
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
BACKGROUND: tuple[int, int, int] = (255, 255, 255)
DEFAULT_MAX_PIXELS = 50_000_000

# PIL's own bomb guard would raise before ours; ours is a param, so switch PIL's off.
Image.MAX_IMAGE_PIXELS = None


class RejectReason(str, enum.Enum):
    """Why an input item was not accepted. The set is closed: add a code here, nowhere else."""

    EMPTY_FILE = "empty_file"
    UNSUPPORTED_FORMAT = "unsupported_format"  # not an image, or a format outside the allowlist
    TOO_MANY_PIXELS = "too_many_pixels"
    TRUNCATED = "truncated"
    CORRUPT = "corrupt"  # the header parsed but the pixel data did not decode
    UNREADABLE = "unreadable"  # the bytes could not be read from their location
    PATH_ESCAPE = "path_escape"  # a path leads outside its declared root
    BLOCKED = "blocked"  # content hash is on the blocklist


class DecodeError(Exception):
    """An item could not be decoded; `reason` is a `RejectReason`, `detail` says what was seen."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Decoded:
    """An upright 8-bit RGB image and facts about the original file."""

    image: Image.Image
    format: str
    frame_count: int


def decode(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Decoded:
    """Decode image bytes into an upright RGB image, or raise `DecodeError`."""
    if not data:
        raise DecodeError(RejectReason.EMPTY_FILE, "zero bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opened = Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS))
    except UnidentifiedImageError:
        raise DecodeError(RejectReason.UNSUPPORTED_FORMAT, f"not one of {', '.join(ALLOWED_FORMATS)}") from None
    except Exception as err:  # a header parser can fail in many ways on hostile input
        raise DecodeError(RejectReason.CORRUPT, f"header: {type(err).__name__}: {err}") from None
    with opened as im:
        fmt = im.format or "unknown"
        width, height = im.size
        if width <= 0 or height <= 0:
            raise DecodeError(RejectReason.CORRUPT, f"{fmt} declares size {width}x{height}")
        if width * height > max_pixels:
            raise DecodeError(RejectReason.TOO_MANY_PIXELS, f"{width}x{height} exceeds the cap of {max_pixels} pixels")
        frame_count = int(getattr(im, "n_frames", 1) or 1)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                im.seek(0)
                im.load()
                rgb = _upright(_to_rgb(im), _orientation(im))
        except OSError as err:
            message = str(err)
            reason = RejectReason.TRUNCATED if "truncated" in message or "image file is" in message else RejectReason.CORRUPT
            raise DecodeError(reason, f"{fmt}: {message}") from None
        except (ValueError, SyntaxError, IndexError, TypeError, struct.error, MemoryError) as err:
            raise DecodeError(RejectReason.CORRUPT, f"{fmt}: {type(err).__name__}: {err}") from None
    return Decoded(image=rgb, format=fmt, frame_count=frame_count)


# EXIF orientation tag value → the transpose that makes the image upright.
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(0x0112, 1)
    except Exception:  # a broken EXIF block must not cost the image its pixels
        return 1
    return value if isinstance(value, int) else 1


def _upright(im: Image.Image, orientation: int) -> Image.Image:
    method = _TRANSPOSE.get(orientation)
    return im.transpose(method) if method is not None else im


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB without clipping or dropping colour information."""
    mode = im.mode
    if mode == "RGB":
        out = im.copy()
    elif mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "I;32"):
        out = _scale_high_bit(im)
    elif mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        out = Image.alpha_composite(background, rgba).convert("RGB")
    elif mode == "F":
        arr = np.asarray(im, dtype=np.float32)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        scaled = np.zeros_like(arr) if hi <= lo else (arr - lo) / (hi - lo) * 255.0
        out = Image.fromarray(np.round(scaled).astype(np.uint8), "L").convert("RGB")
    else:  # L, 1, P, CMYK, YCbCr, LAB, HSV: PIL's converters handle these correctly
        out = im.convert("RGB")
    return out


def _scale_high_bit(im: Image.Image) -> Image.Image:
    arr = np.asarray(im).astype(np.float64)
    max_value = 65535.0 if im.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
    if im.mode in ("I", "I;32") and arr.max(initial=0) > 65535:
        max_value = float(arr.max())
    scaled = np.clip(np.round(arr / max_value * 255.0), 0, 255).astype(np.uint8)
    return Image.fromarray(scaled, "L").convert("RGB")
