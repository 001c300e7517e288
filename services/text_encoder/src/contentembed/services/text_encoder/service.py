"""gRPC edge of the text-encoder: validate, convert once, call the backend, convert back."""

from __future__ import annotations

import threading

import grpc
from prometheus_client import CollectorRegistry
from pydantic import Field

from contentembed.common.v1 import types_pb2
from contentembed.encoder.v1 import encoder_service_pb2 as pb
from contentembed.encoder.v1 import encoder_service_pb2_grpc as pb_grpc
from contentembed.services.common.config import ServiceSettings
from contentembed.services.common.errors import InvalidArgument, Unavailable
from contentembed.services.common.protoconv import matrix_to_pb
from contentembed.services.common.server import run_service
from contentembed.services.text_encoder.backends import (
    DEFAULT_TEXT_MODEL,
    SentenceTransformerBackend,
    TextBackend,
)

WARMUP_TEXTS = ["warm-up: the first call pays for lazy initialisation, not a user"]


class TextEncoderSettings(ServiceSettings):
    model: str = Field(
        DEFAULT_TEXT_MODEL,
        description="A sentence-transformers model directory, or all-MiniLM-L6-v2 (bundled).",
    )
    device: str = Field("auto", description="torch device; auto picks cuda when available.")
    max_batch_size: int = Field(64, ge=1, le=4096, description="Most inputs per Embed call.")
    max_input_bytes: int = Field(
        16 * 1024, ge=1, description="Longest accepted text in UTF-8 bytes."
    )
    torch_threads: int = Field(0, ge=0, description="torch intra-op threads; 0 keeps torch's.")


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
        self.settings = settings
        self._backend: TextBackend | None = None
        # One forward pass at a time: concurrent torch calls only fight over the cores.
        self._model_lock = threading.Lock()

    def register(self, server: grpc.Server) -> list[str]:
        pb_grpc.add_EncoderServiceServicer_to_server(self, server)
        return [pb.DESCRIPTOR.services_by_name["EncoderService"].full_name]

    def load(self) -> None:
        if self.settings.torch_threads:
            import torch

            torch.set_num_threads(self.settings.torch_threads)
        backend = SentenceTransformerBackend(self.settings.model, self.settings.device)
        backend.encode(WARMUP_TEXTS)
        self._backend = backend

    def close(self) -> None:
        self._backend = None

    def _ready_backend(self) -> TextBackend:
        backend = self._backend
        if backend is None:
            raise Unavailable("the text model is still loading", reason="MODEL_LOADING")
        return backend

    def Embed(self, request: pb.EmbedRequest, context: grpc.ServicerContext) -> pb.EmbedResponse:
        texts = validate_texts(request, self.settings.max_batch_size, self.settings.max_input_bytes)
        backend = self._ready_backend()
        with self._model_lock:
            embeddings = backend.encode(texts)
        return pb.EmbedResponse(
            vectors=matrix_to_pb(embeddings.vectors),
            space_id=backend.space.space_id,
            truncated=embeddings.truncated,
        )

    def GetEncoderInfo(
        self, request: pb.GetEncoderInfoRequest, context: grpc.ServicerContext
    ) -> pb.GetEncoderInfoResponse:
        backend = self._ready_backend()
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
