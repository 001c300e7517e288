"""The text-encoder: the shared EncoderService edge with text inputs."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Literal

from pydantic import Field

from contentembed.common.v1 import types_pb2
from contentembed.encoder.v1 import encoder_service_pb2 as pb
from contentembed.services.common.encoder import EncoderService, EncoderSettings, wrong_modality
from contentembed.services.common.errors import InvalidArgument
from contentembed.services.common.models import EmbeddingBackend
from contentembed.services.common.server import run_service
from contentembed.services.text_encoder.backends import DEFAULT_TEXT_MODEL, load_backend

WARMUP_TEXT = "warm-up: the first call pays for lazy initialisation, not a user"


class TextEncoderSettings(EncoderSettings):
    backend: Literal["sentence-transformers", "clip", "tfidf"] = Field(
        "sentence-transformers", description="Which model family --model is."
    )
    model: str = Field(
        DEFAULT_TEXT_MODEL,
        description="sentence-transformers: a model directory or all-MiniLM-L6-v2 (bundled); "
        "clip: a transformers CLIP directory; tfidf: a file from the tfidf module.",
    )
    max_input_bytes: int = Field(16 * 1024, ge=1, description="Longest text in UTF-8 bytes.")


class TextEncoderService(EncoderService[str]):
    name = "text-encoder"
    modality = types_pb2.MODALITY_TEXT
    settings: TextEncoderSettings

    @property
    def max_input_bytes(self) -> int:
        return self.settings.max_input_bytes

    def backend_factory(self) -> Callable[[], EmbeddingBackend[str]]:
        return functools.partial(
            load_backend, self.settings.backend, self.settings.model, self.settings.device
        )

    def warmup_inputs(self) -> list[str]:
        return [WARMUP_TEXT]

    def decode_input(self, position: int, item: pb.EmbedInput) -> str:
        if item.WhichOneof("content") != "text":
            raise wrong_modality(position, item, "text")
        if not item.text.strip():
            raise InvalidArgument(f"inputs[{position}]: text is empty", reason="EMPTY_TEXT")
        size = len(item.text.encode("utf-8"))
        if size > self.settings.max_input_bytes:
            raise InvalidArgument(
                f"inputs[{position}]: text is {size} bytes, above the limit of "
                f"{self.settings.max_input_bytes}",
                reason="TEXT_TOO_LONG",
            )
        return item.text


def main(argv: list[str] | None = None) -> int:
    return run_service(TextEncoderSettings, TextEncoderService, argv)
