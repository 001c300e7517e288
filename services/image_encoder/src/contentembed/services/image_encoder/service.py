"""The image-encoder: the shared EncoderService edge with image inputs."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Literal

from PIL import Image
from prometheus_client import CollectorRegistry
from pydantic import Field

from contentembed.common.v1 import types_pb2
from contentembed.encoder.v1 import encoder_service_pb2 as pb
from contentembed.services.common.encoder import EncoderService, EncoderSettings, wrong_modality
from contentembed.services.common.models import EmbeddingBackend
from contentembed.services.common.server import run_service
from contentembed.services.image_encoder.backends import load_backend
from contentembed.services.image_encoder.decoding import DEFAULT_MAX_DECODE_BYTES, decode_image


class ImageEncoderSettings(EncoderSettings):
    backend: Literal["pixels", "torchvision", "clip"] = Field(
        "pixels", description="pixels needs no weights; torchvision and clip need local files."
    )
    model: str = Field(
        "vit_b_16",
        description="torchvision: the architecture (vit_b_16, resnet50, ...); "
        "clip: a transformers CLIP directory; pixels: ignored.",
    )
    weights: str = Field("", description="torchvision: a local state-dict file (.pth).")
    max_input_bytes: int = Field(
        10 * 1024 * 1024, ge=1, description="Largest encoded image accepted, in bytes."
    )
    max_pixels: int = Field(
        40_000_000, ge=1, description="Largest width x height decoded; bigger is refused unread."
    )
    max_batch_size: int = Field(32, ge=1, le=1024, description="Most images per Embed call.")
    max_decoded_side: int = Field(
        1024,
        ge=32,
        description="Decoded images are scaled to fit this many pixels per side (models "
        "look at 224-336), bounding the memory every queued image holds.",
    )
    max_decode_bytes: int = Field(
        DEFAULT_MAX_DECODE_BYTES,
        ge=1,
        description="Most memory one image's decoding may take (bytes), computed from its "
        "header before any pixel is decoded; above it: INVALID_ARGUMENT "
        "IMAGE_DECODE_TOO_LARGE. 128 MiB admits a 24-megapixel 8-bit RGB(A) PNG (~108 MiB: "
        "Pillow keeps RGB as 4 bytes a pixel) or JPEG (15 MiB baseline, 84 MiB progressive) "
        "and refuses a 36-megapixel RGBA PNG (~160 MiB); times max_concurrent_decodes it "
        "bounds decoding memory. Raise it with max_decoded_side.",
    )
    max_concurrent_decodes: int = Field(
        4, ge=1, description="Images decoded at once: full-size decoding is the memory peak."
    )
    max_queue_items: int = Field(256, ge=1, description="Images allowed to wait for the model.")


class ImageEncoderService(EncoderService[Image.Image]):
    name = "image-encoder"
    modality = types_pb2.MODALITY_IMAGE
    settings: ImageEncoderSettings

    def __init__(self, settings: ImageEncoderSettings, registry: CollectorRegistry) -> None:
        super().__init__(settings, registry)
        self._decodes = threading.BoundedSemaphore(settings.max_concurrent_decodes)

    @property
    def max_input_bytes(self) -> int:
        return self.settings.max_input_bytes

    def backend_factory(self) -> Callable[[], EmbeddingBackend[Image.Image]]:
        settings = self.settings
        return functools.partial(
            load_backend, settings.backend, settings.model, settings.weights, settings.device
        )

    def warmup_inputs(self) -> list[Image.Image]:
        return [Image.new("RGB", (256, 256), (128, 96, 64))]

    def decode_input(self, position: int, item: pb.EmbedInput) -> Image.Image:
        if item.WhichOneof("content") != "image":
            raise wrong_modality(position, item, "images")
        with self._decodes:
            return decode_image(
                item.image.data,
                max_bytes=self.settings.max_input_bytes,
                max_pixels=self.settings.max_pixels,
                what=f"inputs[{position}]",
                max_side=self.settings.max_decoded_side,
                max_decode_bytes=self.settings.max_decode_bytes,
            )


def main(argv: list[str] | None = None) -> int:
    return run_service(ImageEncoderSettings, ImageEncoderService, argv)
