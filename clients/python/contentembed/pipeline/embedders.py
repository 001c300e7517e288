"""Embedders for the batch pipeline: one interface over a remote EncoderService and the
same backends loaded in-process (``--local``).

``embed_rows`` batches rows by the encoder's ``max_batch_size`` with a few batches in
flight; an input the encoder refuses (INVALID_ARGUMENT) is found by bisecting its batch
and rejected alone with the encoder's message, so one bad image never costs its batch.
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from contentembed.pipeline.catalog import CatalogRow, sized_batches

# One request stays well under the encoders' 16 MiB message limit.
MAX_REQUEST_BYTES = 12 * 1024 * 1024
RETRY_CODES = ("UNAVAILABLE", "RESOURCE_EXHAUSTED")
MAX_ATTEMPTS = 8
BASE_BACKOFF_S = 0.2
MAX_BACKOFF_S = 10.0
EMBED_TIMEOUT_S = 120.0


class EmbedError(RuntimeError):
    """The embedder cannot go on (not an input's fault): the build stops."""


class InputRefused(Exception):
    """The encoder refused the batch for (at least) one of its inputs."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class SpaceInfo:
    space_id: str
    model_id: str
    model_revision: str
    dim: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def same_model(self, other: SpaceInfo | dict[str, Any]) -> bool:
        theirs = other if isinstance(other, dict) else other.to_json()
        return (self.model_id, self.model_revision, self.dim) == (
            theirs.get("model_id"), theirs.get("model_revision"), theirs.get("dim")
        )


class Embedder:
    modality: str  # "text" or "image"
    space: SpaceInfo
    max_batch_size: int
    concurrency: int = 1
    description: str = ""

    def embed_batch(self, inputs: Sequence[str | bytes]) -> np.ndarray:
        """(len(inputs), dim) float32; InputRefused when an input is refused."""
        raise NotImplementedError

    def close(self) -> None:
        pass


# -- remote --------------------------------------------------------------------------
class RemoteEmbedder(Embedder):
    """EncoderService over gRPC; ``x-api-key`` from CONTENTEMBED_API_KEY."""

    def __init__(self, address: str, *, concurrency: int = 4, api_key: str | None = None) -> None:
        import grpc

        from contentembed.encoder.v1 import encoder_service_pb2 as pb
        from contentembed.encoder.v1 import encoder_service_pb2_grpc as pb_grpc

        self._grpc, self._pb = grpc, pb
        self.address = address
        self.concurrency = concurrency
        key = api_key if api_key is not None else os.environ.get("CONTENTEMBED_API_KEY")
        self._metadata = (("x-api-key", key),) if key else ()
        options = [
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ]
        self._channel = grpc.insecure_channel(address, options=options)
        self._stub = pb_grpc.EncoderServiceStub(self._channel)
        try:
            info = self._call(self._stub.GetEncoderInfo, pb.GetEncoderInfoRequest(), 10.0)
        except InputRefused as error:
            raise EmbedError(f"encoder {address}: {error.message}") from None
        modality = {1: "text", 2: "image"}.get(info.modality)
        if modality is None:
            raise EmbedError(f"encoder {address} reports no modality")
        self.modality = modality
        self.space = SpaceInfo(
            info.space.space_id, info.space.model_id, info.space.model_revision, info.space.dim
        )
        self.max_batch_size = max(1, info.max_batch_size)
        self.max_input_bytes = info.max_input_bytes
        self.description = f"{info.backend} encoder at {address}"

    def _call(self, method: Any, request: Any, timeout: float) -> Any:
        from contentembed.rpc_status import call_status, error_reason, is_size_refusal

        grpc = self._grpc
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                return method(request, timeout=timeout, metadata=self._metadata)
            except grpc.RpcError as error:
                code = error.code().name  # type: ignore[attr-defined]
                details = error.details() or code  # type: ignore[attr-defined]
                if code == "INVALID_ARGUMENT" or is_size_refusal(code, error_reason(error), details):
                    # An input's fault, or the batch's size: bisected down to the row it is.
                    raise InputRefused(details) from None
                if code not in RETRY_CODES or attempt == MAX_ATTEMPTS:
                    raise EmbedError(f"encoder {self.address}: {code}: {details}") from None
                delay = min(MAX_BACKOFF_S, BASE_BACKOFF_S * 2 ** (attempt - 1))
                delay = retry_delay(call_status(error)) or delay * (0.5 + random.random())
                time.sleep(delay)
        raise AssertionError("unreachable")

    def embed_batch(self, inputs: Sequence[str | bytes]) -> np.ndarray:
        pb = self._pb
        request = pb.EmbedRequest()
        for item in inputs:
            message = request.inputs.add()
            if isinstance(item, str):
                message.text = item
            else:
                message.image.data = item
        response = self._call(self._stub.Embed, request, EMBED_TIMEOUT_S)
        if response.space_id != self.space.space_id:
            raise EmbedError(
                f"encoder {self.address} now embeds into {response.space_id}, "
                f"the build started with {self.space.space_id}"
            )
        batch = response.vectors
        vectors = np.frombuffer(batch.data, dtype="<f4").reshape(batch.count, batch.dim)
        if vectors.shape != (len(inputs), self.space.dim):
            raise EmbedError(f"encoder {self.address} answered {vectors.shape} for {len(inputs)} inputs")
        return vectors.astype(np.float32)

    def close(self) -> None:
        self._channel.close()


def retry_delay(status: Any) -> float | None:
    """The delay a google.rpc.RetryInfo in ``status`` asks for, if any."""
    if status is None:
        return None
    from google.rpc import error_details_pb2

    for detail in status.details:
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            delay = info.retry_delay.seconds + info.retry_delay.nanos / 1e9
            return min(MAX_BACKOFF_S, max(0.0, delay))
    return None


# -- local ---------------------------------------------------------------------------
@dataclass(frozen=True)
class LocalOptions:
    text_backend: str = "sentence-transformers"
    text_model: str = "all-MiniLM-L6-v2"
    image_backend: str = "pixels"
    image_model: str = "vit_b_16"
    image_weights: str = ""
    device: str = "auto"


def _space(space: Any) -> SpaceInfo:
    return SpaceInfo(space.space_id, space.model_id, space.model_revision, space.dim)


def _refused(error: Exception) -> InputRefused:
    return InputRefused(getattr(error, "message", str(error)))


class LocalTextEmbedder(Embedder):
    modality = "text"

    def __init__(self, options: LocalOptions) -> None:
        from contentembed.services.common.errors import ContentEmbedError
        from contentembed.services.text_encoder.backends import load_backend
        from contentembed.services.text_encoder.service import TextEncoderSettings

        defaults = TextEncoderSettings.model_fields
        self.max_input_bytes = int(defaults["max_input_bytes"].default)
        self.max_batch_size = int(defaults["max_batch_size"].default)
        try:
            self._backend = load_backend(options.text_backend, options.text_model, options.device)
        except ContentEmbedError as error:
            raise EmbedError(error.message) from None
        self.space = _space(self._backend.space)
        self.description = f"local {options.text_backend} ({options.text_model})"

    def embed_batch(self, inputs: Sequence[str | bytes]) -> np.ndarray:
        from contentembed.services.common.errors import ContentEmbedError

        texts = [str(item) for item in inputs]
        for position, text in enumerate(texts):
            if not text.strip():
                raise InputRefused(f"inputs[{position}]: text is empty")
            size = len(text.encode("utf-8"))
            if size > self.max_input_bytes:
                raise InputRefused(
                    f"inputs[{position}]: text is {size} bytes, above the limit of "
                    f"{self.max_input_bytes}"
                )
        try:
            self._backend.check(texts)
        except ContentEmbedError as error:
            raise _refused(error) from None
        return np.asarray(self._backend.encode(texts).vectors, dtype=np.float32)


class LocalImageEmbedder(Embedder):
    modality = "image"

    def __init__(self, options: LocalOptions) -> None:
        from contentembed.services.common.errors import ContentEmbedError
        from contentembed.services.image_encoder.backends import load_backend
        from contentembed.services.image_encoder.service import ImageEncoderSettings

        self._settings = ImageEncoderSettings()
        self.max_batch_size = self._settings.max_batch_size
        try:
            self._backend = load_backend(
                options.image_backend, options.image_model, options.image_weights, options.device
            )
        except ContentEmbedError as error:
            raise EmbedError(error.message) from None
        self.space = _space(self._backend.space)
        self.description = f"local {options.image_backend} ({options.image_model})"

    def embed_batch(self, inputs: Sequence[str | bytes]) -> np.ndarray:
        from contentembed.services.common.errors import ContentEmbedError
        from contentembed.services.image_encoder.decoding import decode_image

        settings = self._settings
        images = []
        for position, data in enumerate(inputs):
            try:
                images.append(
                    decode_image(
                        bytes(data) if not isinstance(data, str) else data.encode(),
                        max_bytes=settings.max_input_bytes,
                        max_pixels=settings.max_pixels,
                        what=f"inputs[{position}]",
                        max_side=settings.max_decoded_side,
                        max_decode_bytes=settings.max_decode_bytes,
                    )
                )
            except ContentEmbedError as error:
                raise _refused(error) from None
        return np.asarray(self._backend.encode(images).vectors, dtype=np.float32)


# -- choosing embedders --------------------------------------------------------------
class SpaceError(ValueError):
    pass


def choose(
    candidates: Sequence[Embedder], modalities: Sequence[str], space_id: str | None
) -> dict[str, Embedder]:
    """One embedder per modality, all of one space (``space_id`` when given)."""
    if space_id:
        candidates = [c for c in candidates if c.space.space_id == space_id]
    by_space: dict[str, dict[str, Embedder]] = {}
    for candidate in candidates:
        by_space.setdefault(candidate.space.space_id, {}).setdefault(candidate.modality, candidate)
    fitting = {s: found for s, found in by_space.items() if all(m in found for m in modalities)}
    wanted = " and ".join(modalities)
    if not fitting:
        seen = ", ".join(f"{c.modality} {c.space.space_id}" for c in candidates) or "none"
        where = f" in space {space_id}" if space_id else ""
        joint = " (one joint space, e.g. CLIP)" if len(modalities) > 1 else ""
        raise SpaceError(f"no encoder for {wanted}{where}{joint}; encoders seen: {seen}")
    if len(fitting) > 1:
        raise SpaceError(
            f"several spaces embed {wanted}: {', '.join(sorted(fitting))}; pick one with --space"
        )
    (chosen,) = fitting.values()
    return {m: chosen[m] for m in modalities}


def local_embedders(options: LocalOptions, modalities: Sequence[str]) -> list[Embedder]:
    found: list[Embedder] = []
    if "text" in modalities:
        found.append(LocalTextEmbedder(options))
    if "image" in modalities:
        found.append(LocalImageEmbedder(options))
    return found


# -- embedding rows ------------------------------------------------------------------
Result = np.ndarray | str  # a vector, or the reason the row was refused


def _bisect(embedder: Embedder, items: list[str | bytes]) -> list[Result]:
    try:
        vectors = embedder.embed_batch(items)
        return list(vectors)
    except InputRefused as error:
        if len(items) == 1:
            return [f"the encoder refused it: {error.message}"]
    middle = len(items) // 2
    return _bisect(embedder, items[:middle]) + _bisect(embedder, items[middle:])


def _batches(embedder: Embedder, rows: list[tuple[int, CatalogRow]]) -> list[list[tuple[int, CatalogRow]]]:
    return sized_batches(rows, lambda pair: pair[1].content_bytes(), embedder.max_batch_size,
                         MAX_REQUEST_BYTES)


def _run_batch(embedder: Embedder, batch: list[tuple[int, CatalogRow]]) -> list[tuple[int, Result]]:
    loaded: list[tuple[int, str | bytes]] = []
    results: list[tuple[int, Result]] = []
    for position, row in batch:
        try:
            loaded.append((position, row.content()))
        except OSError as error:
            results.append((position, f"image file became unreadable ({error.strerror or error})"))
    if loaded:
        embedded = _bisect(embedder, [content for _, content in loaded])
        results += [(position, result) for (position, _), result in zip(loaded, embedded)]
    return results


def embed_rows(
    embedders: dict[str, Embedder],
    rows: Sequence[CatalogRow],
    progress: Callable[[int], None] | None = None,
) -> list[Result]:
    """A vector (or a refusal reason) per row, in row order. Batches are cut the same way
    for the same rows, so the same chunk is embedded the same way every time."""
    results: list[Result | None] = [None] * len(rows)
    for modality, embedder in embedders.items():
        mine = [(p, row) for p, row in enumerate(rows) if row.modality == modality]
        if not mine:
            continue
        batches = _batches(embedder, mine)
        with concurrent.futures.ThreadPoolExecutor(max(1, embedder.concurrency)) as pool:
            for done in pool.map(functools.partial(_run_batch, embedder), batches):
                for position, result in done:
                    results[position] = result
                if progress is not None:
                    progress(len(done))
    missing = [rows[p].line for p, r in enumerate(results) if r is None]
    if missing:
        raise EmbedError(f"no embedder for the rows at lines {missing[:5]}")
    return results  # type: ignore[return-value]
