"""decode_image against everything bad input can be."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from contentembed.services.common.errors import InvalidArgument
from contentembed.services.image_encoder.decoding import (
    DEFAULT_MAX_DECODE_BYTES,
    MiB,
    decode_cost,
    decode_image,
    fitted_size,
)
from tests.support.images import (
    encoded,
    photo_like,
    png16,
    png_claiming_size,
    stripe_centres,
    striped_png16,
)

JPEG = encoded(photo_like(1), "JPEG")
LIMITS = {"max_bytes": 1_000_000, "max_pixels": 4_000_000, "what": "inputs[3]"}


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


# The shape of the probe that found the defect: a 36-megapixel 16-bit RGBA PNG, under the
# pixel limit and a few hundred KB on the wire, which the old pipeline took ~330 MB to decode.
PROBE = striped_png16(6000, 6000, ((50000, 20000, 0, 65535), (0, 0, 65535, 65535)))
# 16-bit RGBA, 4096 wide: opaque red, opaque azure, transparent (-> white), half-opaque black.
WIDE_COLOURS = ((65535, 0, 0, 65535), (0, 32768, 65535, 65535), (65535, 65535, 65535, 0), (0, 0, 0, 32768))
WIDE = striped_png16(4096, 2500, WIDE_COLOURS)
SERVICE_LIMITS = {"max_bytes": 10_000_000, "max_pixels": 40_000_000, "max_side": 1024}


def test_a_png_that_decodes_too_large_is_refused_from_its_header() -> None:
    assert len(PROBE) < 600_000
    allocated = Image.core.get_stats()["new_count"]
    with pytest.raises(InvalidArgument) as caught:
        decode_image(PROBE, what="inputs[2]", **SERVICE_LIMITS)
    assert caught.value.reason == "IMAGE_DECODE_TOO_LARGE"
    message = caught.value.message
    assert message.startswith("inputs[2]: ") and "6000x6000 PNG" in message
    assert f"above the limit of {DEFAULT_MAX_DECODE_BYTES}" in message
    assert Image.core.get_stats()["new_count"] == allocated  # not one image allocated


def test_the_byte_bound_is_a_setting() -> None:
    limits = {**SERVICE_LIMITS, "what": "x"}
    with pytest.raises(InvalidArgument) as caught:
        decode_image(WIDE, max_decode_bytes=32 * MiB, **limits)
    assert caught.value.reason == "IMAGE_DECODE_TOO_LARGE"
    assert decode_image(PROBE, max_decode_bytes=256 * MiB, **limits).size == (1024, 1024)


def expected_rgb(colour: tuple[int, ...]) -> tuple[int, int, int]:
    """A 16-bit colour (gray, gray + alpha, RGB or RGBA) scaled to 8 bits, onto white."""
    *values, alpha = colour if len(colour) in (2, 4) else (*colour, 65535)
    rgb = values * 3 if len(values) == 1 else values
    return tuple(round((v / 65535 * alpha + 65535 - alpha) / 65535 * 255) for v in rgb)


@pytest.mark.parametrize(
    "colours",
    [
        ((0,), (16448,), (32768,), (65535,)),  # I;16: Pillow keeps 16 bits, we scale
        ((65535, 65535), (32768, 65535), (0, 0), (0, 32768)),  # LA 16-bit: decoded as RGBA
        ((65535, 0, 0), (0, 32768, 65535), (4096, 8192, 16384), (65535, 65535, 65535)),
        WIDE_COLOURS,
    ],
    ids=["I;16", "LA16", "RGB16", "RGBA16"],
)
@pytest.mark.parametrize("width", [4096, 8192])
def test_16_bit_pngs_of_any_width_decode_to_scaled_rgb(colours, width: int) -> None:
    data = striped_png16(width, 600, colours)
    image = decode_image(data, what="x", **SERVICE_LIMITS)
    assert image.mode == "RGB" and image.size == (1024, round(600 * 1024 / width))
    for x, colour in zip(stripe_centres(1024, len(colours)), colours, strict=True):
        got = image.getpixel((x, image.size[1] // 2))
        want = expected_rgb(colour)
        assert all(abs(g - w) <= 2 for g, w in zip(got, want, strict=True)), (colour, got, want)


def test_16_bit_grayscale_scales_instead_of_clipping() -> None:
    values = np.array([[0, 255, 256, 32768, 40000, 65535]], dtype=np.uint16)
    image = decode_image(png16(values), **LIMITS)
    assert [image.getpixel((x, 0))[0] for x in range(6)] == [0, 0, 1, 128, 156, 255]


MEMORY_CHILD = r"""
import json, sys, threading
from concurrent.futures import ThreadPoolExecutor

from contentembed.services.image_encoder.decoding import decode_image
from tests.support.images import encoded, photo_like
from tests.support.memory import status_bytes as status


path, requests, per_request, slots = sys.argv[1], *(int(a) for a in sys.argv[2:5])
with open(path, "rb") as file:
    data = file.read()
limits = {"max_bytes": 10_000_000, "max_pixels": 40_000_000, "max_side": 1024, "what": "x"}
decode_image(encoded(photo_like(1)), **limits)  # the decoders imported and warm
baseline = status("VmRSS")
decodes = threading.BoundedSemaphore(slots)  # as the service's max_concurrent_decodes


def embed(_):
    decoded = []
    for _ in range(per_request):
        with decodes:
            decoded.append(decode_image(data, **limits))
    return decoded  # held until every request is done, as queued images are


with ThreadPoolExecutor(requests) as pool:  # one thread per Embed, as gRPC's handlers
    results = list(pool.map(embed, range(requests)))
