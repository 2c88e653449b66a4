"""A hostile test corpus built at test time: odd, broken and disguised files, each with the
outcome ingest must give it (accepted, a duplicate, blocked, or a reject reason)."""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

MAX_PIXELS = 1_000_000  # the caps the hostile corpus is ingested with
MAX_BYTES = 2_000_000
OK, DUPLICATE, BLOCKED = "ok", "duplicate", "blocked"


@dataclass(frozen=True)
class Variant:
    """One corpus file: where it goes, its bytes, and what ingest must make of it."""

    path: str
    data: bytes
    expected: str  # OK, DUPLICATE, BLOCKED or a RejectReason value


def encode(im: Image.Image, fmt: str, **kw: object) -> bytes:
    out = io.BytesIO()
    im.save(out, format=fmt, **kw)
    return out.getvalue()


def marked(width: int = 48, height: int = 32) -> Image.Image:
    """A landscape image, white with a red block in the top-left corner and a blue one bottom-right."""
    im = Image.new("RGB", (width, height), (255, 255, 255))
    im.paste((255, 0, 0), (0, 0, 12, 12))
    im.paste((0, 0, 255), (width - 8, height - 8, width, height))
    return im


# The transpose that stores an upright image the way a camera with EXIF orientation n does.
STORE_AS = {
    1: None, 2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_270,
}


def oriented_jpeg(orientation: int, upright: Image.Image) -> bytes:
    """A JPEG whose pixels are stored rotated/flipped and whose EXIF orientation undoes it."""
    method = STORE_AS[orientation]
    stored = upright if method is None else upright.transpose(method)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(stored, "JPEG", quality=95, exif=exif.tobytes())


def cmyk_of(rgb: np.ndarray) -> np.ndarray:
    """RGB → CMYK with full grey replacement (K carries the darkness), as print separations do."""
    rgbf = rgb.astype(np.float64) / 255.0
    k = 1.0 - rgbf.max(axis=-1)
    denom = np.where(k < 1.0, 1.0 - k, 1.0)
    cmy = (1.0 - rgbf - k[..., None]) / denom[..., None]
    return np.round(np.concatenate([cmy, k[..., None]], axis=-1) * 255.0).astype(np.uint8)


def cmyk_jpeg(rgb: np.ndarray) -> bytes:
    """An Adobe CMYK JPEG (inverted channels, as Photoshop writes them) of an RGB array."""
    return encode(Image.fromarray(cmyk_of(rgb), "CMYK"), "JPEG", quality=98)


def ycck_jpeg(rgb: np.ndarray) -> bytes:
    """An Adobe YCCK JPEG (transform flag 2) of an RGB array: C, M, Y stored as YCbCr, plus K."""
    cmyk = cmyk_of(rgb)
    ycc = np.asarray(Image.fromarray(np.ascontiguousarray(cmyk[..., :3]), "RGB").convert("YCbCr"))
    # Pillow inverts Adobe components on save; libjpeg converts YCC → CMY and Pillow inverts
    # back on read: storing 255 - YCC and K itself decodes to the intended C, M, Y, K.
    stored = np.concatenate([255 - ycc, cmyk[..., 3:]], axis=-1)
    data = bytearray(encode(Image.fromarray(stored, "CMYK"), "JPEG", quality=98))
    adobe = data.find(b"Adobe")
    data[adobe + 11] = 2  # APP14 transform: 2 = YCCK
    return bytes(data)


def _s15(value: float) -> bytes:
    return struct.pack(">i", int(round(value * 65536)))


