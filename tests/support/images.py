"""Images the tests generate: the seed notebook's patterns and photo-like noise."""

from __future__ import annotations

import io

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
