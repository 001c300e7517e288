"""The synchronous client for the gateway's SearchService and AdminService."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

try:  # optional: the SDK does not depend on OpenTelemetry, but joins a caller's trace
    from opentelemetry import propagate as otel_propagate
except ImportError:  # pragma: no cover - depends on the installation
    otel_propagate = None

from contentembed.admin.v1 import admin_service_pb2 as admin_pb
from contentembed.admin.v1 import admin_service_pb2_grpc as admin_grpc
from contentembed.client import _protocol as proto
from contentembed.client._protocol import DEFAULT_RETRIES, RetryPolicy
from contentembed.client.errors import ApiError
from contentembed.client.throttle import DEFAULT_K, Throttle
from contentembed.client.types import (
    CollectionCreated,
    CollectionInfo,
    Document,
    DocumentsResult,
    EncoderSpace,
    Promotion,
    SearchResult,
    ShadowReport,
    ShardEndpoint,
    UpsertResult,
)
from contentembed.search.v1 import search_service_pb2 as search_pb
from contentembed.search.v1 import search_service_pb2_grpc as search_grpc

if TYPE_CHECKING:
    import numpy as np

DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_TIMEOUT_S = 10.0
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]


def _credentials(
    tls_ca_file: str | Path, tls_cert_file: str | Path | None, tls_key_file: str | Path | None
) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=Path(tls_ca_file).read_bytes(),
        private_key=Path(tls_key_file).read_bytes() if tls_key_file else None,
        certificate_chain=Path(tls_cert_file).read_bytes() if tls_cert_file else None,
    )


def open_channel(
    target: str,
    *,
    tls_ca_file: str | Path | None = None,
    tls_cert_file: str | Path | None = None,
    tls_key_file: str | Path | None = None,
) -> grpc.Channel:
    """A channel with the SDK's message limits.

    Args:
        target: ``host:port`` of the gateway (or another contentembed service).
        tls_ca_file: CA bundle; given, the channel uses TLS.
        tls_cert_file: Client certificate for mutual TLS.
        tls_key_file: Its private key.

    Returns:
        A ``grpc.Channel``; the caller closes it.

    Example:
        >>> channel = open_channel("127.0.0.1:50051")  # doctest: +SKIP
    """
    if tls_ca_file is None:
        return grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
    credentials = _credentials(tls_ca_file, tls_cert_file, tls_key_file)
    return grpc.secure_channel(target, credentials, options=CHANNEL_OPTIONS)


def env_settings() -> dict[str, Any]:
    """Client keyword arguments from CONTENTEMBED_API_KEY and CONTENTEMBED_TLS_{CA,CERT,KEY}_FILE."""
    return {
        "api_key": os.environ.get("CONTENTEMBED_API_KEY"),
        "tls_ca_file": os.environ.get("CONTENTEMBED_TLS_CA_FILE"),
        "tls_cert_file": os.environ.get("CONTENTEMBED_TLS_CERT_FILE"),
        "tls_key_file": os.environ.get("CONTENTEMBED_TLS_KEY_FILE"),
    }


def channel_from_env(target: str) -> tuple[grpc.Channel, tuple[tuple[str, str], ...]]:
    """A channel and call metadata configured like :func:`client_from_env`.

    For batch jobs that talk to encoders and shards directly.

    Args:
        target: ``host:port`` to connect to.

    Returns:
        ``(channel, metadata)``: metadata holds ``x-api-key`` when CONTENTEMBED_API_KEY is set.

    Example:
        >>> channel, metadata = channel_from_env("127.0.0.1:50061")  # doctest: +SKIP
    """
    settings = env_settings()
    api_key = settings.pop("api_key")
    channel = open_channel(target, **settings)
    return channel, ((("x-api-key", api_key),) if api_key else ())


def trace_headers() -> list[tuple[str, str]]:
    """The caller's current trace context (W3C traceparent, ...) as call metadata.

    Empty unless OpenTelemetry is installed and a span is current; written by the
    caller's own (global) propagator, so its application decides the format.

    Returns:
        Metadata pairs to send with a call.
    """
    if otel_propagate is None:
        return []
    carrier: dict[str, str] = {}
    otel_propagate.inject(carrier)
    return list(carrier.items())


class Client:
    """Synchronous client of a contentembed gateway.

    Every call has a deadline (``timeout`` seconds unless the call gives its own) and
    failures raise a subclass of :class:`~contentembed.client.errors.ApiError` chosen by
    the status code (``NotFoundError``, ``UnavailableError``, ...).

    Idempotent calls (searches, gets, lists, health, ``upsert_documents`` — a document is
    replaced by id, so writing the same batch twice leaves the same state — and
    ``create_collection(exist_ok=True)``) are retried up to ``retries`` times on
    UNAVAILABLE, and on RESOURCE_EXHAUSTED when the server sent a RetryInfo delay; the
    wait is that delay or jittered exponential backoff, and never passes the call's
    deadline. Calls that change state in a way a second try would not repeat
    (``create_collection`` without ``exist_ok``, ``delete_collection``,
    ``delete_documents``, ``set_candidate``, ``promote_candidate``,
    ``rollback_collection``, ``begin_version``, ``delete_version``) are never retried.

    Args:
        target: Gateway ``host:port``.
        timeout: Default deadline of each call in seconds (retries included).
        channel: A channel to use instead of opening one (the client closes it).
        api_key: Sent as ``x-api-key`` on every call.
        tls_ca_file: CA bundle; given, the channel uses TLS.
        tls_cert_file: Client certificate for mutual TLS.
        tls_key_file: Its private key.
        retries: Retries of an idempotent call; 0 disables retrying.
        initial_backoff_s: First backoff ceiling (doubles each retry).
        max_backoff_s: Largest backoff ceiling.
        throttle_k: Client-side throttling (:mod:`contentembed.client.throttle`): once
            the gateway sheds load, calls beyond ``throttle_k`` times what it accepts are
            refused locally (``CLIENT_THROTTLED``) and overload retries are budgeted;
            0 turns it off.

    Example:
        >>> with Client("127.0.0.1:50051") as client:  # doctest: +SKIP
        ...     client.search("products", text="pour-over coffee", top_k=5)
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        timeout: float = DEFAULT_TIMEOUT_S,
        channel: grpc.Channel | None = None,
        *,
        api_key: str | None = None,
        tls_ca_file: str | Path | None = None,
        tls_cert_file: str | Path | None = None,
        tls_key_file: str | Path | None = None,
        retries: int = DEFAULT_RETRIES,
        initial_backoff_s: float = proto.DEFAULT_INITIAL_BACKOFF_S,
        max_backoff_s: float = proto.DEFAULT_MAX_BACKOFF_S,
        throttle_k: float = DEFAULT_K,
    ) -> None:
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self.target = target
        self.timeout = timeout
        self.retry_policy = RetryPolicy(retries, initial_backoff_s, max_backoff_s)
        self.throttle = Throttle(throttle_k)
        self._metadata = (("x-api-key", api_key),) if api_key else ()
        self._channel = channel or open_channel(
            target, tls_ca_file=tls_ca_file, tls_cert_file=tls_cert_file, tls_key_file=tls_key_file
        )
        self._search = search_grpc.SearchServiceStub(self._channel)
        self._admin = admin_grpc.AdminServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the channel; calls after this fail."""
        self._channel.close()

    def _call(
        self, method: Any, request: Any, timeout: float | None, *, idempotent: bool
    ) -> Any:
        budget = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + budget
        attempt = 0
        while True:
            if not self.throttle.admit():
                raise proto.throttled()
            try:
                response = method(
                    request, timeout=budget, metadata=(*self._metadata, *trace_headers())
                )
            except grpc.RpcError as rpc_error:
                error = ApiError.from_rpc_error(rpc_error)
            else:
                self.throttle.record("OK")
                return response
            self.throttle.record(error.code, error.retry_after_s, error.reason, error.message)
            delay = self.retry_policy.delay(error, attempt, idempotent)
            if (delay is None or time.monotonic() + delay >= deadline
                    or not self.throttle.retry_allowed(error.code, error.retry_after_s)):
                raise error
            time.sleep(delay)
            attempt += 1
            budget = deadline - time.monotonic()

    # -- search ----------------------------------------------------------------------
    def search(
        self,
        collection: str,
        text: str | None = None,
        *,
        image: bytes | None = None,
        item_id: str | None = None,
        vector: np.ndarray | Sequence[float] | None = None,
        vector_space_id: str = "",
        top_k: int = 10,
        allow_partial: bool = False,
        also_collections: Sequence[str] = (),
        version: str = "",
        exact: bool = False,
        ef: int = 0,
        offset: int = 0,
        score_threshold: float | None = None,
        filter: Mapping[str, Any] | None = None,  # noqa: A002 - the field's name
        metadata_fields: Sequence[str] = (),
        omit_metadata: bool = False,
        mode: str | None = None,
        fusion: str | None = None,
        alpha: float | None = None,
        rrf_k: int = 0,
        depth: int = 0,
        timeout: float | None = None,
    ) -> SearchResult:
        """Nearest items to a text or an encoded image. Retried (idempotent).

        Args:
            collection: Collection to search.
            text: Query text (give exactly one of ``text``, ``image`` and ``item_id``).
            image: Encoded image bytes to search with.
            item_id: "More like this": search with the stored vector of this item of the
                collection, the item itself left out.
            vector: A query vector embedded elsewhere (float32 values, the collection's
                dim): no encoder call. Needs ``vector_space_id``.
            vector_space_id: The space of ``vector``; must be the collection's
                (FailedPreconditionError SPACE_MISMATCH otherwise).
            top_k: Hits to return; 0: the gateway's default.
            allow_partial: Answer from the shards that answered when some did not
                (``result.partial``); otherwise such a search fails UNAVAILABLE.
            also_collections: More collections searched at once (cosine merge within a
                space, rank fusion across spaces).
            version: A loaded version other than the serving one.
            exact: Brute force instead of HNSW (the reference for recall).
            ef: Search-time HNSW ef on every shard; 0: each collection's default.
            offset: Skip this many hits of the merged ranking (pages: offset=0, top_k,
                2 * top_k, ...); offset + top_k is bounded by the gateway's max_top_k.
            score_threshold: Drop hits scoring below it; None: no threshold (0 drops
                negative scores).
            filter: Metadata filter on every shard: ``{"key": value}`` equality,
                ``{"key": {"$in": [...]}}``, ``{"key": {"$gte": 1, "$lt": 5}}``,
                ``{"$and": [...]}``, ``{"$or": [...]}``; a malformed one is BAD_FILTER.
            metadata_fields: Only these metadata keys on each hit; empty: all of them.
            omit_metadata: Hits without metadata (ids and scores only).
            mode: ``"dense"`` (HNSW over the query's embedding), ``"lexical"`` (BM25 over
                the collection's lexical index; the query is not embedded) or
                ``"hybrid"`` (both, fused); None: hybrid on a lexical collection with a
                text query, dense otherwise; lexical on a lexical-only collection (which
                refuses dense and hybrid: FailedPreconditionError DENSE_NOT_ENABLED).
                Lexical and hybrid need a text query and a lexical collection
                (FailedPreconditionError LEXICAL_NOT_ENABLED).
            fusion: How hybrid combines the two lists: ``"rrf"`` (reciprocal rank) or
                ``"minmax"`` (convex combination of min-max scaled scores); None: the
                gateway's default.
            alpha: Min-max weight of the dense scores, 0 to 1; None: the gateway's default.
            rrf_k: RRF's k (1 to 10000); 0: the gateway's default.
            depth: Candidates each retriever contributes before fusion; 0: the gateway's
                default (never less than ``offset + top_k``).
            timeout: Deadline in seconds, retries included; default: the client's.

        Returns:
            The hits, best first, with the space and version that answered, the mode and
            fusion used and each hit's per-retriever scores and ranks.

        Raises:
            ValueError: Not exactly one of ``text``, ``image``, ``item_id`` and ``vector``;
                unknown ``mode`` or ``fusion``.
            NotFoundError: No such collection or version.
            UnavailableError: Shards or encoder unavailable after the retries.
            ApiError: Any other failure, as its code's subclass.

        Example:
            >>> result = client.search("products", text="pour-over coffee", top_k=5)  # doctest: +SKIP
            >>> [hit.id for hit in result.hits]  # doctest: +SKIP
        """
        request = proto.search_request(
            collection, text, image, top_k, allow_partial, also_collections, version, exact,
            ef, offset, score_threshold, filter, item_id, vector, vector_space_id,
            metadata_fields, omit_metadata,
            proto.retrieval_options(mode, fusion, alpha, rrf_k, depth),
        )
        response = self._call(self._search.Search, request, timeout, idempotent=True)
        return proto.search_result(response)

    # -- collections -----------------------------------------------------------------
    def create_collection(
        self,
        name: str,
        *,
        space_id: str = "",
        modality: str = "text",
        model: str = "",
        exist_ok: bool = False,
        lexical: bool = False,
        language: str = "",
        lexical_only: bool = False,
        timeout: float | None = None,
    ) -> CollectionCreated:
        """Creates a collection on every shard. Retried only with ``exist_ok=True``.

        Args:
            name: Collection name.
            space_id: A space an encoder serves (e.g. a CLIP or pixels space for images);
                empty: the space of the only encoder of ``modality``.
            modality: ``"text"`` or ``"image"``.
            model: A model id (e.g. ``"all-MiniLM-L6-v2"``): the space of the encoder that
                runs it, when ``space_id`` is empty.
            exist_ok: An existing collection of that space is not an error (one with
                another lexical config is: FailedPreconditionError LEXICAL_MISMATCH).
            lexical: A hybrid collection: a BM25 index over the documents' texts beside
                the vectors, for ``search(mode="lexical"|"hybrid")``.
            language: The lexical index's stemming and stop words: ``"english"`` (when
                empty), another Snowball language, or ``"none"``; needs ``lexical``
                (or ``lexical_only``).
            lexical_only: Only the lexical index (implies ``lexical``): no vectors, no
                space, no encoder; documents are text, every search is lexical (dense or
                hybrid: FailedPreconditionError DENSE_NOT_ENABLED). No ``space_id``,
                ``model`` or image ``modality`` with it.
            timeout: Deadline in seconds; default: the client's.

        Returns:
            ``CollectionCreated(collection, created)``.

        Raises:
            ValueError: Unknown modality, ``language`` without ``lexical``, or a space,
                model or image modality with ``lexical_only``.
            AlreadyExistsError: It exists and ``exist_ok`` is False.
            FailedPreconditionError: No (or no single) encoder serves the space.
            InvalidArgumentError: Bad name.

        Example:
            >>> info, created = client.create_collection("products", exist_ok=True)  # doctest: +SKIP
        """
        request = proto.create_collection_request(
            name, space_id, modality, exist_ok, model, lexical, language, lexical_only
        )
        response = self._call(self._admin.CreateCollection, request, timeout, idempotent=exist_ok)
        return CollectionCreated(proto.collection_info(response.collection), response.created)

    def get_collection(self, name: str, *, timeout: float | None = None) -> CollectionInfo:
        """A collection's space, size, shards and versions. Retried (idempotent).

        Args:
            name: Collection name.
            timeout: Deadline in seconds; default: the client's.

        Returns:
            The collection.

        Raises:
            NotFoundError: No such collection.

        Example:
            >>> client.get_collection("products").item_count  # doctest: +SKIP
        """
        response = self._call(
            self._admin.GetCollection, admin_pb.GetCollectionRequest(name=name), timeout,
            idempotent=True,
        )
        return proto.collection_info(response.collection)

    def list_collections(
        self, *, page_size: int = 100, timeout: float | None = None
    ) -> Iterator[CollectionInfo]:
        """Every collection, following page tokens. Each page is retried (idempotent).

        Args:
            page_size: Collections per call.
            timeout: Deadline of each page's call in seconds; default: the client's.

        Returns:
            An iterator over the collections.

        Raises:
            ApiError: A page's call failed (raised while iterating).

        Example:
            >>> [c.name for c in client.list_collections()]  # doctest: +SKIP
        """
        # A page token, not a password.
        token = ""  # nosec B105
        while True:
            response = self._call(
                self._admin.ListCollections,
                admin_pb.ListCollectionsRequest(page_size=page_size, page_token=token),
                timeout,
                idempotent=True,
            )
            yield from (proto.collection_info(c) for c in response.collections)
            token = response.next_page_token
            if not token:
                return

    def delete_collection(self, name: str, *, timeout: float | None = None) -> None:
        """Deletes a collection everywhere. Not retried.

        Args:
            name: Collection name.
            timeout: Deadline in seconds; default: the client's.

        Raises:
            NotFoundError: No such collection.

        Example:
            >>> client.delete_collection("scratch")  # doctest: +SKIP
        """
        self._call(
            self._admin.DeleteCollection, admin_pb.DeleteCollectionRequest(name=name), timeout,
            idempotent=False,
        )

    # -- documents -------------------------------------------------------------------
    def upsert_documents(
        self,
        collection: str,
        documents: Iterable[Document],
        *,
        timeout: float | None = None,
    ) -> UpsertResult:
        """Embeds and writes documents, replacing those with the same id. Retried:
        writes are keyed by id, so a repeated batch leaves the same state.

        Args:
            collection: Collection to write to.
            documents: ``TextDocument``/``ImageDocument`` values, or mappings with ``id``,
                ``text`` or ``image`` (encoded bytes) and optional ``metadata``.
            timeout: Deadline in seconds, retries included; default: the client's.

        Returns:
            ``UpsertResult(upserted_count, truncated_ids)``: ids whose text the model
            truncated to its input limit.

        Raises:
            NotFoundError: No such collection.
            InvalidArgumentError: A document is refused (bad id, oversized input, ...).
            UnavailableError: A shard or the encoder is unavailable after the retries.

        Example:
            >>> client.upsert_documents("products", [TextDocument("p1", "a kettle")])  # doctest: +SKIP
            UpsertResult(upserted_count=1, truncated_ids=[])
        """
        request = proto.upsert_request(collection, documents)
        response = self._call(self._admin.UpsertDocuments, request, timeout, idempotent=True)
        return UpsertResult(response.upserted_count, list(response.truncated_ids))

    def delete_documents(
        self, collection: str, ids: Iterable[str], *, timeout: float | None = None
    ) -> int:
        """Deletes documents by id. Not retried (a retry would report a wrong count).

        Args:
            collection: Collection to delete from.
            ids: Document ids.
            timeout: Deadline in seconds; default: the client's.

        Returns:
            How many documents were deleted.

        Raises:
            NotFoundError: No such collection.

        Example:
            >>> client.delete_documents("products", ["p1"])  # doctest: +SKIP
            1
        """
        response = self._call(
            self._admin.DeleteDocuments,
            admin_pb.DeleteDocumentsRequest(collection=collection, ids=list(ids)),
            timeout,
            idempotent=False,
        )
        return response.deleted_count

    def search_batch(
        self,
        collection: str,
        texts: Iterable[str],
        *,
        top_k: int = 10,
        allow_partial: bool = False,
        ef: int = 0,
        filter: Mapping[str, Any] | None = None,  # noqa: A002 - the field's name
        mode: str | None = None,
        fusion: str | None = None,
        alpha: float | None = None,
        rrf_k: int = 0,
        depth: int = 0,
        timeout: float | None = None,
    ) -> list[SearchResult]:
        """Many text queries against one collection in one call (serving version): the
        gateway embeds them in batches and asks each shard once. Retried (idempotent).

        Args:
            collection: Collection to search.
            texts: Query texts (1 to the gateway's max_queries_per_batch, default 64).
            top_k: Hits per query; 0: the gateway's default.
            allow_partial: Answer from the shards that answered when some did not.
            ef: Search-time HNSW ef on every shard; 0: each collection's default.
            filter: Metadata filter on every query (as ``search``).
            mode: ``"dense"``, ``"lexical"`` or ``"hybrid"`` for every query (as
                ``search``); None: hybrid on a lexical collection, dense otherwise.
            fusion: ``"rrf"`` or ``"minmax"`` (as ``search``).
            alpha: Min-max weight of the dense scores (as ``search``).
            rrf_k: RRF's k (as ``search``).
            depth: Candidates per retriever before fusion (as ``search``).
            timeout: Deadline in seconds, retries included; default: the client's.

        Returns:
            One SearchResult per text, in order.

        Raises:
            ValueError: Unknown ``mode`` or ``fusion``.

        Example:
            >>> [r.hits[0].id for r in client.search_batch("products", ["kettle", "tent"])]  # doctest: +SKIP
        """
        request = proto.search_batch_request(
            collection, texts, top_k, allow_partial, ef, filter,
            proto.retrieval_options(mode, fusion, alpha, rrf_k, depth),
        )
        response = self._call(self._search.SearchBatch, request, timeout, idempotent=True)
        return [proto.search_result(result) for result in response.results]

    def get_documents(
        self, collection: str, ids: Iterable[str], *, with_vectors: bool = False,
        timeout: float | None = None,
    ) -> DocumentsResult:
        """Stored documents by id (serving version), in request order. Retried
        (idempotent).

        Args:
            collection: Collection to read.
            ids: Document ids (1 to the gateway's max_ids_per_get, default 1000).
            with_vectors: Also return each document's stored vector.
            timeout: Deadline in seconds, retries included; default: the client's.

        Returns:
            The documents found (``documents``) and the ids not found (``missing_ids``).

        Raises:
            NotFoundError: No such collection.
            InvalidArgumentError: No ids, too many, or a malformed one.

        Example:
            >>> client.get_documents("products", ["p1", "nope"]).missing_ids  # doctest: +SKIP
            ['nope']
        """
        response = self._call(
            self._search.GetDocuments,
            search_pb.GetDocumentsRequest(
                collection=collection, ids=list(ids), with_vectors=with_vectors
            ),
            timeout,
            idempotent=True,
        )
        return proto.documents_result(response, with_vectors)

    # -- model rollout: candidate, shadow, canary, promote, rollback ------------------
    def set_candidate(
        self,
        collection: str,
        version: str,
        *,
        shadow_fraction: float = 0.0,
        canary_weight: float = 0.0,
        timeout: float | None = None,
    ) -> None:
        """Names a loaded version as candidate (empty version: clears it). Not retried.

        Args:
            collection: Collection name.
            version: A version loaded on every shard, or "" to clear the candidate.
            shadow_fraction: Share of queries mirrored to the candidate (0..1).
            canary_weight: Share of queries the candidate answers (0..1).
            timeout: Deadline in seconds; default: the client's.

        Raises:
            NotFoundError: No such collection or version.
            InvalidArgumentError: A share outside 0..1.

        Example:
            >>> client.set_candidate("products", "v2", shadow_fraction=0.1)  # doctest: +SKIP
        """
        self._call(
            self._admin.SetCandidate,
            admin_pb.SetCandidateRequest(
                collection=collection,
                version=version,
                shadow_fraction=shadow_fraction,
                canary_weight=canary_weight,
            ),
            timeout,
            idempotent=False,
        )

    def shadow_report(self, collection: str, *, timeout: float | None = None) -> ShadowReport:
        """How the candidate compares with the serving version. Retried (idempotent).

        Args:
            collection: Collection name.
            timeout: Deadline in seconds; default: the client's.

        Returns:
            Overlap, rank correlation and latency of the mirrored queries.

        Raises:
            NotFoundError: No such collection.
            FailedPreconditionError: No candidate.

        Example:
            >>> client.shadow_report("products").mean_overlap_at_k  # doctest: +SKIP
        """
        response = self._call(
            self._admin.GetShadowReport, admin_pb.GetShadowReportRequest(collection=collection),
            timeout, idempotent=True,
        )
        return proto.shadow_report(response)

    def promote_candidate(self, collection: str, *, timeout: float | None = None) -> Promotion:
        """Makes the candidate the serving version. Not retried.

        Args:
            collection: Collection name.
            timeout: Deadline in seconds; default: the client's.

        Returns:
            ``Promotion(previous_version, version)``.

        Raises:
            FailedPreconditionError: No candidate.

        Example:
            >>> client.promote_candidate("products").version  # doctest: +SKIP
            'v2'
        """
        response = self._call(
            self._admin.PromoteCandidate, admin_pb.PromoteCandidateRequest(collection=collection),
            timeout, idempotent=False,
        )
        return Promotion(response.previous_version, response.version)

    def rollback_collection(self, collection: str, *, timeout: float | None = None) -> str:
        """Serves the previous version again. Not retried.

        Args:
            collection: Collection name.
            timeout: Deadline in seconds; default: the client's.

        Returns:
            The version serving after the rollback.

        Raises:
            FailedPreconditionError: No previous version.

        Example:
            >>> client.rollback_collection("products")  # doctest: +SKIP
            'live'
        """
        response = self._call(
            self._admin.RollbackCollection,
            admin_pb.RollbackCollectionRequest(collection=collection),
            timeout,
            idempotent=False,
        )
        return response.version

    # -- topology and versions -------------------------------------------------------
    def list_spaces(self, *, timeout: float | None = None) -> list[EncoderSpace]:
        """The encoders the gateway routes to, with their spaces. Retried (idempotent).

        Args:
            timeout: Deadline in seconds; default: the client's.

        Returns:
            One entry per encoder.

        Raises:
            ApiError: The call failed.

        Example:
            >>> [s.space_id for s in client.list_spaces()]  # doctest: +SKIP
        """
        response = self._call(
            self._admin.ListSpaces, admin_pb.ListSpacesRequest(), timeout, idempotent=True
        )
        return proto.encoder_spaces(response)

    def list_shards(self, *, timeout: float | None = None) -> list[ShardEndpoint]:
        """The index shards the gateway fans out to, in shard order. Retried (idempotent).

        Args:
            timeout: Deadline in seconds; default: the client's.

        Returns:
            One entry per shard.

        Raises:
            ApiError: The call failed.

        Example:
            >>> len(client.list_shards())  # doctest: +SKIP
            2
        """
        response = self._call(
            self._admin.ListShards, admin_pb.ListShardsRequest(), timeout, idempotent=True
        )
        return proto.shard_endpoints(response)

    def begin_version(
        self, collection: str, version: str, space_id: str, *, timeout: float | None = None
    ) -> CollectionCreated:
        """Opens a pending version on every shard. Not retried.

        The pending version receives every online write (embedded into ``space_id``)
        until a bundle is published into it.

        Args:
            collection: Collection name.
            version: The new version's id.
            space_id: Space its vectors are embedded into.
            timeout: Deadline in seconds; default: the client's.

        Returns:
            ``CollectionCreated(collection, created)``: created is False when it was open.

        Raises:
            NotFoundError: No such collection.
            FailedPreconditionError: No encoder serves the space.

        Example:
            >>> client.begin_version("products", "v2", "clip@abc").created  # doctest: +SKIP
        """
        response = self._call(
            self._admin.BeginVersion,
            admin_pb.BeginVersionRequest(collection=collection, version=version, space_id=space_id),
            timeout,
            idempotent=False,
        )
        return CollectionCreated(proto.collection_info(response.collection), response.created)

    def delete_version(
        self, collection: str, version: str, *, timeout: float | None = None
    ) -> CollectionInfo:
        """Drops a version that is not serving (pending, candidate or previous). Not retried.

        Args:
            collection: Collection name.
            version: The version to drop.
            timeout: Deadline in seconds; default: the client's.

        Returns:
            The collection afterwards.

        Raises:
            FailedPreconditionError: The version is serving.
            NotFoundError: No such collection or version.

        Example:
            >>> client.delete_version("products", "v1")  # doctest: +SKIP
        """
        response = self._call(
            self._admin.DeleteVersion,
            admin_pb.DeleteVersionRequest(collection=collection, version=version),
            timeout,
            idempotent=False,
        )
        return proto.collection_info(response.collection)

    # -- health ----------------------------------------------------------------------
    def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """The gateway's grpc.health.v1 status. Retried (idempotent).

        Args:
            service: Service name to ask about; "" for the server as a whole.
            timeout: Deadline in seconds; default: the client's.

        Returns:
            ``"SERVING"``, ``"NOT_SERVING"``, ...

        Raises:
            UnavailableError: The gateway cannot be reached.

        Example:
            >>> client.health()  # doctest: +SKIP
            'SERVING'
        """
        response = self._call(
            self._health.Check, health_pb2.HealthCheckRequest(service=service), timeout,
            idempotent=True,
        )
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def client_from_env(
    target: str = DEFAULT_TARGET, timeout: float = DEFAULT_TIMEOUT_S, **kwargs: Any
) -> Client:
    """A :class:`Client` configured from the environment.

    Reads CONTENTEMBED_API_KEY and CONTENTEMBED_TLS_{CA,CERT,KEY}_FILE.

    Args:
        target: Gateway ``host:port``.
        timeout: Default deadline of each call in seconds.
        **kwargs: More :class:`Client` arguments (``retries=``, ...).

    Returns:
        The client.

    Example:
        >>> with client_from_env("gateway:50051") as client:  # doctest: +SKIP
        ...     client.health()
    """
    return Client(target, timeout, **env_settings(), **kwargs)
