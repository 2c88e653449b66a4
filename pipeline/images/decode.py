"""The canonical decode: bytes → an upright RGB image, the one every stage touching pixels uses.

Encoders, display copies for annotators and the packaged benchmark all see the output of
`decode`, so what a person judges is what the models embedded. A file that cannot be
decoded raises `DecodeError` with a code from the closed set `RejectReason`; no other
exception escapes `decode` (a fuzz test holds it to that).

Rules, in the order they apply:

1. Zero bytes → `empty_file`.
2. The format is identified from the file's leading bytes (its signature), never from its
   name. Only JPEG, PNG, WebP, GIF, BMP and TIFF reach a decoder, and only the decoder of the
   identified format; anything else (PSD, PDF, EPS, SVG, HEIC, ...) → `unsupported_format`
   before any decoder runs.
3. The header is parsed and the pixel count (width × height of the first frame) is checked
   against `max_pixels` before the pixel data is decoded → `too_many_pixels`.
4. The first frame is decoded (animations and multi-page files: frame 1; the frame count is
   reported). Data ending early → `truncated`; data that does not decode → `corrupt`.
5. Colour: CMYK and YCCK JPEGs (including Adobe's inverted CMYK) are converted to sRGB
   through their embedded ICC profile (relative colorimetric, black-point compensation), or
   with the standard formula R = 255·(1−C)·(1−K) when they carry none or an unusable one.
   ICC profiles of RGB and grey images are not applied. 16-bit
   channels are scaled to 8 bits (v·255/65535), not clipped; 32-bit integer and float images
   outside 0..65535 are stretched from their minimum to their maximum. Palette, grey-alpha
   and RGBA images are composited on white (`BACKGROUND`). CIELAB goes through LittleCMS.
6. The EXIF orientation (tag 0x0112, values 1-8) is applied, so the result is upright and
   its size is the displayed size.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL
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
    TRUNCATED = "truncated"  # an image file or a tar shard that ends early
    CORRUPT = "corrupt"  # the header parsed but the pixel data did not decode
    UNREADABLE = "unreadable"  # the bytes could not be read from their location
    PATH_ESCAPE = "path_escape"  # a path or tar member leads outside its declared root
    BLOCKED = "blocked"  # content hash is on the blocklist
    NO_IMAGE = "no_image"  # a webdataset sample or dataset row without image bytes
    TOO_LARGE = "too_large"  # more bytes than the source's max_bytes; not read


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


# Leading bytes → format. Allowed formats map to their PIL plugin; the rest are named only so
# the reject detail can say what the file really is.
_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "JPEG"),
    (b"\x89PNG\r\n\x1a\n", 0, "PNG"),
    (b"GIF87a", 0, "GIF"),
    (b"GIF89a", 0, "GIF"),
    (b"WEBP", 8, "WEBP"),  # after "RIFF" + size, checked below
    (b"BM", 0, "BMP"),
    (b"II*\x00", 0, "TIFF"),
    (b"MM\x00*", 0, "TIFF"),
    (b"II+\x00", 0, "TIFF"),  # BigTIFF
    (b"MM\x00+", 0, "TIFF"),
    (b"8BPS", 0, "PSD"),
    (b"%PDF", 0, "PDF"),
    (b"%!PS", 0, "PostScript/EPS"),
    (b"\xc5\xd0\xd3\xc6", 0, "EPS (DOS binary)"),
    (b"ftyp", 4, "ISO media (HEIC/AVIF/MP4)"),
    (b"\x00\x00\x01\x00", 0, "ICO"),
    (b"\x00\x00\x00\x0cjP  ", 0, "JPEG 2000"),
    (b"\xff\x4f\xff\x51", 0, "JPEG 2000 codestream"),
    (b"PK\x03\x04", 0, "ZIP"),
    (b"\x1f\x8b", 0, "gzip"),
)


@functools.cache
def rules_digest() -> str:
    """A digest of the decode rules: this module's source and the Pillow version that decodes.

    Ingest's per-part records, the embeddings' fingerprint and export's display copies carry it,
    so nothing made from pixels of older rules is reused once the rules change. The whole source
    counts (a comment edit too): a missed rule change would silently mix pixels, a spurious one
    only costs recomputation.
    """
    return digest_of(Path(__file__).read_bytes())


def digest_of(source: bytes) -> str:
    """The rules digest of decode module source `source` under the installed Pillow."""
    return hashlib.sha256(source + b"\0Pillow " + PIL.__version__.encode()).hexdigest()


def sniff(data: bytes) -> str:
    """The format named by the leading bytes of `data`: an allowed PIL format or a description."""
    for signature, offset, name in _SIGNATURES:
        if data[offset : offset + len(signature)] == signature:
            if name == "WEBP" and data[:4] != b"RIFF":
                continue
            return name
    head = data[:256].lstrip().lower()
    if head.startswith((b"<?xml", b"<svg", b"<!doctype", b"<html")):
        return "XML/HTML/SVG text"
    return "unknown"


def decode(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Decoded:
    """Decode image bytes into an upright RGB image, or raise `DecodeError`."""
    if not data:
        raise DecodeError(RejectReason.EMPTY_FILE, "zero bytes")
    fmt = sniff(data)
    if fmt not in ALLOWED_FORMATS:
        seen = f"{fmt} content" if fmt != "unknown" else f"content of no image format (starts {data[:8].hex(' ')})"
        raise DecodeError(RejectReason.UNSUPPORTED_FORMAT, f"{seen}; allowed: {', '.join(ALLOWED_FORMATS)}")
    im = _open(data, fmt)
    width, height = im.size
    if width <= 0 or height <= 0:
        raise DecodeError(RejectReason.CORRUPT, f"{fmt} declares size {width}x{height}")
    if width * height > max_pixels:
        raise DecodeError(RejectReason.TOO_MANY_PIXELS, f"{width}x{height} exceeds the cap of {max_pixels} pixels")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            frame_count = int(getattr(im, "n_frames", 1) or 1)
            if frame_count > 1:
                im.seek(0)
            im.load()
            rgb = _upright(_to_rgb(im), _orientation(im))
    # Pillow's decoders raise many exception types on hostile input (OSError, ValueError,
    # struct.error, EOFError, ZeroDivisionError, MemoryError, ...); the contract is a reason code.
    except Exception as err:  # noqa: BLE001
        raise DecodeError(_classify(err), f"{fmt}: {type(err).__name__}: {err}") from None
    return Decoded(image=rgb, format=fmt, frame_count=frame_count)


def _open(data: bytes, fmt: str) -> Image.Image:
    """Parse the header with the identified format's plugin only."""
    stream = io.BytesIO(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Image.open(stream, formats=[fmt])
    except UnidentifiedImageError:
        pass
    except Exception as err:  # noqa: BLE001 - a header parser can fail in many ways on hostile input
        raise _header_error(data, fmt, stream, err) from None
    # Image.open hides why the plugin refused the header; ask the plugin itself for the cause.
    factory = Image.OPEN[fmt][0]
    stream = io.BytesIO(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            factory(stream, "")
    except Exception as err:  # noqa: BLE001
        raise _header_error(data, fmt, stream, err) from None
    raise DecodeError(RejectReason.CORRUPT, f"{fmt} signature but the header does not parse")


def _header_error(data: bytes, fmt: str, stream: io.BytesIO, err: BaseException) -> DecodeError:
    # A header parser that failed at the end of the bytes saw a cut-off file; WebP is read
    # whole, so compare its length with the size its RIFF header declares.
    ran_out = stream.tell() >= len(data)
    riff_short = fmt == "WEBP" and len(data) >= 8 and len(data) < int.from_bytes(data[4:8], "little") + 8
    if (ran_out and fmt != "WEBP") or riff_short:
        return DecodeError(RejectReason.TRUNCATED, f"{fmt} data ends after {len(data)} bytes, inside the header ({err})")
    return DecodeError(_classify(err), f"{fmt} header: {type(err).__name__}: {err}")


def _classify(err: BaseException) -> RejectReason:
    message = str(err).lower()
    if isinstance(err, EOFError) or "truncated" in message or "end of file" in message or "premature" in message:
        return RejectReason.TRUNCATED
    if "buffer" in message and "unpack" in message:  # struct.error: a header cut short
        return RejectReason.TRUNCATED
    return RejectReason.CORRUPT


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
    except Exception:  # noqa: BLE001 - a broken EXIF block must not cost the image its pixels
        return 1
    return value if isinstance(value, int) else 1


def _upright(im: Image.Image, orientation: int) -> Image.Image:
    method = _TRANSPOSE.get(orientation)
    return im.transpose(method) if method is not None else im


_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB without clipping or dropping colour information."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in _HIGH_BIT_MODES:
        return _scale_high_bit(im)
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode == "LAB":
        from PIL import ImageCms

        lab_to_srgb = ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB")
        return ImageCms.applyTransform(im, lab_to_srgb)
    if mode == "CMYK" and im.info.get("icc_profile"):
        converted = _cmyk_with_profile(im, im.info["icc_profile"])
        if converted is not None:
            return converted
    # L, 1, P, CMYK (Pillow undoes Adobe's inversion when reading), YCbCr, HSV
    return im.convert("RGB")


def _cmyk_with_profile(im: Image.Image, icc: bytes) -> Image.Image | None:
    """CMYK → sRGB through the file's own ICC profile; None when the profile is unusable."""
    transform = _cmyk_transform(bytes(icc))
    return None if transform is None else transform.apply(im)


@functools.lru_cache(maxsize=16)
def _cmyk_transform(icc: bytes) -> Any:
    from PIL import ImageCms

    try:
        # Relative colorimetric with black-point compensation: what print tools use to show CMYK on screen.
        return ImageCms.buildTransform(
            ImageCms.ImageCmsProfile(io.BytesIO(icc)), ImageCms.createProfile("sRGB"), "CMYK", "RGB",
            renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC, flags=ImageCms.Flags.BLACKPOINTCOMPENSATION,
        )
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return None  # a broken or non-CMYK profile: the standard formula is the documented fallback


def _scale_high_bit(im: Image.Image) -> Image.Image:
    arr = np.asarray(im).astype(np.float64)
    if im.mode.startswith("I;16"):
        lo, hi = 0.0, 65535.0
    else:  # I (32-bit int) and F: 16-bit range when the values fit it, else their own range
        finite = arr[np.isfinite(arr)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        if lo >= 0 and hi <= 65535 and im.mode == "I":
            lo, hi = 0.0, 65535.0
    if hi <= lo:
        scaled = np.zeros(arr.shape, dtype=np.uint8)
    else:
        scaled = np.round(np.nan_to_num((arr - lo) / (hi - lo), nan=0.0) * 255.0).clip(0, 255).astype(np.uint8)
    return Image.fromarray(scaled, "L").convert("RGB")
