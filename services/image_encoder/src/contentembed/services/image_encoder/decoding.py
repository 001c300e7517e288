"""Decoding images that bad input cannot break. Pure: no grpc.

Pillow opens lazily: ``Image.open`` reads only the header, so both the pixel count and the
bytes decoding will allocate are checked before a single pixel is decoded, and a
decompression bomb costs nothing. Only the formats in ALLOWED_FORMATS are even tried, which
keeps Pillow's rarer parsers out of reach.

Memory (measured on Pillow 13 / glibc 2.36, see the image-encoder section of README.md):
the one full-size buffer decoding cannot avoid is the image Pillow decodes into. Everything
after it works on horizontal bands of it that are converted to RGB and reduced one at a
time, so no second full-size copy is ever made (the previous pipeline made up to three:
``exif_transpose``'s copy, ``resize``'s premultiplied RGBa copy of an RGBA image, and the
image itself). After a large decode the freed memory is handed back to the OS.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import io
import math
import os
import traceback
import warnings
from collections.abc import Callable

from PIL import ExifTags, Image, ImageFile, UnidentifiedImageError

from contentembed.services.common.errors import InvalidArgument

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
WHITE = (255, 255, 255)
MiB = 1024 * 1024

# What decode_cost says a 24-megapixel (6000x4000) image costs with the default
# max_decoded_side (1024): an 8-bit RGB or RGBA PNG (16-bit too: Pillow decodes RGB(A)
# PNGs to 8 bits) 104-108 MiB, as Pillow keeps RGB as 4 bytes a pixel; a baseline JPEG
# 15 MiB (DCT-scaled to 1/4); a progressive 4:2:0 JPEG 84 MiB (libjpeg's full-size
# coefficient buffers). 128 MiB admits all of them and refuses a 36-megapixel RGBA PNG
# (160 MiB); times max_concurrent_decodes (4) it bounds decoding at 512 MiB.
DEFAULT_MAX_DECODE_BYTES = 128 * MiB

# Rows are converted to RGB and reduced a band of about this many bytes (of RGB) at a
# time; each band's temporaries (crop, RGBA copy, white background, alpha channel) are a
# few times this.
BAND_BYTES = 1 * MiB

# Decodes estimated above this are followed by malloc_trim (see give_back_freed_memory):
# ~0.2 ms, against 25 ms and more for decoding such an image; smaller decodes skip it.
TRIM_ABOVE_BYTES = 8 * MiB

# Pillow allocates an image in blocks of up to this many bytes (default 16 MiB). glibc
# serves every request of 32 MiB or more (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit) with its
# own mmap and unmaps it on free; smaller ones, after glibc has raised its dynamic mmap
# threshold past them (the first 16 MiB block freed does it), come from a malloc arena
# that keeps them when freed. With 64 MiB blocks an image above 32 MiB is one or a few
# mmaps that go back to the OS as soon as it is freed. Not set when PILLOW_BLOCK_SIZE is.
PILLOW_BLOCK_BYTES = 64 * MiB

# Bytes per pixel of Pillow's own storage (libImaging/Storage.c, ImagingNewPrologueSubtype):
# 1 for "1", "L", "P" and 2 for the I;16 family; every other mode, RGB included, takes 4.
PIXEL_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}
RGB_PIXEL_BYTES = 4

# EXIF orientation -> the transpose that displays the image upright (as ImageOps.exif_transpose).
ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def decode_image(
    data: bytes,
    *,
    max_bytes: int,
    max_pixels: int,
    what: str,
    max_side: int = 0,
    max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES,
) -> Image.Image:
    """An RGB image with EXIF orientation applied (first frame of an animation), no side
    longer than ``max_side`` when given, so a queued image holds a few MB whatever its size
    on the wire. Decoding is refused, unread, when it would allocate more than
    ``max_decode_bytes`` (see decode_cost)."""
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
        image_format = image.format
        width, height = image.size
        if width < 1 or height < 1:
            raise InvalidArgument(f"{what}: image has no pixels", reason="CORRUPT_IMAGE")
        if width * height > max_pixels:
            raise InvalidArgument(
                f"{what}: {width}x{height} is {width * height} pixels, above the limit of "
                f"{max_pixels}",
                reason="IMAGE_TOO_MANY_PIXELS",
            )
        target = fitted_size(image.size, max_side)
        try:
            if image_format == "JPEG" and target != image.size:
                # DCT scaling (1/2, 1/4, 1/8) while decoding: cheaper than any resize. Asked
                # for the fitted size, not a max_side square, so the scale follows the long
                # side (a 6000x4000 photo decodes at 1/4, not at 1/2).
                image.draft("RGB", target)
            cost = decode_cost(image, data, target)
        except Exception as error:  # noqa: BLE001 - a header Pillow parsed but cannot use
            raise _corrupt(what, image_format, error) from None
        if cost > max_decode_bytes:
            raise InvalidArgument(
                f"{what}: decoding this {width}x{height} {image_format} ({image.mode}) would "
                f"take {cost} bytes ({cost / MiB:.0f} MiB) of memory, above the limit of "
                f"{max_decode_bytes}",
                reason="IMAGE_DECODE_TOO_LARGE",
            )
        try:
            rgb = _decoded(image, target)
        except Exception as error:  # noqa: BLE001 - any decoder failure is the input's fault
            # The traceback, kept as the context of ours, would keep the band images alive.
            traceback.clear_frames(error.__traceback__)
            raise _corrupt(what, image_format, error) from None
        finally:
            image.close()  # frees the full-size image now, not when the object is collected
            del image  # WebP: libwebp's decoder and its canvas buffers go with the object
            if cost > TRIM_ABOVE_BYTES:
                give_back_freed_memory()
        return rgb


def _decoded(image: ImageFile.ImageFile, target: tuple[int, int]) -> Image.Image:
    """``image`` (opened, drafted) decoded, in RGB, reduced and resized to ``target`` and
    oriented upright: a new image, whatever ``image`` was."""
    image.load()
    orientation = image.getexif().get(ExifTags.Base.Orientation)
    rgb = reduced_rgb(image, reduction_factor(image.size, target))
    if rgb.size != target:
        rgb = rgb.resize(target, Image.Resampling.BICUBIC)
    transpose = ORIENTATION.get(orientation) if isinstance(orientation, int) else None
    if transpose is not None:
        rgb = rgb.transpose(transpose)  # on the small image: costs nothing to speak of
    # Never queue the file object itself: it holds the encoded bytes and, for WebP,
    # libwebp's decoder with its canvas buffers.
    return image.copy() if rgb is image else rgb


def _corrupt(what: str, image_format: str | None, error: Exception) -> InvalidArgument:
    return InvalidArgument(
        f"{what}: corrupt or truncated {image_format} image ({error})", reason="CORRUPT_IMAGE"
    )


def fitted_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """``size`` scaled to fit a ``max_side`` square, aspect kept (unchanged if it fits)."""
    width, height = size
    if not max_side or max(width, height) <= max_side:
        return size
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def reduction_factor(size: tuple[int, int], target: tuple[int, int]) -> int:
    """The largest integer factor that keeps the reduced image at least ``target``: the box
    filter of Image.reduce does the bulk of a big downscale, bicubic the last < 2x."""
    return max(1, min(size[0] // target[0], size[1] // target[1]))


def decode_cost(image: ImageFile.ImageFile, data: bytes, target: tuple[int, int]) -> int:
    """Bytes that decoding ``image`` (opened, drafted, not loaded) will allocate at its
    peak, from the header alone: the image Pillow decodes into, what its format's decoder
    allocates besides, the reduced RGB copy and the band temporaries. Never below the peak
    RSS measured for PNG (8 and 16-bit), JPEG (baseline, progressive), WebP, GIF and BMP
    (raw, RLE): 3-15% above it, up to 40% for WebP and RLE BMP."""
    width, height = image.size
    decoded = width * height * PIXEL_BYTES.get(image.mode, 4)
    factor = reduction_factor(image.size, target)
    reduced_w, reduced_h = math.ceil(width / factor), math.ceil(height / factor)
    # reduced_rgb makes a reduced RGB image, unless the image is RGB already and needs no
    # reducing (a drafted JPEG, mostly).
    in_place = image.mode == "RGB" and factor == 1
    reduced = 0 if in_place else reduced_w * reduced_h * RGB_PIXEL_BYTES
    # A band's crop and to_rgb's RGBA copy, white background and alpha channel.
    bands = 0 if image.mode == "RGB" else 4 * band_rows(width, height, factor) * width * 4
    # The bicubic resize to the target goes through an intermediate image (horizontal pass,
    # then vertical); the result and its transposed (or detached) copy are target-sized.
    needs_resize = (reduced_w, reduced_h) != target
    resize = target[0] * reduced_h * RGB_PIXEL_BYTES if needs_resize else 0
    final = 2 * target[0] * target[1] * RGB_PIXEL_BYTES
    return decoded + decoder_extra(image, data) + reduced + bands + resize + final


def decoder_extra(image: ImageFile.ImageFile, data: bytes) -> int:
    """What a format's decoder allocates beside the image it decodes into (measured)."""
    width, height = image.size
    if image.format == "WEBP":
        # Pillow decodes every WebP through libwebp's WebPAnimDecoder, which keeps two
        # canvas-size RGBA buffers (current and previous frame); Pillow then copies the
        # frame into a bytes object before unpacking it. Measured peak of the whole decode:
        # 4.0x the RGBA canvas for lossy, 4.6x for lossless (VP8L decodes into an ARGB
        # buffer of its own). The lossless test is a plain search: a false hit among the
        # compressed bytes only over-estimates.
        canvas = width * height * 4
        return canvas * 15 // 4 if b"VP8L" in data else canvas * 3
    if image.format == "BMP" and image.tile and image.tile[0].codec_name == "bmp_rle":
        # Pillow's RLE4/RLE8 decoder is Python: it grows a bytearray to the whole image (1
        # byte a pixel), then copies it into bytes to unpack; with the bytearray's growth,
        # 3x to 3.7x the image at the peak, measured.
        return 3 * width * height
    if image.format == "JPEG" and _jpeg_buffers_whole_image(image, data):
        return _jpeg_coefficient_bytes(image)
    return 0


