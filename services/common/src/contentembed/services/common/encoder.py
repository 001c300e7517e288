"""The EncoderService edge shared by the text- and image-encoders.

A concrete encoder supplies three things: how to load its backend, how to turn one
``EmbedInput`` into the backend's input (validating it), and warm-up inputs. Validation
of the batch, the dynamic batcher, deadlines, the response and ``GetEncoderInfo`` are here.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable
from typing import Generic, Literal, TypeVar

import grpc
import numpy as np
from opentelemetry.trace import Tracer
from prometheus_client import CollectorRegistry, Counter, Histogram
from pydantic import Field

from contentembed.common.v1 import types_pb2
from contentembed.encoder.v1 import encoder_service_pb2 as pb
from contentembed.encoder.v1 import encoder_service_pb2_grpc as pb_grpc
from contentembed.services.common.auth import SEARCH_ROLE
from contentembed.services.common.batching import BatcherMetrics, DynamicBatcher
from contentembed.services.common.config import ServiceSettings
from contentembed.services.common.errors import DeadlineExceeded, InvalidArgument
from contentembed.services.common.interceptor import caller_time_remaining
from contentembed.services.common.metrics import LATENCY_BUCKETS
from contentembed.services.common.model_worker import WorkerBackend
from contentembed.services.common.models import EmbeddingBackend
from contentembed.services.common.protoconv import matrix_to_pb
from contentembed.services.common.tracing import Tracing

InputT = TypeVar("InputT")
Embedded = tuple[np.ndarray, bool]


class EncoderSettings(ServiceSettings):
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
    torch_threads: int = Field(0, ge=0, description="torch intra-op threads; 0 keeps torch's.")
    model_worker: Literal["thread", "process"] = Field(
        "thread",
        description="Where the model runs: thread (a thread of the RPC process) or process "
        "(a child process, off the RPC handlers' GIL; a model that crashes or hangs costs "
        "one batch, not the encoder). Throughput measured the same on CPU and on an H100 "
        "(docs/benchmarks.md).",
    )
    # Each Embed call holds a gRPC thread while it waits for its batch, so the thread
    # count bounds how many callers can share one batch.
    max_workers: int = Field(128, ge=1, le=4096, description="gRPC handler threads.")


class EncoderService(pb_grpc.EncoderServiceServicer, Generic[InputT]):
    name: str
    modality: int  # types_pb2.Modality

    def __init__(self, settings: EncoderSettings, registry: CollectorRegistry) -> None:
        if settings.max_queue_items < settings.max_batch_size:
            raise ValueError("max_queue_items must be at least max_batch_size")
        self.settings = settings
        self.backend: EmbeddingBackend[InputT] | None = None
        self.batcher: DynamicBatcher[InputT, Embedded] | None = None
        self._batcher_metrics = BatcherMetrics(registry, self.name)
        self._worker_restarts = Counter(
            "contentembed_model_worker_restarts",
            "Model worker processes started again after one died or hung.", ["service"],
            registry=registry,
        ).labels(self.name)
        self._worker_compute = Histogram(
            "contentembed_model_worker_compute_seconds",
            "Model time per batch inside the worker process (the batch compute time minus "
            "this is the process boundary's cost).", ["service"], registry=registry,
            buckets=LATENCY_BUCKETS,
        ).labels(self.name)
        self._tracer: Tracer | None = None  # the batcher's spans: only with tracing on
        self._worker: WorkerBackend[InputT] | None = None

    def use_tracing(self, tracing: Tracing) -> None:
        """The runtime's tracer, for the batcher's spans (set before ``load``)."""
        self._tracer = tracing.tracer if tracing.enabled else None

    # -- what a concrete encoder supplies --------------------------------------------
    def backend_factory(self) -> Callable[[], EmbeddingBackend[InputT]]:
        """Builds the configured backend. Picklable (a ``functools.partial`` of a
        module-level loader): with ``model_worker=process`` it runs in the child."""
        raise NotImplementedError

    def decode_input(self, position: int, item: pb.EmbedInput) -> InputT:
        """Validates and converts inputs[position]; InvalidArgument names the position."""
        raise NotImplementedError

    def warmup_inputs(self) -> list[InputT]:
        raise NotImplementedError

    @property
    def max_input_bytes(self) -> int:
        raise NotImplementedError

    # -- lifecycle -------------------------------------------------------------------
    def register(self, server: grpc.Server) -> list[str]:
        pb_grpc.add_EncoderServiceServicer_to_server(self, server)
        return [pb.DESCRIPTOR.services_by_name["EncoderService"].full_name]

    def load(self) -> None:
        # With model_worker=process the child sets its own threads; this process
        # then never needs torch.
        if self.settings.torch_threads and self.settings.model_worker == "thread":
            import torch

            torch.set_num_threads(self.settings.torch_threads)
        backend = self.load_backend()
        if isinstance(backend, WorkerBackend):
            self._worker = backend  # closed with the service even if warm-up fails
        warmup = self.warmup_inputs()
        backend.encode(warmup[:1])
        backend.encode((warmup * self.settings.max_batch_size)[: self.settings.max_batch_size])
        self.batcher = DynamicBatcher(
            lambda inputs: self._encode(backend, inputs),
            max_batch_size=self.settings.max_batch_size,
            max_queue_delay_s=self.settings.max_queue_delay_ms / 1000.0,
            max_queue_items=self.settings.max_queue_items,
            metrics=self._batcher_metrics,
            name=self.name,
            tracer=self._tracer,
        )
        self.backend = backend

    def load_backend(self) -> EmbeddingBackend[InputT]:
        factory = self.backend_factory()
        if self.settings.model_worker == "thread":
            return factory()
        return WorkerBackend(
            factory, torch_threads=self.settings.torch_threads,
            on_restart=self._worker_restarts.inc, on_encoded=self._worker_compute.observe,
        )

    @staticmethod
    def _encode(backend: EmbeddingBackend[InputT], inputs: list[InputT]) -> list[Embedded]:
        embeddings = backend.encode(inputs)
        return list(zip(embeddings.vectors, embeddings.truncated))

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
        if self._worker is not None:
            self._worker.close()

    def required_role(self, method: str) -> str | None:
        """Embedding is a read: any search key (the gateway's downstream key) may call."""
        return SEARCH_ROLE

    def _loaded(self) -> tuple[EmbeddingBackend[InputT], DynamicBatcher[InputT, Embedded]]:
        # The runtime answers NOT_READY until load() returned, so both are set here.
        assert self.backend is not None and self.batcher is not None
        return self.backend, self.batcher

    # -- RPCs ------------------------------------------------------------------------
    def Embed(self, request: pb.EmbedRequest, context: grpc.ServicerContext) -> pb.EmbedResponse:
        inputs = request.inputs
        if not inputs:
            raise InvalidArgument("inputs: at least one input is required", reason="EMPTY_BATCH")
        if len(inputs) > self.settings.max_batch_size:
            raise InvalidArgument(
                f"inputs: {len(inputs)} inputs exceed the maximum batch size "
                f"{self.settings.max_batch_size}",
                reason="BATCH_TOO_LARGE",
            )
        decoded = [self.decode_input(position, item) for position, item in enumerate(inputs)]
        backend, batcher = self._loaded()
        backend.check(decoded)
        remaining = caller_time_remaining(context)
        deadline = None if remaining is None else time.monotonic() + remaining
        future = batcher.submit(decoded, deadline, context.is_active)
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
        backend, _ = self._loaded()
        space = backend.space
        return pb.GetEncoderInfoResponse(
            modality=self.modality,
            space=types_pb2.Space(
                space_id=space.space_id,
                model_id=space.model_id,
                model_revision=space.model_revision,
                dim=space.dim,
                normalization=types_pb2.NORMALIZATION_L2,
            ),
            backend=backend.name,
            max_batch_size=self.settings.max_batch_size,
            max_input_bytes=self.max_input_bytes,
            max_input_tokens=backend.max_input_tokens,
        )


def wrong_modality(position: int, item: pb.EmbedInput, expected: str) -> InvalidArgument:
    return InvalidArgument(
        f"inputs[{position}]: this encoder embeds {expected}; got "
        f"{item.WhichOneof('content') or 'nothing'}",
        reason="WRONG_MODALITY",
    )
