"""The asyncio client (grpc.aio): :class:`AsyncClient`, the same methods as ``Client``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from contentembed.admin.v1 import admin_service_pb2 as admin_pb
from contentembed.admin.v1 import admin_service_pb2_grpc as admin_grpc
from contentembed.client import _protocol as proto
from contentembed.client._protocol import DEFAULT_RETRIES, RetryPolicy
from contentembed.client.client import (
    CHANNEL_OPTIONS,
    DEFAULT_TARGET,
    DEFAULT_TIMEOUT_S,
    _credentials,
    env_settings,
    trace_headers,
)
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


class AsyncClient:
    """Asyncio client of a contentembed gateway, on ``grpc.aio``.

    Same methods, arguments, results, errors, deadlines and retries as
    :class:`contentembed.client.Client`, as coroutines (``list_collections`` is an async
    iterator). Create and use it inside one running event loop.

    Args:
        target: Gateway ``host:port``.
        timeout: Default deadline of each call in seconds (retries included).
        channel: A ``grpc.aio.Channel`` to use instead of opening one (closed with the client).
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
        >>> async with AsyncClient("127.0.0.1:50051") as client:  # doctest: +SKIP
        ...     result = await client.search("products", text="coffee", top_k=5)
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        timeout: float = DEFAULT_TIMEOUT_S,
        channel: grpc.aio.Channel | None = None,
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
        if channel is None:
            if tls_ca_file is None:
                channel = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
            else:
                channel = grpc.aio.secure_channel(
                    target, _credentials(tls_ca_file, tls_cert_file, tls_key_file),
                    options=CHANNEL_OPTIONS,
                )
        self._channel = channel
        self._search = search_grpc.SearchServiceStub(channel)
        self._admin = admin_grpc.AdminServiceStub(channel)
        self._health = health_pb2_grpc.HealthStub(channel)

    @classmethod
    def from_env(
        cls, target: str = DEFAULT_TARGET, timeout: float = DEFAULT_TIMEOUT_S, **kwargs: Any
    ) -> AsyncClient:
        """An AsyncClient configured like :func:`contentembed.client.client_from_env`.

        Args:
            target: Gateway ``host:port``.
            timeout: Default deadline of each call in seconds.
            **kwargs: More constructor arguments (``retries=``, ...).

        Returns:
            The client.

        Example:
            >>> client = AsyncClient.from_env("gateway:50051")  # doctest: +SKIP
        """
        return cls(target, timeout, **env_settings(), **kwargs)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Closes the channel; calls after this fail."""
        await self._channel.close()

    async def _call(
        self, method: Any, request: Any, timeout: float | None, *, idempotent: bool
    ) -> Any:
        budget = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + budget
        attempt = 0
        while True:
            if not self.throttle.admit():
                raise proto.throttled()
            try:
                response = await method(
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
            await asyncio.sleep(delay)
            attempt += 1
            budget = deadline - time.monotonic()

    async def search(
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
            allow_partial: Answer from the shards that answered when some did not.
            also_collections: More collections searched at once.
            version: A loaded version other than the serving one.
            exact: Brute force instead of HNSW.
            ef: Search-time HNSW ef on every shard; 0: each collection's default.
            offset: Skip this many hits of the merged ranking (pages).
            score_threshold: Drop hits scoring below it; None: no threshold.
            filter: Metadata filter on every shard (see ``Client.search``).
            metadata_fields: Only these metadata keys on each hit; empty: all of them.
            omit_metadata: Hits without metadata (ids and scores only).
            mode: ``"dense"``, ``"lexical"`` or ``"hybrid"``; None: hybrid on a lexical
                collection with a text query, dense otherwise (see ``Client.search``).
            fusion: ``"rrf"`` or ``"minmax"`` for hybrid; None: the gateway's default.
            alpha: Min-max weight of the dense scores, 0 to 1; None: the gateway's default.
            rrf_k: RRF's k; 0: the gateway's default.
            depth: Candidates per retriever before fusion; 0: the gateway's default.
            timeout: Deadline in seconds, retries included; default: the client's.

        Returns:
            The hits, best first, with the space and version that answered, the mode and
            fusion used and each hit's per-retriever scores and ranks.

        Raises:
            ValueError: Not exactly one of ``text``, ``image``, ``item_id`` and ``vector``;
                unknown ``mode`` or ``fusion``.
            NotFoundError: No such collection or version.
            UnavailableError: Unavailable after the retries.

        Example:
            >>> result = await client.search("products", text="coffee")  # doctest: +SKIP
        """
        request = proto.search_request(
            collection, text, image, top_k, allow_partial, also_collections, version, exact,
            ef, offset, score_threshold, filter, item_id, vector, vector_space_id,
            metadata_fields, omit_metadata,
            proto.retrieval_options(mode, fusion, alpha, rrf_k, depth),
        )
        response = await self._call(self._search.Search, request, timeout, idempotent=True)
        return proto.search_result(response)

    async def create_collection(
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
            space_id: A space an encoder serves; empty: the only encoder of ``modality``.
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

        Example:
            >>> created = await client.create_collection("products", exist_ok=True)  # doctest: +SKIP
        """
        request = proto.create_collection_request(
            name, space_id, modality, exist_ok, model, lexical, language, lexical_only
        )
        response = await self._call(
            self._admin.CreateCollection, request, timeout, idempotent=exist_ok
        )
        return CollectionCreated(proto.collection_info(response.collection), response.created)

    async def get_collection(self, name: str, *, timeout: float | None = None) -> CollectionInfo:
        """A collection's space, size, shards and versions. Retried (idempotent).

        Args:
            name: Collection name.
            timeout: Deadline in seconds; default: the client's.

        Returns:
            The collection.

        Raises:
            NotFoundError: No such collection.

        Example:
            >>> info = await client.get_collection("products")  # doctest: +SKIP
        """
        response = await self._call(
            self._admin.GetCollection, admin_pb.GetCollectionRequest(name=name), timeout,
            idempotent=True,
        )
        return proto.collection_info(response.collection)

    async def list_collections(
        self, *, page_size: int = 100, timeout: float | None = None
    ) -> AsyncIterator[CollectionInfo]:
        """Every collection, following page tokens. Each page is retried (idempotent).

        Args:
            page_size: Collections per call.
            timeout: Deadline of each page's call in seconds; default: the client's.

        Returns:
            An async iterator over the collections.

        Raises:
            ApiError: A page's call failed (raised while iterating).

        Example:
            >>> names = [c.name async for c in client.list_collections()]  # doctest: +SKIP
        """
        # A page token, not a password.
        token = ""  # nosec B105
        while True:
            response = await self._call(
                self._admin.ListCollections,
                admin_pb.ListCollectionsRequest(page_size=page_size, page_token=token),
                timeout,
                idempotent=True,
            )
            for collection in response.collections:
                yield proto.collection_info(collection)
            token = response.next_page_token
            if not token:
                return

    async def delete_collection(self, name: str, *, timeout: float | None = None) -> None:
        """Deletes a collection everywhere. Not retried.

        Args:
            name: Collection name.
            timeout: Deadline in seconds; default: the client's.

        Raises:
            NotFoundError: No such collection.

        Example:
            >>> await client.delete_collection("scratch")  # doctest: +SKIP
        """
        await self._call(
            self._admin.DeleteCollection, admin_pb.DeleteCollectionRequest(name=name), timeout,
            idempotent=False,
        )

    async def upsert_documents(
        self, collection: str, documents: Iterable[Document], *, timeout: float | None = None
    ) -> UpsertResult:
        """Embeds and writes documents, replacing those with the same id. Retried
        (keyed by id: a repeated batch leaves the same state).

        Args:
            collection: Collection to write to.
            documents: ``TextDocument``/``ImageDocument`` values or mappings with ``id``,
                ``text`` or ``image`` and optional ``metadata``.
            timeout: Deadline in seconds, retries included; default: the client's.

        Returns:
            ``UpsertResult(upserted_count, truncated_ids)``.

        Raises:
            NotFoundError: No such collection.
            InvalidArgumentError: A document is refused.

        Example:
            >>> await client.upsert_documents("products", [TextDocument("p1", "a kettle")])  # doctest: +SKIP
        """
        request = proto.upsert_request(collection, documents)
        response = await self._call(self._admin.UpsertDocuments, request, timeout, idempotent=True)
        return UpsertResult(response.upserted_count, list(response.truncated_ids))

    async def delete_documents(
        self, collection: str, ids: Iterable[str], *, timeout: float | None = None
    ) -> int:
        """Deletes documents by id. Not retried.

        Args:
            collection: Collection to delete from.
            ids: Document ids.
            timeout: Deadline in seconds; default: the client's.

        Returns:
            How many documents were deleted.

        Raises:
            NotFoundError: No such collection.

        Example:
            >>> await client.delete_documents("products", ["p1"])  # doctest: +SKIP
        """
        response = await self._call(
            self._admin.DeleteDocuments,
            admin_pb.DeleteDocumentsRequest(collection=collection, ids=list(ids)),
            timeout,
            idempotent=False,
        )
        return response.deleted_count

    async def search_batch(
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
        response = await self._call(self._search.SearchBatch, request, timeout, idempotent=True)
        return [proto.search_result(result) for result in response.results]

    async def get_documents(
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
        response = await self._call(
            self._search.GetDocuments,
            search_pb.GetDocumentsRequest(
                collection=collection, ids=list(ids), with_vectors=with_vectors
            ),
            timeout,
            idempotent=True,
        )
        return proto.documents_result(response, with_vectors)

    async def set_candidate(
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
            version: A version loaded on every shard, or "".
            shadow_fraction: Share of queries mirrored to the candidate (0..1).
            canary_weight: Share of queries the candidate answers (0..1).
            timeout: Deadline in seconds; default: the client's.

        Raises:
            NotFoundError: No such collection or version.

        Example:
            >>> await client.set_candidate("products", "v2", shadow_fraction=0.1)  # doctest: +SKIP
        """
        await self._call(
            self._admin.SetCandidate,
            admin_pb.SetCandidateRequest(
                collection=collection, version=version, shadow_fraction=shadow_fraction,
                canary_weight=canary_weight,
            ),
            timeout,
            idempotent=False,
        )

    async def shadow_report(
        self, collection: str, *, timeout: float | None = None
    ) -> ShadowReport:
        """How the candidate compares with the serving version. Retried (idempotent).

        Args:
            collection: Collection name.
            timeout: Deadline in seconds; default: the client's.

        Returns:
            The report.

        Raises:
            NotFoundError: No such collection.

        Example:
            >>> report = await client.shadow_report("products")  # doctest: +SKIP
        """
        response = await self._call(
            self._admin.GetShadowReport, admin_pb.GetShadowReportRequest(collection=collection),
            timeout, idempotent=True,
        )
        return proto.shadow_report(response)

    async def promote_candidate(
        self, collection: str, *, timeout: float | None = None
    ) -> Promotion:
        """Makes the candidate the serving version. Not retried.

        Args:
            collection: Collection name.
            timeout: Deadline in seconds; default: the client's.

        Returns:
            ``Promotion(previous_version, version)``.

        Raises:
            FailedPreconditionError: No candidate.

        Example:
            >>> promotion = await client.promote_candidate("products")  # doctest: +SKIP
        """
        response = await self._call(
            self._admin.PromoteCandidate, admin_pb.PromoteCandidateRequest(collection=collection),
            timeout, idempotent=False,
        )
        return Promotion(response.previous_version, response.version)

    async def rollback_collection(self, collection: str, *, timeout: float | None = None) -> str:
        """Serves the previous version again. Not retried.

        Args:
            collection: Collection name.
            timeout: Deadline in seconds; default: the client's.

        Returns:
            The version serving after the rollback.

        Raises:
            FailedPreconditionError: No previous version.

        Example:
            >>> version = await client.rollback_collection("products")  # doctest: +SKIP
        """
        response = await self._call(
            self._admin.RollbackCollection,
            admin_pb.RollbackCollectionRequest(collection=collection), timeout, idempotent=False,
        )
        return response.version

    async def list_spaces(self, *, timeout: float | None = None) -> list[EncoderSpace]:
        """The encoders the gateway routes to. Retried (idempotent).

        Args:
            timeout: Deadline in seconds; default: the client's.

        Returns:
            One entry per encoder.

        Raises:
            ApiError: The call failed.

        Example:
            >>> spaces = await client.list_spaces()  # doctest: +SKIP
        """
        response = await self._call(
            self._admin.ListSpaces, admin_pb.ListSpacesRequest(), timeout, idempotent=True
        )
        return proto.encoder_spaces(response)

    async def list_shards(self, *, timeout: float | None = None) -> list[ShardEndpoint]:
        """The index shards, in shard order. Retried (idempotent).

        Args:
            timeout: Deadline in seconds; default: the client's.

        Returns:
            One entry per shard.

        Raises:
            ApiError: The call failed.

        Example:
            >>> shards = await client.list_shards()  # doctest: +SKIP
        """
        response = await self._call(
            self._admin.ListShards, admin_pb.ListShardsRequest(), timeout, idempotent=True
        )
        return proto.shard_endpoints(response)

    async def begin_version(
        self, collection: str, version: str, space_id: str, *, timeout: float | None = None
    ) -> CollectionCreated:
        """Opens a pending version on every shard. Not retried.

        Args:
            collection: Collection name.
            version: The new version's id.
            space_id: Space its vectors are embedded into.
            timeout: Deadline in seconds; default: the client's.

        Returns:
            ``CollectionCreated(collection, created)``.

        Raises:
            NotFoundError: No such collection.

        Example:
            >>> opened = await client.begin_version("products", "v2", "clip@abc")  # doctest: +SKIP
        """
        response = await self._call(
            self._admin.BeginVersion,
            admin_pb.BeginVersionRequest(collection=collection, version=version, space_id=space_id),
            timeout,
            idempotent=False,
        )
        return CollectionCreated(proto.collection_info(response.collection), response.created)

    async def delete_version(
        self, collection: str, version: str, *, timeout: float | None = None
    ) -> CollectionInfo:
        """Drops a version that is not serving. Not retried.

        Args:
            collection: Collection name.
            version: The version to drop.
            timeout: Deadline in seconds; default: the client's.

        Returns:
            The collection afterwards.

        Raises:
            FailedPreconditionError: The version is serving.

        Example:
            >>> info = await client.delete_version("products", "v1")  # doctest: +SKIP
        """
        response = await self._call(
            self._admin.DeleteVersion,
            admin_pb.DeleteVersionRequest(collection=collection, version=version),
            timeout,
            idempotent=False,
        )
        return proto.collection_info(response.collection)

    async def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """The gateway's grpc.health.v1 status. Retried (idempotent).

        Args:
            service: Service name; "" for the server as a whole.
            timeout: Deadline in seconds; default: the client's.

        Returns:
            ``"SERVING"``, ``"NOT_SERVING"``, ...

        Raises:
            UnavailableError: The gateway cannot be reached.

        Example:
            >>> await client.health()  # doctest: +SKIP
            'SERVING'
        """
        response = await self._call(
            self._health.Check, health_pb2.HealthCheckRequest(service=service), timeout,
            idempotent=True,
        )
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
