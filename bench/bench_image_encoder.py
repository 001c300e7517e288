"""Image-encoder service vs the raw model, measured in the same run.

    .venv/bin/python bench/bench_image_encoder.py [--seconds 6] [--device auto] [--weights vit_b_16.pth]

For the pixels backend and torchvision vit_b_16 (random weights written to a temp file
unless --weights names real ones; the speed is the same): images/s through the service
with 1 image per call, 16 concurrent single-image callers and 16 images per call, against
the raw backend on already-decoded images in this process, batch 1 and 16. Decoding
(JPEG 640x480 -> RGB, with the service's checks) is timed on its own.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from harness import embed_rate, loop_rate, measured_phase, running_encoder

from contentembed.common.v1 import types_pb2
from contentembed.encoder.v1 import encoder_service_pb2 as pb
from contentembed.services.image_encoder.backends import PixelsBackend, TorchvisionBackend
from contentembed.services.image_encoder.decoding import decode_image


def sample_jpegs(count: int = 16) -> list[bytes]:
    import io

    import numpy as np
    from PIL import Image

    images = []
    for seed in range(count):
        rng = np.random.default_rng(seed)
        y, x = np.mgrid[0:480, 0:640] / 640
        channels = [np.sin(2 * np.pi * (rng.uniform(1, 4) * x + rng.uniform(1, 4) * y)) for _ in range(3)]
        pixels = np.clip(np.stack(channels, -1) * 0.4 + 0.5 + 0.03 * rng.normal(size=(480, 640, 3)), 0, 1)
        buffer = io.BytesIO()
        Image.fromarray((pixels * 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
        images.append(buffer.getvalue())
    return images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--weights", default="", help="vit_b_16 state dict; default: random")
    args = parser.parse_args()

    import torch
    import torchvision

    from contentembed.services.common.models import pick_device

    device = pick_device(args.device)
    jpegs = sample_jpegs()
    inputs = [pb.EmbedInput(image=types_pb2.Image(data=d, mime_type="image/jpeg")) for d in jpegs]
    decoded = [decode_image(d, max_bytes=10 << 20, max_pixels=40_000_000, what="bench") for d in jpegs]
    decode_rate = loop_rate(
        lambda: len([decode_image(d, max_bytes=10 << 20, max_pixels=40_000_000, what="b") for d in jpegs]),
        args.seconds / 2,
    )

    with tempfile.TemporaryDirectory() as scratch:
        weights = args.weights
        if not weights:
            weights = str(Path(scratch) / "vit_b_16.pth")
            torch.save(torchvision.models.vit_b_16(weights=None).state_dict(), weights)
        configs = {
            "pixels": ["--backend", "pixels"],
            "vit_b_16": ["--backend", "torchvision", "--model", "vit_b_16", "--weights", weights],
        }
        print(f"device: {device}; {os.cpu_count()} cpus; decode JPEG 640x480: {decode_rate:.1f} images/s")
        print(f"{'path':<50}{'images/s':>10}   model calls in the service")
        for name, backend_args in configs.items():
            service_args = [*backend_args, "--device", device, "--max-batch-size", "16"]
            rows = []
            with running_encoder("image-encoder", "contentembed.services.image_encoder", service_args) as svc:
                for label, callers, per_call in [
                    ("1 caller x 1 image", 1, 1),
                    ("16 concurrent callers x 1 image", 16, 1),
                    ("1 caller x 16 images", 1, 16),
                ]:
                    rate, shape = measured_phase(
                        svc, embed_rate, svc.address, inputs, callers, per_call, args.seconds
                    )
                    rows.append((f"{name} service, {label}", rate, shape))
            backend = PixelsBackend() if name == "pixels" else TorchvisionBackend("vit_b_16", weights, device)
            raw = {
                b: loop_rate(lambda b=b, m=backend: len(m.encode(decoded[:b]).vectors), args.seconds)
                for b in (1, 16)
            }
            # What the service has to do per image: decode, then the model.
            decode_and_encode = 1 / (1 / decode_rate + 1 / raw[16])
            for batch, rate in raw.items():
                print(f"{name + ' raw, batch ' + str(batch) + ' (decoded)':<50}{rate:>10.1f}")
            print(f"{name + ' raw decode + batch 16':<50}{decode_and_encode:>10.1f}")
            for label, rate, shape in rows:
                print(f"{label:<50}{rate:>10.1f}   {shape}")
            by_label = {label: rate for label, rate, _ in rows}
            for label in ("1 caller x 16 images", "16 concurrent callers x 1 image"):
                rate = by_label[f"{name} service, {label}"]
                print(f"{name}: service {label} / raw batch 16 {rate / raw[16]:.2f}, "
                      f"/ raw decode + batch 16 {rate / decode_and_encode:.2f}")


if __name__ == "__main__":
    main()
