import io

import numpy as np
import pytest
from PIL import Image

from pipeline.images.decode import BACKGROUND, DecodeError, RejectReason, decode
from tests.helpers.corpus_fixtures import (
    cmyk_icc_jpeg,
    cmyk_jpeg,
    cmyk_profile,
    marked,
    oriented_jpeg,
    psd_bytes,
    rgb16_png,
    ycck_jpeg,
)


def _bytes(im: Image.Image, fmt: str, **kw) -> bytes:
    out = io.BytesIO()
    im.save(out, format=fmt, **kw)
    return out.getvalue()


def _marked(width=40, height=20) -> Image.Image:
    """A landscape image, white with a red block in the top-left corner."""
    im = Image.new("RGB", (width, height), (255, 255, 255))
    im.paste((255, 0, 0), (0, 0, 10, 10))
    return im


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_gives_upright_image(orientation):
    upright = _marked()
    # store the pixels the way a camera with this orientation would, so decoding must undo it
    inverse = {
        1: None, 2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90,
        7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_270,
    }[orientation]
    stored = upright if inverse is None else upright.transpose(inverse)
    exif = Image.Exif()
    exif[0x0112] = orientation
    decoded = decode(_bytes(stored, "PNG", exif=exif)).image
    assert decoded.size == upright.size
    assert np.array_equal(np.asarray(decoded), np.asarray(upright))


def test_alpha_is_composited_on_the_documented_background():
    im = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    decoded = decode(_bytes(im, "PNG")).image
    assert decoded.mode == "RGB"
    assert decoded.getpixel((0, 0)) == BACKGROUND


def test_sixteen_bit_is_scaled_not_clipped():
    ramp = np.linspace(0, 65535, 256 * 4).astype(np.uint16).reshape(4, 256)
    decoded = decode(_bytes(Image.fromarray(ramp), "PNG")).image
    assert Image.open(io.BytesIO(_bytes(Image.fromarray(ramp), "PNG"))).mode.startswith("I")
    levels = np.unique(np.asarray(decoded)[..., 0])
    assert len(levels) >= 250


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", RejectReason.EMPTY_FILE),
        (b"hello, not an image", RejectReason.UNSUPPORTED_FORMAT),
        (b"%PDF-1.4\n%...", RejectReason.UNSUPPORTED_FORMAT),
    ],
)
def test_bad_bytes_raise_a_reason_code(data, reason):
    with pytest.raises(DecodeError) as err:
        decode(data)
    assert err.value.reason is reason


def test_truncated_jpeg_is_rejected():
    data = _bytes(Image.effect_noise((64, 64), 50).convert("RGB"), "JPEG", quality=95)
    with pytest.raises(DecodeError) as err:
        decode(data[: len(data) // 2])
    assert err.value.reason in (RejectReason.TRUNCATED, RejectReason.CORRUPT)


def test_pixel_cap_is_checked_before_decoding():
    data = _bytes(Image.new("RGB", (100, 100)), "PNG")
    assert decode(data, max_pixels=10_000).image.size == (100, 100)
    with pytest.raises(DecodeError) as err:
        decode(data, max_pixels=9_999)
    assert err.value.reason is RejectReason.TOO_MANY_PIXELS


def test_animated_gif_gives_first_frame_and_counts_frames():
    frames = [Image.new("RGB", (8, 8), c) for c in [(255, 0, 0), (0, 0, 255), (0, 255, 0)]]
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:])
    decoded = decode(out.getvalue())
    assert decoded.frame_count == 3
    r, g, b = decoded.image.getpixel((0, 0))
    assert r > 200 and b < 50


# ---- pixel tests on the formats real corpora carry



@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_of_a_camera_jpeg_decodes_upright(orientation):
    upright = marked()
    decoded = decode(oriented_jpeg(orientation, upright)).image
    assert decoded.size == upright.size
    # JPEG is lossy: compare the two marker blocks, which land in the wrong corners if misapplied
    arr = np.asarray(decoded).astype(int)
    assert (arr[2:10, 2:10] - (255, 0, 0)).__abs__().max() < 40
    assert (arr[-6:-2, -6:-2] - (0, 0, 255)).__abs__().max() < 40
    assert np.abs(arr - np.asarray(upright).astype(int)).mean() < 6


