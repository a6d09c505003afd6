"""Image decoding: accepted encodings and formats, and refusals that say what to fix."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import pytest
from PIL import Image

from nim_trellis.images import decode_image
from servicekit.errors import APIError
from tests.trellis.conftest import disc_image, encode


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_decode_image_accepts_formats(fmt: str, make_settings) -> None:
    img = disc_image(64) if fmt != "JPEG" else disc_image(64, alpha=False)
    out = decode_image(encode(img, fmt), make_settings())
    assert out.size == (64, 64)


def test_decode_image_accepts_plain_base64_and_keeps_alpha(make_settings) -> None:
    out = decode_image(encode(disc_image(32), data_uri=False), make_settings())
    assert out.mode == "RGBA"


def test_decode_image_rejects_gif(make_settings) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "GIF")
    with pytest.raises(APIError) as err:
        decode_image(base64.b64encode(buf.getvalue()).decode(), make_settings())
    assert err.value.status == 400 and "PNG, JPEG or WebP" in err.value.message


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims a huge canvas with a tiny compressed body: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [5000, 100_000])
def test_decode_image_rejects_decompression_bomb(side: int, make_settings) -> None:
    settings = make_settings(max_image_pixels=4096 * 4096)
    with pytest.raises(APIError) as err:
        decode_image(base64.b64encode(_png_header_only(side, side)).decode(), settings)
    assert err.value.status == 400 and "pixels" in err.value.message


def test_decode_image_rejects_oversized_payload(make_settings) -> None:
    with pytest.raises(APIError) as err:
        decode_image("A" * 4000, make_settings(max_image_bytes=1024))
    assert "larger than 1024 bytes" in err.value.message


def test_decode_image_rejects_truncated_png(make_settings) -> None:
    raw = base64.b64decode(encode(disc_image(64), data_uri=False))
    with pytest.raises(APIError) as err:
        decode_image(base64.b64encode(raw[: len(raw) // 2]).decode(), make_settings())
    assert err.value.status == 400