sizes = sorted({image.size for decoded in results for image in decoded})
del results
print(json.dumps({"baseline": baseline, "peak": status("VmHWM"), "after": status("VmRSS"),
                  "sizes": sizes}))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")
def test_concurrent_decodes_of_large_16_bit_pngs_stay_bounded_and_memory_goes_back(tmp_path) -> None:
    """8 Embed threads x 2 images of 4096x2500 16-bit RGBA, 4 decodes at a time, in a fresh
    process: the peak RSS stays within 4 decodes' estimated cost plus the decoded results,
    and RSS comes back to its baseline. Measured here: peak +190 MiB and +0 MiB after; the
    old pipeline (two full-size copies, and malloc arenas keeping every thread's last
    decode) peaked at +540-610 MiB and kept +230-250 MiB."""
    path = tmp_path / "wide.png"
    path.write_bytes(WIDE)
    requests, per_request, slots = 8, 2, 4
    with Image.open(path) as header:
        cost = decode_cost(header, WIDE, fitted_size(header.size, 1024))  # ~50 MiB
    results = requests * per_request * 1024 * 625 * 4  # 16 decoded 1024x625 RGB images
    child = subprocess.run(
        [sys.executable, "-c", MEMORY_CHILD, str(path), str(requests), str(per_request), str(slots)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert child.returncode == 0, child.stderr
    measured = json.loads(child.stdout)
    assert measured["sizes"] == [[1024, 625]]
    peak = measured["peak"] - measured["baseline"]
    after = measured["after"] - measured["baseline"]
    assert peak < slots * cost + results + 64 * MiB, f"peak +{peak / MiB:.0f} MiB"  # ~304 MiB
    assert after < 48 * MiB, f"+{after / MiB:.0f} MiB still held after the decodes"


def header_cost(data: bytes, max_side: int = 1024) -> int:
    """decode_cost as decode_image computes it: opened, JPEGs drafted, nothing decoded."""
    with Image.open(io.BytesIO(data)) as image:
        target = fitted_size(image.size, max_side)
        if image.format == "JPEG" and target != image.size:
            image.draft("RGB", target)
        return decode_cost(image, data, target)


def test_jpeg_cost_counts_libjpegs_whole_image_buffers_for_multi_scan_files() -> None:
    baseline = encoded(Image.new("RGB", (1600, 1200), (200, 100, 50)), "JPEG")  # 4:2:0
    progressive = encoded(Image.new("RGB", (1600, 1200), (200, 100, 50)), "JPEG", progressive=True)
    # The baseline file with its first scan declared to hold 1 component of 3: what a
    # sequential JPEG with one scan per component looks like from its header.
    ns = baseline.index(b"\xff\xda") + 4  # SOS marker, length, then Ns
    one_scan_per_component = baseline[:ns] + b"\x01" + baseline[ns + 1 :]
    # Y: 200x150 blocks; Cb, Cr: 100x75 each; 64 coefficients of 2 bytes a block. Full
    # size, though the JPEG decodes at 1/2 (draft): libjpeg keeps the coefficients unscaled.
    coefficients = (200 * 150 + 2 * 100 * 75) * 64 * 2
    assert header_cost(progressive, 512) - header_cost(baseline, 512) == coefficients
    assert header_cost(one_scan_per_component, 512) - header_cost(baseline, 512) == coefficients


ESTIMATE_CHILD = r"""
import json, sys
from contentembed.services.image_encoder.decoding import decode_image
from tests.support.images import encoded, photo_like
from tests.support.memory import status_bytes as status


limits = {"max_bytes": 10**8, "max_pixels": 10**8, "max_side": 1024, "what": "x"}
decode_image(encoded(photo_like(1)), **limits)
peaks = []
for path in sys.argv[1:]:
    with open(path, "rb") as file:
        data = file.read()
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # resets VmHWM to the current RSS (Linux 4.0+)
    baseline = status("VmRSS")
    decode_image(data, max_decode_bytes=1 << 40, **limits)
    peaks.append(status("VmHWM") - baseline)
print(json.dumps(peaks))
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="resets VmHWM in /proc")
def test_the_header_estimate_bounds_the_measured_decoding_peak(tmp_path) -> None:
    """decode_cost against the peak RSS of decoding, in a fresh process, for the formats
    whose decoders allocate beyond the image: Pillow's RGBA for a 16-bit PNG, libjpeg's
    coefficients for a progressive JPEG, libwebp's canvases (lossy and lossless)."""
    flat = Image.new("RGB", (3000, 2000), (10, 200, 30))
    images = {
        "png16-rgba": WIDE,
        "progressive-444": encoded(flat, "JPEG", progressive=True, subsampling=0),
        "webp-lossy": encoded(flat, "WEBP", quality=80),
        "webp-lossless": encoded(flat, "WEBP", lossless=True, quality=0, method=0),
    }
    paths = []
    for name, data in images.items():
        paths.append(tmp_path / name)
        paths[-1].write_bytes(data)
    child = subprocess.run(
        [sys.executable, "-c", ESTIMATE_CHILD, *map(str, paths)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert child.returncode == 0, child.stderr
    for (name, data), peak in zip(images.items(), json.loads(child.stdout), strict=True):
        cost = header_cost(data)
        assert peak <= cost + 4 * MiB, f"{name}: measured +{peak / MiB:.0f} MiB, estimated {cost / MiB:.0f}"
        assert cost <= 1.5 * peak + 16 * MiB, f"{name}: estimate {cost / MiB:.0f} MiB, measured +{peak / MiB:.0f}"