def _colourful() -> np.ndarray:
    y, x = np.mgrid[0:64, 0:96]
    return np.stack([x * 255 // 95, y * 255 // 63, (x + y) * 255 // 158], axis=-1).astype(np.uint8)


@pytest.mark.parametrize("make", [cmyk_jpeg, ycck_jpeg], ids=["cmyk", "ycck"])
def test_cmyk_and_ycck_jpegs_keep_their_colours(make):
    reference = _colourful()
    data = make(reference)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    decoded = np.asarray(decode(data).image).astype(float)
    assert np.abs(decoded.mean(axis=(0, 1)) - reference.mean(axis=(0, 1))).max() < 3.0
    assert np.abs(decoded - reference).mean() < 6.0


def test_sixteen_bit_tiff_and_48_bit_png_keep_their_levels():
    ramp = np.linspace(0, 65535, 256 * 4).astype(np.uint16).reshape(4, 256)
    for data in (_bytes(Image.fromarray(ramp), "TIFF"), rgb16_png()):
        arr = np.asarray(decode(data).image)
        assert len(np.unique(arr[..., 0])) >= 250
        assert arr.min() == 0 and arr.max() == 255  # scaled across the range, not clipped to 255


def test_a_photoshop_file_pillow_could_open_is_refused_before_decoding():
    data = psd_bytes()
    assert Image.open(io.BytesIO(data)).format == "PSD"  # a real decoder exists; the allowlist says no
    with pytest.raises(DecodeError) as err:
        decode(data)
    assert err.value.reason is RejectReason.UNSUPPORTED_FORMAT and err.value.detail.startswith("PSD")


@pytest.mark.parametrize("fraction", [0.001, 0.02, 0.25, 0.5, 0.75, 0.97])
def test_jpeg_cut_anywhere_is_truncated(fraction):
    data = _bytes(Image.effect_noise((128, 96), 50).convert("RGB"), "JPEG", quality=95)
    with pytest.raises(DecodeError) as err:
        decode(data[: max(3, int(len(data) * fraction))])
    assert err.value.reason is RejectReason.TRUNCATED


@pytest.mark.parametrize("fmt", ["WEBP", "PNG"])
def test_other_animations_give_first_frame_and_count(fmt):
    frames = [Image.new("RGB", (8, 8), c) for c in [(255, 0, 0), (0, 0, 255)]]
    decoded = decode(_bytes(frames[0], fmt, save_all=True, append_images=frames[1:], lossless=True))
    assert decoded.frame_count == 2 and decoded.image.getpixel((4, 4))[0] > 200


def test_cmyk_jpeg_with_an_icc_profile_is_converted_through_it():
    from PIL import ImageCms

    icc = cmyk_profile()
    data = cmyk_icc_jpeg(_colourful(), icc)
    raw = Image.open(io.BytesIO(data))
    assert raw.mode == "CMYK" and raw.info["icc_profile"] == icc
    through_profile = ImageCms.profileToProfile(
        raw, ImageCms.ImageCmsProfile(io.BytesIO(icc)), ImageCms.createProfile("sRGB"), outputMode="RGB",
        renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC, flags=ImageCms.Flags.BLACKPOINTCOMPENSATION,
    )
    decoded = np.asarray(decode(data).image).astype(int)
    assert np.array_equal(decoded, np.asarray(through_profile))
    assert np.abs(decoded - np.asarray(raw.convert("RGB")).astype(int)).mean() > 20  # the profile mattered


def test_cmyk_jpeg_with_a_broken_profile_falls_back_to_the_formula():
    data = cmyk_icc_jpeg(_colourful(), b"not an icc profile" * 9)
    raw = Image.open(io.BytesIO(data))
    assert np.array_equal(np.asarray(decode(data).image), np.asarray(raw.convert("RGB")))
