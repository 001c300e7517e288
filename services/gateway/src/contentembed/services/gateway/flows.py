"""Search and ingest flows of the gateway. No grpc here: calls go through the typed
clients in ``downstream.py`` and fail with domain errors."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from contentembed.services.common.downstream import PendingCall, results_of_all
from contentembed.services.common.errors import (
    CLIENT_ERROR_CODES,
    ContentEmbedError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    Unavailable,
)
from contentembed.services.common.sharding import shard_for_id
from contentembed.services.common.validation import (
    validate_collection_name,
    validate_ids,
    validate_top_k,
)
from contentembed.services.gateway.downstream import (
    EncoderClient,
    EncoderInfo,
    IndexShardClient,
    ShardAnswer,
    ShardCollection,
)
from contentembed.services.gateway.merge import Hit, merge_top_k

RegisterCancel = Callable[[Callable[[], None]], Any]


@dataclass(frozen=True)
class ShardOutcome:
    shard_index: int
    ok: bool
    error: str = ""
    hit_count: int = 0
    latency_ms: float = 0.0


@dataclass(frozen=True)
class SearchOutcome:
    hits: list[Hit]
    space_id: str
    version: str
    partial: bool
    shards: list[ShardOutcome]
    encode_ms: float
    search_ms: float
    merge_ms: float
    query_truncated: bool


@dataclass(frozen=True)
class CollectionSummary:
    name: str
    space_id: str
    dim: int
    item_count: int
    shard_count: int
    version: str


@dataclass(frozen=True)
class TextDocument:
    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


def summarize(per_shard: Sequence[ShardCollection]) -> CollectionSummary:
    first = per_shard[0]
    versions = sorted({c.version for c in per_shard})
    return CollectionSummary(
        name=first.name,
        space_id=first.space_id,
        dim=first.dim,
        item_count=sum(c.item_count for c in per_shard),
        shard_count=len(per_shard),
        version=",".join(versions),
    )


class Gateway:
    def __init__(
        self,
        encoder: EncoderClient,
        shards: Sequence[IndexShardClient],
        max_top_k: int,
        max_documents_per_upsert: int,
    ) -> None:
        self.encoder = encoder
        self.shards = list(shards)
        self.max_top_k = max_top_k
        self.max_documents_per_upsert = max_documents_per_upsert
        self._encoder_info: EncoderInfo | None = None

    # -- readiness -------------------------------------------------------------------
    def connect(self, deadline: float) -> EncoderInfo:
        """Blocks until the encoder answers (it may still be loading its model) and every
        shard answers; the gateway turns SERVING only then."""
        while True:
            try:
                info = self.encoder.info(deadline, wait_for_ready=True)
                results_of_all([shard.list_collections(1, "", deadline) for shard in self.shards])
            except ContentEmbedError as error:
                if time.monotonic() + 0.5 >= deadline or error.code in CLIENT_ERROR_CODES:
                    raise Unavailable(f"downstream services not ready: {error.message}") from error
                time.sleep(0.5)
                continue
            self._encoder_info = info
            return info

    def encoder_info(self, deadline: float) -> EncoderInfo:
        if self._encoder_info is None:
            self._encoder_info = self.encoder.info(deadline)
        return self._encoder_info

    # -- search ----------------------------------------------------------------------
    def search_text(
        self,
        collection: str,
        text: str,
        top_k: int,
        allow_partial: bool,
        deadline: float,
        register_cancel: RegisterCancel,
    ) -> SearchOutcome:
        validate_collection_name(collection)
        validate_top_k(top_k, self.max_top_k)
        if not text.strip():
            raise InvalidArgument("text: the query text is empty", reason="EMPTY_TEXT")

        started = time.perf_counter()
        encode_call = self.encoder.embed_texts([text], deadline)
        register_cancel(encode_call.cancel)
        embedded = encode_call.result()
        encoded = time.perf_counter()

        calls = [
            shard.search(collection, embedded.vectors[0], embedded.space_id, top_k, deadline)
            for shard in self.shards
        ]
        for call in calls:
            register_cancel(call.cancel)
        answers, outcomes = self._gather_shards(calls, allow_partial, deadline)
        searched = time.perf_counter()

        hits = merge_top_k((answer.hits for answer in answers), top_k)
        merged = time.perf_counter()
        return SearchOutcome(
            hits=hits,
            space_id=embedded.space_id,
            version=",".join(sorted({answer.version for answer in answers})),
            partial=len(answers) < len(self.shards),
            shards=outcomes,
            encode_ms=(encoded - started) * 1000,
            search_ms=(searched - encoded) * 1000,
            merge_ms=(merged - searched) * 1000,
            query_truncated=embedded.truncated[0],
        )

    def _gather_shards(
        self,
        calls: Sequence[PendingCall[Any, ShardAnswer]],
        allow_partial: bool,
        deadline: float,
    ) -> tuple[list[ShardAnswer], list[ShardOutcome]]:
        answers: list[ShardAnswer] = []
        outcomes: list[ShardOutcome] = []
        failures: list[ContentEmbedError] = []
        for shard, call in zip(self.shards, calls):
            try:
                answer = call.result()
            except ContentEmbedError as error:
                failures.append(error)
                outcomes.append(
                    ShardOutcome(shard.shard_index, False, f"{error.code}: {error.message}",
                                 latency_ms=call.latency_ms)
                )
                continue
            answers.append(answer)
            outcomes.append(
                ShardOutcome(shard.shard_index, True, hit_count=len(answer.hits),
                             latency_ms=call.latency_ms)
            )
        # A request-level problem (unknown collection, wrong space) is the caller's to fix
        # and the same on every shard: report it, never a "partial" answer.
        for error in failures:
            if error.code in CLIENT_ERROR_CODES:
                raise error
        if failures and (not allow_partial or not answers):
            summary = "; ".join(error.message for error in failures)
            failed = f"{len(failures)} of {len(self.shards)} index shards failed: {summary}"
            if time.monotonic() >= deadline:
                raise DeadlineExceeded(failed, reason="SHARDS_FAILED")
            raise Unavailable(failed, reason="SHARDS_FAILED")
        return answers, outcomes

    # -- collections -----------------------------------------------------------------
    def create_collection(
        self, name: str, exist_ok: bool, deadline: float
    ) -> tuple[CollectionSummary, bool]:
        validate_collection_name(name)
        info = self.encoder_info(deadline)
        results = results_of_all(
            [s.create_collection(name, info.space_id, info.dim, exist_ok, deadline) for s in self.shards]
        )
        return summarize([c for c, _ in results]), any(created for _, created in results)

    def get_collection(self, name: str, deadline: float) -> CollectionSummary:
        validate_collection_name(name)
        return summarize(results_of_all([s.get_collection(name, deadline) for s in self.shards]))

    def list_collections(
        self, page_size: int, page_token: str, deadline: float
    ) -> tuple[list[CollectionSummary], str]:
        # Every shard holds every collection, so the same name-ordered page token
        # selects the same page on each.
        pages = results_of_all(
            [s.list_collections(page_size, page_token, deadline) for s in self.shards]
        )
        by_name: dict[str, list[ShardCollection]] = defaultdict(list)
        for collections, _ in pages:
            for collection in collections:
                by_name[collection.name].append(collection)
        summaries = [summarize(by_name[name]) for name in sorted(by_name)]
        return summaries, pages[0][1]

    def delete_collection(self, name: str, deadline: float) -> None:
        validate_collection_name(name)
        results_of_all([s.delete_collection(name, deadline) for s in self.shards])

    # -- documents -------------------------------------------------------------------
    def upsert_documents(
        self, collection: str, documents: Sequence[TextDocument], deadline: float
    ) -> tuple[int, list[str]]:
        """Embeds and writes every document; returns (count, ids whose text was truncated).

        Acknowledged only when every shard acknowledged its part. A failure may leave
        some shards written: upserts are idempotent, so the caller retries the request.
        """
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
        info = self.encoder_info(deadline)
        for position, document in enumerate(documents):
            if not document.text.strip():
                raise InvalidArgument(f"documents[{position}]: text is empty", reason="EMPTY_TEXT")
            size = len(document.text.encode("utf-8"))
            if size > info.max_input_bytes:
                raise InvalidArgument(
                    f"documents[{position}]: text is {size} bytes, above the encoder's "
                    f"limit of {info.max_input_bytes}",
                    reason="TEXT_TOO_LONG",
                )

        batch = max(info.max_batch_size, 1)
        calls = [
            self.encoder.embed_texts([d.text for d in documents[i : i + batch]], deadline)
            for i in range(0, len(documents), batch)
        ]
        embedded = results_of_all(calls)
        space_ids = {e.space_id for e in embedded}
        if len(space_ids) != 1:
            raise FailedPrecondition(
                f"the encoder changed space during the request ({sorted(space_ids)}); retry"
            )
        space_id = space_ids.pop()
        vectors = np.concatenate([e.vectors for e in embedded])
        truncated = [flag for e in embedded for flag in e.truncated]

        by_shard: dict[int, list[int]] = defaultdict(list)
        for position, document in enumerate(documents):
            by_shard[shard_for_id(document.id, len(self.shards))].append(position)
        upserts = [
            self.shards[shard].upsert(
                collection,
                space_id,
                [documents[p].id for p in positions],
                vectors[positions],
                [documents[p].metadata for p in positions],
                deadline,
            )
            for shard, positions in sorted(by_shard.items())
        ]
        written = sum(results_of_all(upserts))
        return written, [d.id for d, cut in zip(documents, truncated) if cut]

    def delete_documents(self, collection: str, ids: Sequence[str], deadline: float) -> int:
        validate_collection_name(collection)
        if not ids:
            raise InvalidArgument("ids: at least one id is required", reason="EMPTY_BATCH")
        by_shard: dict[int, list[str]] = defaultdict(list)
        for item_id in dict.fromkeys(ids):
            by_shard[shard_for_id(item_id, len(self.shards))].append(item_id)
        calls = [
            self.shards[shard].delete_items(collection, shard_ids, deadline)
            for shard, shard_ids in sorted(by_shard.items())
        ]
        return sum(results_of_all(calls))

    def close(self) -> None:
        self.encoder.close()
        for shard in self.shards:
            shard.close()
