"""Writing documents: validate, embed into every space the collection's versions are in,
scatter to the shards. Pure: no grpc.

Every version of a collection — serving, candidate, previous, pending — receives every
write, embedded in its own space (``versions.WritePlan``), so promoting, rolling back or
installing a bundle never drops an acknowledged write.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from opentelemetry import trace
from opentelemetry.trace import Tracer

from contentembed.services.common.errors import (
    ContentEmbedError,
    FailedPrecondition,
    InvalidArgument,
    Unavailable,
)
from contentembed.services.common.metadata import MetadataLimits, check_metadata
from contentembed.services.common.sharding import shard_for_id
from contentembed.services.common.validation import shown, validate_collection_name, validate_ids
from contentembed.services.gateway.ports import IMAGE, TEXT, ShardPort, outcomes_of, wait_all
from contentembed.services.gateway.routing import EncoderRouter
from contentembed.services.gateway.versions import VERSIONS_CHANGED, WRITE_PLAN_TTL_S, WritePlan

WRITE_ATTEMPTS = 3  # plans a write may be re-made with when versions change under it


@dataclass(frozen=True)
class Document:
    """A catalog entry: text (str) or an encoded image (bytes)."""

    id: str
    content: str | bytes
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def modality(self) -> str:
        return TEXT if isinstance(self.content, str) else IMAGE

    @property
    def text(self) -> str:
        """What the shards keep as the item's text: "" for an image."""
        return self.content if isinstance(self.content, str) else ""


class WritePlans:
    """The write plan of each collection, reused for ``WRITE_PLAN_TTL_S``; forgotten when
    this gateway opens or drops a version (another gateway's change shows as a shard
    refusing the write with VERSIONS_CHANGED)."""

    def __init__(self, shards: Sequence[ShardPort]) -> None:
        self._shards = list(shards)
        self._plans: dict[str, tuple[WritePlan, float]] = {}
        self._lock = threading.Lock()

    def plan(self, collection: str, deadline: float, fresh: bool = False) -> WritePlan:
        with self._lock:
            cached = self._plans.get(collection)
        if cached is not None and not fresh and cached[1] > time.monotonic():
            return cached[0]
        plan = WritePlan.of(
            wait_all([s.get_collection(collection, deadline) for s in self._shards])
        )
        with self._lock:
            self._plans[collection] = (plan, time.monotonic() + WRITE_PLAN_TTL_S)
        return plan

    def forget(self, collection: str) -> None:
        with self._lock:
            self._plans.pop(collection, None)


