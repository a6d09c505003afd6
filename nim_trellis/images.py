"""Decoding and validating client images: data URI or plain base64; PNG, JPEG or WebP; size and pixel limits.

Pixel limits are checked from the header before any pixel is decoded, so a decompression bomb (a tiny file that
claims a huge canvas) is refused without allocating it.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings

from PIL import Image, UnidentifiedImageError

from config import Settings
from nim_trellis.errors import bad_request

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP")
_DATA_URI = re.compile(r"^data:(?P<mime>[\w/+.-]*)(?P<params>(;[\w=.-]+)*?);base64,", re.IGNORECASE)


def strip_data_uri(value: str) -> str:
    match = _DATA_URI.match(value)
    return value[match.end() :] if match else value


def decode_base64(value: str, param: str, max_bytes: int) -> bytes:
    payload = "".join(strip_data_uri(value.strip()).split())
    # base64 grows data by 4/3; refuse oversized payloads before decoding them.
    if len(payload) * 3 // 4 > max_bytes:
        raise bad_request(f"`{param}` is larger than {max_bytes} bytes; send a smaller image.", param)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(
            f"`{param}` is not valid base64; send a data URI (data:image/png;base64,...) or plain base64.", param
        ) from None


def decode_image(value: str, settings: Settings, param: str = "image") -> Image.Image:
    """A fully loaded RGB or RGBA image, or a 400 `APIError` that says what is wrong with the input."""
    raw = decode_base64(value, param, settings.max_image_bytes)
    if not raw:
        raise bad_request(f"`{param}` is empty; send a PNG, JPEG or WebP image.", param)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw), formats=list(ACCEPTED_FORMATS))
    except Image.DecompressionBombError:
        raise bad_request(
            f"`{param}` claims a canvas far over the limit of {settings.max_image_pixels} pixels; downscale it.",
            param,
        ) from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise bad_request(f"`{param}` is not a PNG, JPEG or WebP image; decode failed.", param) from None
    pixels = image.width * image.height
    if pixels > settings.max_image_pixels:
        raise bad_request(
            f"`{param}` is {image.width}x{image.height} ({pixels} pixels), over the limit of "
            f"{settings.max_image_pixels} pixels (MAX_IMAGE_PIXELS); downscale it.",
            param,
        )
    try:
        image.load()
    except (OSError, ValueError, Image.DecompressionBombError):
        raise bad_request(f"`{param}` is a damaged or truncated image; re-encode it.", param) from None
    has_alpha = "A" in image.getbands() or "transparency" in image.info
    return image.convert("RGBA" if has_alpha else "RGB")
