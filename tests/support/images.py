"""Images the tests generate: the original prototype's patterns and photo-like noise."""

from __future__ import annotations

import binascii
import functools
import io
import itertools
import struct
import zlib
from collections.abc import Iterable

import numpy as np
from PIL import Image

SIZE = 32


def seed_pattern(kind: str, seed: int = 0) -> np.ndarray:
    """The notebook's make_img: vertical/horizontal stripes or a center square + noise."""
    rng = np.random.default_rng(seed)
    image = np.zeros((SIZE, SIZE), dtype=np.float32)
    if kind == "vertical":
        image[:, ::2] = 1.0
    elif kind == "horizontal":
        image[::2, :] = 1.0
    elif kind == "center":
        image[SIZE // 4 : 3 * SIZE // 4, SIZE // 4 : 3 * SIZE // 4] = 1.0
    image += 0.05 * rng.normal(size=(SIZE, SIZE)).astype(np.float32)
    return np.clip(image, 0.0, 1.0)


def gray_image(values: np.ndarray) -> Image.Image:
    return Image.fromarray((values * 255).astype(np.uint8)).convert("RGB")


def photo_like(seed: int, size: tuple[int, int] = (96, 64)) -> Image.Image:
    """Smooth colour gradients plus noise: enough structure for a vision model."""
    rng = np.random.default_rng(seed)
    width, height = size
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    channels = [
        np.sin(2 * np.pi * (rng.uniform(0.5, 3) * x + rng.uniform(0.5, 3) * y + rng.uniform()))
        for _ in range(3)
    ]
    pixels = (np.stack(channels, axis=-1) * 0.4 + 0.5 + 0.05 * rng.normal(size=(height, width, 3)))
    return Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8))


def encoded(image: Image.Image, image_format: str = "PNG", **save_options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **save_options)
    return buffer.getvalue()


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png16(pixels: np.ndarray) -> bytes:
    """A 16-bit PNG written chunk by chunk: Pillow can save I;16 but no 16-bit RGB(A)/LA.

    ``pixels`` is uint16 (height, width) grayscale, or (height, width, channels) with 2
    (gray + alpha), 3 (RGB) or 4 (RGBA) channels."""
    height, width = pixels.shape[:2]
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    return png16_rows(width, height, channels, (pixels[y] for y in range(height)))


def png16_rows(
    width: int, height: int, channels: int, rows: Iterable[np.ndarray], level: int = 6
) -> bytes:
    """A 16-bit PNG from its rows, compressed as they come: a big image never needs to be
    whole in memory (``rows`` yields ``height`` uint16 arrays of width x channels values)."""
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    compressor = zlib.compressobj(level)
    parts = []
    count = 0
    for row in rows:
        samples = np.ascontiguousarray(row, dtype=">u2").reshape(width * channels)
        parts.append(compressor.compress(b"\x00" + samples.tobytes()))  # filter type 0: None
        count += 1
    if count != height:
        raise ValueError(f"{count} rows for a height of {height}")
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    return b"".join(
        [PNG_SIGNATURE, _chunk(b"IHDR", header), _chunk(b"IDAT", b"".join(parts)), _chunk(b"IEND", b"")]
    )


@functools.lru_cache(maxsize=8)
def striped_png16(width: int, height: int, colours: tuple[tuple[int, ...], ...]) -> bytes:
    """A 16-bit PNG of equal vertical stripes, one per colour (1, 2, 3 or 4 samples: gray,
    gray + alpha, RGB, RGBA). Every row is alike, so it compresses like the probe that found
    the decoding defect: 6000 x 6000 RGBA is ~460 KB on the wire and 137 MiB decoded."""
    channels = len(colours[0])
    row = np.empty((width, channels), dtype=np.uint16)
    edges = np.linspace(0, width, len(colours) + 1).astype(int)
    for colour, start, stop in zip(colours, edges[:-1], edges[1:], strict=True):
        row[start:stop] = colour
    return png16_rows(width, height, channels, itertools.repeat(row, height))


def stripe_centres(width: int, stripes: int) -> list[int]:
    """The x of each stripe's middle in a ``width`` wide image of striped_png16."""
    return [int((i + 0.5) * width / stripes) for i in range(stripes)]


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", binascii.crc32(kind + data))


def png_claiming_size(width: int, height: int) -> bytes:
    """A valid tiny PNG whose header claims another size: a decompression bomb's shape."""
    data = bytearray(encoded(Image.new("L", (8, 8))))
    ihdr_start = 8 + 8  # signature, then length + type of the IHDR chunk
    data[ihdr_start : ihdr_start + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[12 : ihdr_start + 13]))
    data[ihdr_start + 13 : ihdr_start + 17] = struct.pack(">I", crc)
    return bytes(data)
