"""decode_image against everything bad input can be."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from contentembed.services.common.errors import InvalidArgument
from contentembed.services.image_encoder.decoding import decode_image
from tests.support.images import encoded, photo_like

JPEG = encoded(photo_like(1), "JPEG")
LIMITS = {"max_bytes": 1_000_000, "max_pixels": 4_000_000, "what": "inputs[3]"}


def png_claiming_size(width: int, height: int) -> bytes:
    """A valid tiny PNG whose header claims another size: a decompression bomb's shape."""
    data = bytearray(encoded(Image.new("L", (8, 8))))
    ihdr_start = 8 + 8  # signature, then length + type of the IHDR chunk
    data[ihdr_start : ihdr_start + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[12 : ihdr_start + 13]))
    data[ihdr_start + 13 : ihdr_start + 17] = struct.pack(">I", crc)
    return bytes(data)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "EMPTY_IMAGE"),
        (b"definitely not an image", "UNSUPPORTED_IMAGE"),
        (encoded(photo_like(1), "PNG")[:300], "CORRUPT_IMAGE"),
        (JPEG[: len(JPEG) // 2], "CORRUPT_IMAGE"),
        (encoded(photo_like(1), "TIFF"), "UNSUPPORTED_IMAGE"),
        (png_claiming_size(100_000, 100_000), "IMAGE_TOO_MANY_PIXELS"),
        (png_claiming_size(3000, 3000), "IMAGE_TOO_MANY_PIXELS"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 2_000_000, "IMAGE_TOO_LARGE"),
    ],
)
def test_bad_images_are_invalid_argument_naming_the_item(data: bytes, reason: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        decode_image(data, **LIMITS)
    assert caught.value.reason == reason
    assert caught.value.message.startswith("inputs[3]: ")


@pytest.mark.parametrize("image_format", ["PNG", "JPEG", "WEBP", "GIF", "BMP"])
def test_allowed_formats_decode_to_rgb(image_format: str) -> None:
    image = decode_image(encoded(photo_like(2), image_format), **LIMITS)
    assert image.mode == "RGB" and image.size == (96, 64)


def test_exif_orientation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    data = encoded(photo_like(3, size=(80, 40)), "JPEG", exif=exif.tobytes())
    assert decode_image(data, **LIMITS).size == (40, 80)


def test_alpha_goes_onto_white_and_cmyk_and_gray_convert() -> None:
    transparent = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert decode_image(encoded(transparent), **LIMITS).getpixel((0, 0)) == (255, 255, 255)
    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))  # red in CMYK
    red = decode_image(encoded(cmyk, "JPEG"), **LIMITS).getpixel((0, 0))
    assert red[0] > 200 and red[1] < 60 and red[2] < 60
    gray16 = Image.fromarray(np.full((4, 4), 40000, dtype=np.uint16))
    assert decode_image(encoded(gray16), **LIMITS).getpixel((0, 0))[0] == 40000 // 256


def test_animated_gif_uses_its_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 255))]
    data = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:])
    r, g, b = decode_image(data, **LIMITS).getpixel((4, 4))
    assert r > 200 and b < 60


@pytest.mark.parametrize("image_format", ["JPEG", "PNG"])
def test_large_images_are_scaled_to_the_side_limit(image_format: str) -> None:
    data = encoded(photo_like(4, size=(1600, 1200)), image_format)
    image = decode_image(data, max_bytes=20_000_000, max_pixels=4_000_000, what="x", max_side=400)
    assert max(image.size) <= 400 and image.size[0] > image.size[1]  # aspect kept
    full = decode_image(data, max_bytes=20_000_000, max_pixels=4_000_000, what="x")
    assert full.size == (1600, 1200)
