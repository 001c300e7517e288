"""Decoding images that bad input cannot break. Pure: no grpc.

Pillow opens lazily: ``Image.open`` reads only the header, so the pixel count is checked
before a single pixel is decoded and a decompression bomb costs nothing. Only the formats
in ALLOWED_FORMATS are even tried, which keeps Pillow's rarer parsers out of reach.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from contentembed.services.common.errors import InvalidArgument

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
WHITE = (255, 255, 255)


def decode_image(
    data: bytes, *, max_bytes: int, max_pixels: int, what: str, max_side: int = 0
) -> Image.Image:
    """An RGB image with EXIF orientation applied (first frame of an animation), no side
    longer than ``max_side`` when given (JPEGs are decoded at reduced scale directly), so
    a queued image holds a few MB whatever its size on the wire."""
    if not data:
        raise InvalidArgument(f"{what}: image is empty (0 bytes)", reason="EMPTY_IMAGE")
    if len(data) > max_bytes:
        raise InvalidArgument(
            f"{what}: image is {len(data)} bytes, above the limit of {max_bytes}",
            reason="IMAGE_TOO_LARGE",
        )
    with warnings.catch_warnings():
        # Our own pixel limit is the check; Pillow's bomb warning would only be noise.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
        except Image.DecompressionBombError as error:
            raise InvalidArgument(f"{what}: {error}", reason="IMAGE_TOO_MANY_PIXELS") from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
            raise InvalidArgument(
                f"{what}: not a readable {', '.join(ALLOWED_FORMATS)} image",
                reason="UNSUPPORTED_IMAGE",
            ) from None
        width, height = image.size
        if width < 1 or height < 1:
            raise InvalidArgument(f"{what}: image has no pixels", reason="CORRUPT_IMAGE")
        if width * height > max_pixels:
            raise InvalidArgument(
                f"{what}: {width}x{height} is {width * height} pixels, above the limit of "
                f"{max_pixels}",
                reason="IMAGE_TOO_MANY_PIXELS",
            )
        try:
            if max_side and image.format == "JPEG":
                image.draft("RGB", (max_side, max_side))  # DCT scaling: cheaper than resizing
            image.load()
            image = ImageOps.exif_transpose(image)
            if max_side and max(image.size) > max_side:
                image.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
            return to_rgb(image)
        except Exception as error:  # noqa: BLE001 - any decoder failure is the input's fault
            raise InvalidArgument(
                f"{what}: corrupt or truncated {image.format} image ({error})",
                reason="CORRUPT_IMAGE",
            ) from None


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB for every mode: transparency goes onto white, CMYK and grayscale convert."""
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (
        image.mode == "P" and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, WHITE)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: scale to 8 bits instead of clipping to white.
        image = image.point(lambda value: value / 256).convert("L")
    return image if image.mode == "RGB" else image.convert("RGB")
