"""gRPC edge of the text-encoder: validate, queue for the dynamic batcher, convert back."""

from __future__ import annotations

import concurrent.futures
import time
from typing import Literal

import grpc
import numpy as np
from prometheus_client import CollectorRegistry
from pydantic import Field

from contentembed.common.v1 import types_pb2
from contentembed.encoder.v1 import encoder_service_pb2 as pb
from contentembed.encoder.v1 import encoder_service_pb2_grpc as pb_grpc
from contentembed.services.common.batching import BatcherMetrics, DynamicBatcher
from contentembed.services.common.config import ServiceSettings
from contentembed.services.common.downstream import caller_time_remaining
from contentembed.services.common.errors import DeadlineExceeded, InvalidArgument, Unavailable
from contentembed.services.common.protoconv import matrix_to_pb
from contentembed.services.common.server import run_service
from contentembed.services.text_encoder.backends import (
    DEFAULT_TEXT_MODEL,
    TextBackend,
    load_backend,
)

WARMUP_TEXT = "warm-up: the first call pays for lazy initialisation, not a user"
EmbeddedText = tuple[np.ndarray, bool]


class TextEncoderSettings(ServiceSettings):
    backend: Literal["sentence-transformers", "clip", "tfidf"] = Field(
        "sentence-transformers", description="Which model family --model is."
    )
    model: str = Field(
        DEFAULT_TEXT_MODEL,
        description="sentence-transformers: a model directory or all-MiniLM-L6-v2 (bundled); "
        "clip: a transformers CLIP directory; tfidf: a file from the tfidf module.",
    )
    device: str = Field("auto", description="torch device; auto picks cuda when available.")
    max_batch_size: int = Field(
        64, ge=1, le=4096, description="Most inputs per Embed call and per model call."
    )
    max_queue_delay_ms: float = Field(
        5.0, ge=0, description="How long the oldest queued request waits for company."
    )
    max_queue_items: int = Field(
        1024, ge=1, description="Inputs allowed to wait; beyond, RESOURCE_EXHAUSTED."
    )
    max_input_bytes: int = Field(16 * 1024, ge=1, description="Longest text in UTF-8 bytes.")
    torch_threads: int = Field(0, ge=0, description="torch intra-op threads; 0 keeps torch's.")
    # Each Embed call holds a gRPC thread while it waits for its batch, so the thread
    # count bounds how many callers can share one batch.
    max_workers: int = Field(128, ge=1, le=4096, description="gRPC handler threads.")


def validate_texts(request: pb.EmbedRequest, max_batch_size: int, max_input_bytes: int) -> list[str]:
    inputs = request.inputs
    if not inputs:
        raise InvalidArgument("inputs: at least one input is required", reason="EMPTY_BATCH")
    if len(inputs) > max_batch_size:
        raise InvalidArgument(
            f"inputs: {len(inputs)} inputs exceed the maximum batch size {max_batch_size}",
            reason="BATCH_TOO_LARGE",
        )
    texts = []
    for position, item in enumerate(inputs):
        if item.WhichOneof("content") != "text":
            raise InvalidArgument(
                f"inputs[{position}]: this encoder embeds text; got "
                f"{item.WhichOneof('content') or 'nothing'}",
                reason="WRONG_MODALITY",
            )
        if not item.text.strip():
            raise InvalidArgument(f"inputs[{position}]: text is empty", reason="EMPTY_TEXT")
        size = len(item.text.encode("utf-8"))
        if size > max_input_bytes:
            raise InvalidArgument(
                f"inputs[{position}]: text is {size} bytes, above the limit of {max_input_bytes}",
                reason="TEXT_TOO_LONG",
            )
        texts.append(item.text)
    return texts


class TextEncoderService(pb_grpc.EncoderServiceServicer):
    name = "text-encoder"

    def __init__(self, settings: TextEncoderSettings, registry: CollectorRegistry) -> None:
        if settings.max_queue_items < settings.max_batch_size:
            raise ValueError("max_queue_items must be at least max_batch_size")
        self.settings = settings
        self.backend: TextBackend | None = None
        self.batcher: DynamicBatcher[str, EmbeddedText] | None = None
        self._batcher_metrics = BatcherMetrics(registry, self.name)

    def register(self, server: grpc.Server) -> list[str]:
        pb_grpc.add_EncoderServiceServicer_to_server(self, server)
        return [pb.DESCRIPTOR.services_by_name["EncoderService"].full_name]

    def load(self) -> None:
        if self.settings.torch_threads:
            import torch

            torch.set_num_threads(self.settings.torch_threads)
        backend = load_backend(self.settings.backend, self.settings.model, self.settings.device)
        backend.encode([WARMUP_TEXT])
        backend.encode([WARMUP_TEXT] * self.settings.max_batch_size)
        self.batcher = DynamicBatcher(
            lambda texts: self._encode(backend, texts),
            max_batch_size=self.settings.max_batch_size,
            max_queue_delay_s=self.settings.max_queue_delay_ms / 1000.0,
            max_queue_items=self.settings.max_queue_items,
            metrics=self._batcher_metrics,
            name=self.name,
        )
        self.backend = backend

    @staticmethod
    def _encode(backend: TextBackend, texts: list[str]) -> list[EmbeddedText]:
        embeddings = backend.encode(texts)
        return list(zip(embeddings.vectors, embeddings.truncated))

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()

    def _ready(self) -> tuple[TextBackend, DynamicBatcher[str, EmbeddedText]]:
        if self.backend is None or self.batcher is None:
            raise Unavailable("the text model is still loading", reason="MODEL_LOADING")
        return self.backend, self.batcher

    def Embed(self, request: pb.EmbedRequest, context: grpc.ServicerContext) -> pb.EmbedResponse:
        texts = validate_texts(request, self.settings.max_batch_size, self.settings.max_input_bytes)
        backend, batcher = self._ready()
        backend.check(texts)
        remaining = caller_time_remaining(context)
        deadline = None if remaining is None else time.monotonic() + remaining
        future = batcher.submit(texts, deadline, context.is_active)
        try:
            results = future.result(timeout=remaining)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise DeadlineExceeded("deadline passed before the batch ran") from None
        return pb.EmbedResponse(
            vectors=matrix_to_pb(np.stack([vector for vector, _ in results])),
            space_id=backend.space.space_id,
            truncated=[truncated for _, truncated in results],
        )

    def GetEncoderInfo(
        self, request: pb.GetEncoderInfoRequest, context: grpc.ServicerContext
    ) -> pb.GetEncoderInfoResponse:
        backend, _ = self._ready()
        space = backend.space
        return pb.GetEncoderInfoResponse(
            modality=types_pb2.MODALITY_TEXT,
            space=types_pb2.Space(
                space_id=space.space_id,
                model_id=space.model_id,
                model_revision=space.model_revision,
                dim=space.dim,
                normalization=types_pb2.NORMALIZATION_L2,
            ),
            backend=backend.name,
            max_batch_size=self.settings.max_batch_size,
            max_input_bytes=self.settings.max_input_bytes,
            max_input_tokens=backend.max_input_tokens,
        )


def main(argv: list[str] | None = None) -> int:
    return run_service(TextEncoderSettings, TextEncoderService, argv)