def cmyk_profile() -> bytes:
    """A minimal ICC v2 CMYK printer profile: a 2-point lut16 from ink corners to Lab.

    Its press is muted (full inks reach about 60 % of the way a naive conversion says), so an
    image decoded through it differs visibly from the standard formula."""

    def lab(c: int, m: int, y: int, k: int) -> tuple[float, float, float]:
        light = (1 - k) * (1 - 0.25 * (c + m + y))
        return 30 + 60 * light, 0.6 * 50 * (m - c) * (1 - k), 0.6 * 50 * (y - (c + m) / 2) * (1 - k)

    grid: list[int] = []
    for c in (0, 1):
        for m in (0, 1):
            for y in (0, 1):
                for k in (0, 1):
                    L, a, b = lab(c, m, y, k)
                    grid += [round(L / 100 * 0xFF00), round((a + 128) * 256), round((b + 128) * 256)]
    lut = (b"mft2" + bytes(4) + struct.pack(">BBBB", 4, 3, 2, 0) + b"".join(_s15(v) for v in (1, 0, 0, 0, 1, 0, 0, 0, 1))
           + struct.pack(">HH", 2, 2) + struct.pack(">8H", *([0, 65535] * 4))
           + struct.pack(f">{len(grid)}H", *grid) + struct.pack(">6H", *([0, 65535] * 3)))
    name = b"clipblind test press\0"
    tags = [(b"desc", b"desc" + bytes(4) + struct.pack(">I", len(name)) + name + bytes(78)),
            (b"wtpt", b"XYZ " + bytes(4) + _s15(0.9642) + _s15(1.0) + _s15(0.8249)),
            (b"cprt", b"text" + bytes(4) + b"none\0"),
            (b"A2B0", lut)]
    offset = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for signature, data in tags:
        body += bytes(-(offset + len(body)) % 4)
        table += signature + struct.pack(">II", offset + len(body), len(data))
        body += data
    header = (struct.pack(">I", offset + len(body)) + b"lcms" + struct.pack(">I", 0x02100000) + b"prtrCMYKLab "
              + bytes(12) + b"acspAPPL" + bytes(20) + struct.pack(">I", 0) + _s15(0.9642) + _s15(1.0) + _s15(0.8249)
              + b"lcms" + bytes(44))
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + body


def cmyk_icc_jpeg(rgb: np.ndarray, icc: bytes) -> bytes:
    """An Adobe CMYK JPEG carrying an ICC profile."""
    return encode(Image.fromarray(cmyk_of(rgb), "CMYK"), "JPEG", quality=98, icc_profile=icc)