def _jpeg_buffers_whole_image(image: ImageFile.ImageFile, data: bytes) -> bool:
    """libjpeg keeps every DCT coefficient of the whole image (at full size: draft's
    scaling does not shrink them) when the file has several scans: every progressive
    JPEG, and a sequential one whose first scan does not hold all components."""
    if image.info.get("progressive"):
        return True
    components = _first_scan_components(data)
    return components is not None and components < len(getattr(image, "layer", ()))


def _first_scan_components(data: bytes) -> int | None:
    """The component count of the first SOS segment, walking the marker segments (an
    embedded EXIF thumbnail has markers of its own, so a plain byte search would lie)."""
    position = 2  # after SOI
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker == 0xD8 or 0xD0 <= marker <= 0xD7 or marker == 0x01:  # no length
            position += 2
            continue
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        if marker == 0xDA:  # SOS: length, then the number of components in the scan
            return data[position + 4] if position + 4 < len(data) else None
        position += 2 + length
    return None


def _jpeg_coefficient_bytes(image: ImageFile.ImageFile) -> int:
    """libjpeg's whole-image coefficient arrays (jdcoefct.c): per component, its blocks
    (rounded up to its sampling factors) x 64 coefficients x 2 bytes, at the full size."""
    width, height = _undrafted_size(image)
    layers = getattr(image, "layer", [])  # (id, h sampling, v sampling, quant table) each
    if not layers:
        return width * height * 2 * 4  # unknown: as if four unsubsampled components
    h_max = max(layer[1] for layer in layers) or 1
    v_max = max(layer[2] for layer in layers) or 1
    total = 0
    for _, h_sampling, v_sampling, _ in layers:
        h_sampling, v_sampling = max(h_sampling, 1), max(v_sampling, 1)
        blocks_w = math.ceil(math.ceil(width * h_sampling / h_max / 8) / h_sampling) * h_sampling
        blocks_h = math.ceil(math.ceil(height * v_sampling / v_max / 8) / v_sampling) * v_sampling
        total += blocks_w * blocks_h * 64 * 2
    return total


