"""Fuzzing the canonical decode: whatever the bytes, it returns an RGB image or raises
`DecodeError` with a reason code; no other exception escapes.

Inputs are valid files of every allowed format with bytes flipped, cut, repeated or spliced,
and random bytes behind each format's signature. The run is bounded by `max_examples`
(about half a minute on two cores)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from pipeline.images.decode import DecodeError, RejectReason, decode
from tests.helpers.corpus_fixtures import cmyk_icc_jpeg, cmyk_jpeg, cmyk_profile, marked, oriented_jpeg, rgb16_png


def _seeds() -> list[bytes]:
    photo = Image.effect_noise((24, 16), 40).convert("RGB")
    frames = [photo, photo.transpose(Image.Transpose.ROTATE_180)]
    out = []
    for fmt, kw in [("JPEG", {}), ("JPEG", {"progressive": True}), ("PNG", {}), ("WEBP", {}), ("BMP", {}),
                    ("TIFF", {}), ("TIFF", {"compression": "tiff_lzw"}), ("GIF", {"save_all": True, "append_images": frames[1:]}),
                    ("PNG", {"save_all": True, "append_images": frames[1:]})]:
        buffer = io.BytesIO()
        photo.save(buffer, format=fmt, **kw)
        out.append(buffer.getvalue())
    out += [oriented_jpeg(6, marked()), cmyk_jpeg(np.asarray(photo)), cmyk_icc_jpeg(np.asarray(photo), cmyk_profile()),
            rgb16_png(32, 2)]
    return out


SEEDS = _seeds()


@st.composite
def hostile_bytes(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 6))):
        action = draw(st.sampled_from(["flip", "cut", "insert", "repeat", "zero"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if action == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif action == "cut":
            del data[at:]
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif action == "repeat":
            data[at:at] = data[at : at + draw(st.integers(1, 512))]
        else:
            data[at : at + 8] = bytes(8)
    return bytes(data)


def _holds_contract(data: bytes) -> None:
    try:
        decoded = decode(data, max_pixels=4_000_000)
    except DecodeError as err:
        assert isinstance(err.reason, RejectReason) and err.detail
        return
    assert decoded.image.mode == "RGB" and decoded.image.width > 0 and decoded.image.height > 0
    assert decoded.frame_count >= 1


@pytest.mark.slow
@settings(max_examples=2500, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_bytes())
def test_mutated_images_hold_the_reason_code_contract(data):
    _holds_contract(data)


@pytest.mark.slow
@settings(max_examples=1000, deadline=None, database=None)
@given(st.sampled_from([b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"RIFF\x00\x01\x00\x00WEBPVP8 ", b"BM",
                        b"II*\x00", b"MM\x00*", b"II+\x00"]), st.binary(max_size=400))
def test_random_bytes_behind_a_signature_hold_the_contract(signature, tail):
    _holds_contract(signature + tail)