def png_bytes(width: int, height: int, bit_depth: int, color_type: int, raw: bytes, bad_crc: bool = False) -> bytes:
    """A PNG built chunk by chunk (for 48-bit RGB, forged sizes and broken checksums)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) ^ (1 if bad_crc and kind == b"IHDR" else 0)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def rgb16_png(width: int = 256, height: int = 4) -> bytes:
    """A 48-bit RGB PNG: a 16-bit ramp in every channel."""
    ramp = np.linspace(0, 65535, width).astype(">u2")
    row = np.repeat(ramp, 3).tobytes()
    return png_bytes(width, height, 16, 2, zlib.compress(b"".join(b"\x00" + row for _ in range(height))))


def psd_bytes(width: int = 16, height: int = 8) -> bytes:
    """A valid, uncompressed RGB Photoshop file (Pillow can read it; the allowlist refuses it)."""
    header = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, height, width, 8, 3)
    sections = struct.pack(">III", 0, 0, 0) + struct.pack(">H", 0)
    return header + sections + bytes(range(256))[: 1] * (3 * width * height)


def gif_screen(width: int, height: int) -> bytes:
    """A GIF whose logical screen is `width` × `height` with a single 1×1 frame."""
    return (
        b"GIF89a" + struct.pack("<HHBBB", width, height, 0, 0, 0)
        + b"," + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00;"
    )


def bmp_header(width: int, height: int) -> bytes:
    """A BMP header declaring `width` × `height` 24-bit pixels, followed by almost no data."""
    dib = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(dib) + 16, 0, 0, 14 + len(dib)) + dib + bytes(16)


def jpeg_with_size(data: bytes, width: int, height: int) -> bytes:
    """`data` (a baseline JPEG) with its frame header rewritten to declare another size."""
    out = bytearray(data)
    sof = out.find(b"\xff\xc0")
    out[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(out)


class _Exploit:
    """Unpickling this creates a file: a shard that is unpickled leaves the evidence."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def variants(blocked_seed: int = 7) -> list[Variant]:
    """Every file of the hostile corpus with its expected outcome (at `MAX_PIXELS`)."""
    rng = np.random.default_rng(0)
    v: list[Variant] = []
    upright = marked()
    for o in range(1, 9):
        v.append(Variant(f"exif/orientation_{o}.jpg", oriented_jpeg(o, upright), OK))
    photo = np.asarray(Image.effect_noise((64, 48), 40).convert("RGB").resize((64, 48)))
    scene = np.zeros((48, 64, 3), np.uint8)
    scene[:, :32] = (200, 60, 30)
    scene[:, 32:] = (20, 90, 160)
    v.append(Variant("modes/cmyk.jpg", cmyk_jpeg(scene), OK))
    v.append(Variant("modes/ycck.jpg", ycck_jpeg(scene), OK))
    v.append(Variant("modes/cmyk_profile.jpg", cmyk_icc_jpeg(scene, cmyk_profile()), OK))
    v.append(Variant("modes/cmyk_broken_profile.jpg", cmyk_icc_jpeg(scene[::-1], b"not an icc profile" * 9), OK))
    gray = Image.fromarray(photo).convert("L")
    v.append(Variant("modes/gray.jpg", encode(gray, "JPEG"), OK))
    v.append(Variant("modes/progressive.jpg", encode(Image.fromarray(photo), "JPEG", progressive=True), OK))
    ramp16 = np.linspace(0, 65535, 256 * 4).astype(np.uint16).reshape(4, 256)
    v.append(Variant("modes/gray16.png", encode(Image.fromarray(ramp16), "PNG"), OK))
    v.append(Variant("modes/gray16.tif", encode(Image.fromarray(ramp16), "TIFF"), OK))
    v.append(Variant("modes/rgb48.png", rgb16_png(), OK))
    pal = Image.fromarray(photo).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    v.append(Variant("modes/palette_transparent.png", encode(pal, "PNG", transparency=0), OK))
    v.append(Variant("modes/palette.gif", encode(pal, "GIF"), OK))
    v.append(Variant("modes/gray_alpha.png", encode(gray.convert("LA"), "PNG"), OK))
    rgba = Image.fromarray(photo).convert("RGBA")
    rgba.putalpha(128)
    v.append(Variant("modes/rgba.webp", encode(rgba, "WEBP", lossless=True), OK))
    v.append(Variant("modes/bilevel.bmp", encode(gray.convert("1"), "BMP"), OK))
    v.append(Variant("modes/float.tif", encode(Image.fromarray(np.linspace(-1, 3, 64 * 8, dtype=np.float32).reshape(8, 64)), "TIFF"), OK))
    v.append(Variant("modes/int32.tif", encode(Image.fromarray(np.arange(64 * 8, dtype=np.int32).reshape(8, 64) * 1000), "TIFF"), OK))
    v.append(Variant("modes/cmyk.tif", encode(Image.fromarray(scene).convert("CMYK"), "TIFF"), OK))
    v.append(Variant("modes/lzw.tif", encode(Image.fromarray(photo), "TIFF", compression="tiff_lzw"), OK))
    frames = [Image.new("RGB", (16, 16), c) for c in [(255, 0, 0), (0, 0, 255), (0, 255, 0)]]
    v.append(Variant("animated/three.gif", encode(frames[0], "GIF", save_all=True, append_images=frames[1:]), OK))
    v.append(Variant("animated/three.webp", encode(frames[0], "WEBP", save_all=True, append_images=frames[1:]), OK))
    v.append(Variant("animated/three.png", encode(frames[0], "PNG", save_all=True, append_images=frames[1:]), OK))
    v.append(Variant("animated/pages.tif", encode(frames[0], "TIFF", save_all=True, append_images=frames[1:]), OK))
    v.append(Variant("odd/one_pixel.png", encode(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"), OK))
    v.append(Variant("odd/wide.png", encode(Image.new("RGB", (4000, 1), (1, 2, 3)), "PNG"), OK))
    broken_exif = bytearray(encode(Image.fromarray(photo), "JPEG", exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x05"))
    v.append(Variant("odd/broken_exif.jpg", bytes(broken_exif), OK))
    v.append(Variant("odd/jpeg_named.png", encode(Image.fromarray(photo[::-1]), "JPEG"), OK))
    v.append(Variant("odd/no_extension", encode(Image.fromarray(photo[:, ::-1]), "PNG"), OK))
    v.append(Variant("odd/UPPER.JPG", encode(Image.fromarray(photo[::2]), "JPEG"), OK))
    v.append(Variant("odd/ünïcødé 画像.jpg", encode(Image.fromarray(photo[:, ::2]), "JPEG"), OK))
    v.append(Variant("bomb/just_under_cap.png", encode(Image.new("L", (999, 1001)), "PNG"), OK))
    v.append(Variant("bomb/at_cap.png", encode(Image.new("L", (1000, 1000), 3), "PNG"), OK))
    v.append(Variant("bomb/just_over_cap.png", encode(Image.new("L", (1001, 1000)), "PNG"), "too_many_pixels"))
    v.append(Variant("bomb/forged_ihdr.png", png_bytes(100_000, 100_000, 8, 2, zlib.compress(b"\x00" * 64)), "too_many_pixels"))
    v.append(Variant("bomb/forged_screen.gif", gif_screen(65_535, 65_535), "too_many_pixels"))
    v.append(Variant("bomb/forged_sof.jpg", jpeg_with_size(encode(Image.fromarray(photo), "JPEG"), 60_000, 60_000), "too_many_pixels"))
    v.append(Variant("bomb/forged.bmp", bmp_header(50_000, 50_000), "too_many_pixels"))
    v.append(Variant("disguised/photoshop.jpg", psd_bytes(), "unsupported_format"))
    v.append(Variant("disguised/document.jpg", encode(Image.fromarray(photo), "PDF"), "unsupported_format"))
    v.append(Variant("disguised/vector.png", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n", "unsupported_format"))
    v.append(Variant("disguised/page.jpg", b"<!DOCTYPE html><html><body>404 not found</body></html>", "unsupported_format"))
    v.append(Variant("disguised/drawing.png", b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>', "unsupported_format"))
    v.append(Variant("disguised/icon.jpg", encode(Image.fromarray(photo), "ICO"), "unsupported_format"))
    v.append(Variant("disguised/pixmap.png", encode(Image.fromarray(photo), "PPM"), "unsupported_format"))
    v.append(Variant("disguised/targa.jpg", encode(Image.fromarray(photo), "TGA"), "unsupported_format"))
    v.append(Variant("disguised/archive.jpg", b"PK\x03\x04" + bytes(40), "unsupported_format"))
    v.append(Variant("disguised/phone.jpg", b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64), "unsupported_format"))
    v.append(Variant("odd/notes.txt", b"just some notes\n", "unsupported_format"))
    v.append(Variant("odd/random.bin", b"\x07" + rng.bytes(999), "unsupported_format"))
    v.append(Variant("odd/empty.jpg", b"", "empty_file"))
    v.append(Variant("odd/oversized.jpg", b"\xff\xd8\xff" + bytes(MAX_BYTES), "too_large"))
    jpeg = encode(Image.fromarray(photo).resize((256, 192)), "JPEG", quality=95)
    for cut in (3, 20, 200, len(jpeg) // 4, len(jpeg) // 2, 3 * len(jpeg) // 4, len(jpeg) - 64):
        v.append(Variant(f"truncated/jpeg_at_{cut}.jpg", jpeg[:cut], "truncated"))
    for name, fmt in (("png", "PNG"), ("webp", "WEBP"), ("tif", "TIFF")):
        whole = encode(Image.fromarray(photo).resize((128, 96)), fmt)
        v.append(Variant(f"truncated/half.{name}", whole[: len(whole) // 2], "truncated"))
    v.append(Variant("corrupt/bad_header_crc.png", png_bytes(8, 8, 8, 0, zlib.compress(bytes(72)), bad_crc=True), "corrupt"))
    v.append(Variant("corrupt/bad_zlib.png", png_bytes(8, 8, 8, 0, b"\x78\x9c" + bytes(range(200, 250))), "corrupt"))
    v.append(Variant("zcopies/copy_of_orientation_1.jpg", v[0].data, DUPLICATE))
    v.append(Variant("zcopies/deep/nested/copy_of_gray.jpg", next(x.data for x in v if x.path == "modes/gray.jpg"), DUPLICATE))
    blocked = encode(Image.new("RGB", (20, 20), (blocked_seed, 0, 0)), "PNG")
    v.append(Variant("blocked/flagged.png", blocked, BLOCKED))
    v.append(Variant("blocked/flagged_copy.png", blocked, BLOCKED))
    return v


def blocked_hashes(items: list[Variant]) -> list[str]:
    """sha256 of every variant expected to be blocked."""
    import hashlib

    return sorted({hashlib.sha256(x.data).hexdigest() for x in items if x.expected == BLOCKED})


def write_folder(root: Path, items: list[Variant], outside: Path) -> dict[str, str]:
    """Write the variants below `root`, plus links and a hidden file; return every expected outcome by location."""
    expected = {}
    for x in items:
        target = root / x.path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(x.data)
        expected[x.path] = x.expected
    outside.mkdir(parents=True, exist_ok=True)
    (outside / "secret.jpg").write_bytes(items[0].data)
    links = root / "links"
    links.mkdir()
    (links / "escape.jpg").symlink_to(outside / "secret.jpg")
    (links / "escape_dir").symlink_to(outside, target_is_directory=True)
    (links / "inside.jpg").symlink_to(root / items[1].path)
    (links / "dangling.jpg").symlink_to(root / "nowhere.jpg")
    (root / ".hidden.jpg").write_bytes(items[2].data)  # hidden entries are not inputs
    os.mkfifo(root / "odd" / "pipe.jpg")  # opening it would block forever
    expected.update({"links/escape.jpg": "path_escape", "links/escape_dir": "path_escape",
                     "links/inside.jpg": DUPLICATE, "links/dangling.jpg": "unreadable",
                     "odd/pipe.jpg": "unreadable"})
    return expected


def _add(archive: tarfile.TarFile, name: str, data: bytes, **fields: object) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    for key, value in fields.items():
        setattr(info, key, value)
    archive.addfile(info, io.BytesIO(data))


def write_shards(folder: Path, items: list[Variant], exploit_marker: Path) -> dict[str, str]:
    """webdataset shards of the variants (one sample each, with a licence json) plus hostile shards.

    Returns every expected outcome by location (`<shard>#<member>`)."""
    folder.mkdir(parents=True, exist_ok=True)
    expected: dict[str, str] = {}
    ordered = sorted(items, key=lambda x: (x.expected == DUPLICATE, x.path))  # originals first
    half = len(ordered) // 2
    for number, chunk in enumerate((ordered[:half], ordered[half:])):
        shard = f"shard-{number:05d}.tar"
        with tarfile.open(folder / shard, "w", format=tarfile.USTAR_FORMAT) as archive:
            for k, x in enumerate(chunk):
                key = f"{number:02d}{k:04d}"
                suffix = Path(x.path).suffix.lower().lstrip(".")
                ext = suffix if suffix in ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff") else "jpg"
                _add(archive, f"{key}.{ext}", x.data)
                _add(archive, f"{key}.json", json.dumps({"key": key, "license": f"CC-BY-{k % 3}"}).encode())
                _add(archive, f"{key}.txt", x.path.encode())
                expected[f"{shard}#{key}.{ext}"] = x.expected
    good = ordered[0].data
    with tarfile.open(folder / "shard-00002.tar", "w", format=tarfile.GNU_FORMAT) as archive:
        _add(archive, "../escape.jpg", good)
        _add(archive, "/absolute.jpg", good)
        _add(archive, "link.jpg", b"", type=tarfile.SYMTYPE, linkname="/etc/passwd")
        _add(archive, "hard.jpg", b"", type=tarfile.LNKTYPE, linkname="../../outside.jpg")
        _add(archive, "pickled.pyd", pickle.dumps(_Exploit(str(exploit_marker))))
        _add(archive, "pickled.json", b'{"license": "CC0-1.0"}')
        _add(archive, "fine.png", ordered[1].data)
        _add(archive, "fine.json", b"{not json")
    expected.update({
        "shard-00002.tar#../escape.jpg": "path_escape", "shard-00002.tar#/absolute.jpg": "path_escape",
        "shard-00002.tar#link.jpg": "path_escape", "shard-00002.tar#hard.jpg": "path_escape",
        "shard-00002.tar#pickled": "no_image", "shard-00002.tar#fine.png": DUPLICATE,
    })
    # Cut inside the second sample's image: the first sample survives, the second is truncated.
    whole = io.BytesIO()
    with tarfile.open(fileobj=whole, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        _add(archive, "a.png", ordered[2].data)
        _add(archive, "b.jpg", bytes(range(256)) * 40)
        _add(archive, "c.jpg", good)
    raw = whole.getvalue()
    cut = raw.find(bytes(range(256)) * 2) + 1000
    (folder / "shard-00003.tar").write_bytes(raw[:cut])
    expected.update({"shard-00003.tar#a.png": DUPLICATE, "shard-00003.tar#b.jpg": "truncated"})
    # Cut exactly between members: nothing is half-read, but the end-of-archive marker is missing.
    header_of_c = raw.find(b"c.jpg")
    (folder / "shard-00004.tar").write_bytes(raw[:header_of_c])
    expected.update({"shard-00004.tar#a.png": DUPLICATE, "shard-00004.tar#b.jpg": "unsupported_format",
                     "shard-00004.tar#": "truncated"})
    (folder / "shard-00005.tar").write_bytes(b"")
    (folder / "shard-00006.tar").write_bytes(b"this is not a tar archive at all" * 40)
    expected.update({"shard-00005.tar#": "empty_file", "shard-00006.tar#": "unsupported_format"})
    return expected