def _undrafted_size(image: ImageFile.ImageFile) -> tuple[int, int]:
    # draft() shrinks .size and records its DCT scale as decoderconfig[0].
    scale = image.decoderconfig[0] if image.decoderconfig else 1
    return image.size[0] * scale, image.size[1] * scale


def reduced_rgb(image: Image.Image, factor: int) -> Image.Image:
    """``image`` (loaded) in RGB, reduced by ``factor`` on both axes, without a second
    full-size copy: bands of rows are cropped, converted to RGB and reduced one at a time.
    Converting before reducing is also what composites alpha correctly: averaging pixels
    already on white equals compositing the premultiplied average."""
    if image.mode == "RGB":
        return image.reduce(factor) if factor > 1 else image
    width, height = image.size
    rows = band_rows(width, height, factor)
    result = Image.new("RGB", (math.ceil(width / factor), math.ceil(height / factor)))
    for top in range(0, height, rows):
        band = to_rgb(image.crop((0, top, width, min(height, top + rows))))
        result.paste(band.reduce(factor) if factor > 1 else band, (0, top // factor))
    return result


def band_rows(width: int, height: int, factor: int) -> int:
    """Rows per band: about BAND_BYTES of RGB, a multiple of ``factor`` (so each band
    reduces on its own), no more than the image."""
    return min(height, max(1, BAND_BYTES // (width * RGB_PIXEL_BYTES) // factor) * factor)


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB for every mode: transparency goes onto white, CMYK and grayscale convert."""
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (
        image.mode == "P" and "transparency" in image.info
    )
    if has_alpha:
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
        background = Image.new("RGB", rgba.size, WHITE)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit grayscale (PNG decodes it as I;16, values 0-65535): I;16 -> L clips every
        # value above 255 to white, so scale to 8 bits first: v / 256, the high byte, which
        # is what Pillow's unpackers keep of 16-bit RGB, RGBA and LA PNGs. point() scales
        # only I, I;16 and F images; the other I;16 byte orders convert to I first.
        if image.mode not in ("I", "I;16"):
            image = image.convert("I")
        image = image.point(lambda value: value / 256).convert("L")
    return image if image.mode == "RGB" else image.convert("RGB")


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    trim = getattr(libc, "malloc_trim", None)  # glibc only: musl and macOS have none
    if trim is None:
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_MALLOC_TRIM = _malloc_trim()


def configure_pillow_memory() -> None:
    """Pillow's allocator for images that go back to the OS when freed (called on import:
    the setting is process-wide and this module is the process's Pillow user). Pillow's
    cache of freed blocks is left as it is: off (Image.core.get_blocks_max() == 0) unless
    PILLOW_BLOCKS_MAX asks for one, and a cache would only hold freed memory longer."""
    if "PILLOW_BLOCK_SIZE" not in os.environ and Image.core.get_block_size() < PILLOW_BLOCK_BYTES:
        Image.core.set_block_size(PILLOW_BLOCK_BYTES)


configure_pillow_memory()


def give_back_freed_memory() -> None:
    """Return the pages freed by a large decode to the OS.

    Pillow caches no freed image blocks (see configure_pillow_memory): what holds them is
    glibc. Blocks below 32 MiB, the decoder's and the bands' temporaries come from a malloc
    arena, one per decoding thread (up to 8 per core), and freed memory there stays
    resident unless it is at the top of the heap. Each gRPC thread's arena keeps what its
    last decodes freed, so RSS grows to threads x decode peak whatever the decode semaphore
    says. malloc_trim(0) releases the free pages of every arena (glibc >= 2.8)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