class Ingest:
    def __init__(
        self,
        router: EncoderRouter,
        shards: Sequence[ShardPort],
        write_plans: WritePlans,
        max_documents_per_upsert: int,
        metadata_limits: MetadataLimits,
    ) -> None:
        self.router = router
        self.shards = list(shards)
        self.write_plans = write_plans
        self.max_documents_per_upsert = max_documents_per_upsert
        self.metadata_limits = metadata_limits
        # The runtime's (Gateway.use_tracer); spans of the stages of a write.
        self.tracer: Tracer = trace.NoOpTracer()

    def upsert_documents(
        self, collection: str, documents: Sequence[Document], deadline: float
    ) -> tuple[int, list[str]]:
        """Embeds and writes every document into every version of the collection (each in
        its own space); returns (count, ids whose text the serving model truncated).

        Acknowledged only when every shard acknowledged every space. A failure may leave
        some written: upserts are idempotent, so the caller retries the request. A version
        opened or dropped meanwhile makes a shard refuse the write (VERSIONS_CHANGED): the
        plan is made again and the write resent, so the new version misses nothing.
        """
        self.validate(collection, documents)
        embedded: dict[str, tuple[np.ndarray, list[bool]]] = {}
        for attempt in range(WRITE_ATTEMPTS):
            plan = self.write_plans.plan(collection, deadline, fresh=attempt > 0)
            if plan.lexical_only:
                # Nothing to embed: each item is its text, sent with an empty vector.
                self.check_lexical_only(collection, documents)
                embedded[plan.serving_space] = (
                    np.empty((len(documents), 0), dtype=np.float32), [False] * len(documents)
                )
            for space in plan.spaces():
                if space not in embedded:
                    with self.tracer.start_as_current_span(
                        "gateway.embed_documents",
                        attributes={"contentembed.space_id": space,
                                    "contentembed.documents": len(documents)},
                    ):
                        embedded[space] = self.embed_into_space(plan, space, documents, deadline)
            try:
                # The fan-out of the writes: one CLIENT span per shard and space under it.
                with self.tracer.start_as_current_span(
                    "gateway.write_shards", attributes={"contentembed.attempt": attempt}
                ):
                    written = self.scatter(collection, plan, documents, embedded, deadline)
            except ContentEmbedError as error:
                if error.reason != VERSIONS_CHANGED:
                    raise
                self.write_plans.forget(collection)
                continue
            truncated = embedded[plan.serving_space][1]
            return written, [d.id for d, cut in zip(documents, truncated) if cut]
        raise Unavailable(
            f"the versions of {shown(collection)} kept changing during the write; retry",
            reason=VERSIONS_CHANGED,
            retry_after_s=1.0,
        )

    def validate(self, collection: str, documents: Sequence[Document]) -> None:
        """Refuses a bad request before anything is embedded (the shards check too)."""
        validate_collection_name(collection)
        if not documents:
            raise InvalidArgument("documents: at least one document is required", reason="EMPTY_BATCH")
        if len(documents) > self.max_documents_per_upsert:
            raise InvalidArgument(
                f"documents: {len(documents)} documents exceed the limit of "
                f"{self.max_documents_per_upsert} per request",
                reason="BATCH_TOO_LARGE",
            )
        validate_ids([d.id for d in documents], what="documents")
        for position, document in enumerate(documents):
            check_metadata(
                document.metadata, self.metadata_limits, what=f"documents[{position}].metadata"
            )
            if isinstance(document.content, str) and not document.content.strip():
                raise InvalidArgument(f"documents[{position}]: text is empty", reason="EMPTY_TEXT")

    @staticmethod
    def check_lexical_only(collection: str, documents: Sequence[Document]) -> None:
        for position, document in enumerate(documents):
            if document.modality != TEXT:
                raise InvalidArgument(
                    f"documents[{position}]: collection {shown(collection)} is lexical-only, "
                    "it indexes text: send text, or write the image to a collection with "
                    "vectors",
                    reason="TEXT_REQUIRED",
                )

    def embed_into_space(
        self, plan: WritePlan, space: str, documents: Sequence[Document], deadline: float
    ) -> tuple[np.ndarray, list[bool]]:
        """Every document embedded into ``space`` by its encoders, in chunks of their batch size."""
        routes = {}
        for modality in {d.modality for d in documents}:
            try:
                routes[modality] = self.router.route(space, modality)
            except FailedPrecondition as error:
                if space == plan.serving_space:
                    raise
                versions = ", ".join(plan.versions_in(space))
                raise FailedPrecondition(
                    f"{error.message}; version(s) {versions} of this collection are in that "
                    f"space and must receive every write: deploy its encoder again, or drop "
                    f"them (contentembed retire COLLECTION VERSION)",
                    reason=error.reason,
                ) from None
        for position, document in enumerate(documents):
            _, info = routes[document.modality]
            size = len(document.content.encode("utf-8") if isinstance(document.content, str)
                       else document.content)
            if size > info.max_input_bytes:
                raise InvalidArgument(
                    f"documents[{position}]: {document.modality} is {size} bytes, above the "
                    f"encoder's limit of {info.max_input_bytes}",
                    reason="INPUT_TOO_LARGE",
                )
        vectors = np.empty((len(documents), 0), dtype=np.float32)
        truncated = [False] * len(documents)
        for modality, (encoder, info) in routes.items():
            positions = [p for p, d in enumerate(documents) if d.modality == modality]
            batch = max(info.max_batch_size, 1)
            chunks = [positions[i : i + batch] for i in range(0, len(positions), batch)]
            results = wait_all(
                [encoder.embed([documents[p].content for p in chunk], deadline) for chunk in chunks]
            )
            if any(e.space_id != space for e in results):
                raise FailedPrecondition(
                    f"{encoder.label} no longer embeds into {space}; retry", reason="SPACE_MISMATCH"
                )
            if vectors.shape[1] == 0:
                vectors = np.empty((len(documents), results[0].vectors.shape[1]), dtype=np.float32)
            for chunk, result in zip(chunks, results):
                vectors[chunk] = result.vectors
                for p, cut in zip(chunk, result.truncated):
                    truncated[p] = cut
        return vectors, truncated

    def scatter(
        self,
        collection: str,
        plan: WritePlan,
        documents: Sequence[Document],
        embedded: dict[str, tuple[np.ndarray, list[bool]]],
        deadline: float,
    ) -> int:
        by_shard: dict[int, list[int]] = defaultdict(list)
        for position, document in enumerate(documents):
            by_shard[shard_for_id(document.id, len(self.shards))].append(position)
        upserts = []
        for shard, positions in sorted(by_shard.items()):
            targets = plan.shards[shard]
            for space in sorted(targets.spaces):
                upserts.append(
                    self.shards[shard].upsert(
                        collection,
                        space,
                        [documents[p].id for p in positions],
                        embedded[space][0][positions],
                        [documents[p].metadata for p in positions],
                        deadline,
                        targets.fingerprint,
                        # Every version keeps the text (indexed for BM25 where the
                        # collection is lexical, and there to re-embed with a new model).
                        [documents[p].text for p in positions],
                    )
                )
        failures = [o for o in outcomes_of(upserts) if isinstance(o, ContentEmbedError)]
        # A stale plan shows as VERSIONS_CHANGED on some shard: that one decides (a retry
        # with a fresh plan), whatever another shard said first.
        for error in sorted(failures, key=lambda e: e.reason != VERSIONS_CHANGED):
            raise error
        return len(documents)

    def delete_documents(self, collection: str, ids: Sequence[str], deadline: float) -> int:
        validate_collection_name(collection)
        if not ids:
            raise InvalidArgument("ids: at least one id is required", reason="EMPTY_BATCH")
        validate_ids(ids, what="ids", unique=False)
        by_shard: dict[int, list[str]] = defaultdict(list)
        for item_id in dict.fromkeys(ids):
            by_shard[shard_for_id(item_id, len(self.shards))].append(item_id)
        calls = [
            self.shards[shard].delete_items(collection, shard_ids, deadline)
            for shard, shard_ids in sorted(by_shard.items())
        ]
        return sum(wait_all(calls))
