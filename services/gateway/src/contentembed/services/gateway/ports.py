"""What the gateway's domain needs from the encoders and the index shards, and the values
that cross that line. Pure: no grpc, no generated code.

The gRPC adapter (``downstream.py``) implements these ports; the unit tests implement
them in memory (``tests/support/gateway_fakes.py``), so the search, ingest and rollout
logic runs in milliseconds without a model or a server.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np

from contentembed.services.common.errors import ContentEmbedError
from contentembed.services.gateway.merge import Hit

# Modalities as the encoders report them; plain strings because they are also metric
# labels and message text.
TEXT = "text"
IMAGE = "image"

ResultT = TypeVar("ResultT")
ResultT_co = TypeVar("ResultT_co", covariant=True)


@dataclass(frozen=True)
class EncoderInfo:
    space_id: str
    dim: int
    max_batch_size: int
    max_input_bytes: int
    backend: str
    modality: str  # TEXT or IMAGE
    model_id: str = ""
    model_revision: str = ""


@dataclass(frozen=True)
class Embedded:
    vectors: np.ndarray
    space_id: str
    truncated: list[bool]


@dataclass(frozen=True)
class LexicalConfig:
    """A collection's lexical (BM25) index: its presence makes the collection hybrid, or,
    with ``lexical_only``, a collection of texts alone (no vectors, space or encoder)."""

    language: str = ""  # "" is the shards' default (english); "none": lower-casing only
    lexical_only: bool = False


def is_lexical_only(lexical: LexicalConfig | None) -> bool:
    return lexical is not None and lexical.lexical_only


@dataclass(frozen=True)
class CandidateInfo:
    """A collection's candidate as the shards keep it (every gateway reads it back)."""

    version: str
    shadow_fraction: float = 0.0
    canary_weight: float = 0.0


@dataclass(frozen=True)
class ShardCollection:
    name: str
    space_id: str
    dim: int
    item_count: int
    version: str
    version_spaces: dict[str, str]  # loaded and pending versions
    versions: tuple[str, ...] = ()  # loaded
    pending_versions: tuple[str, ...] = ()
    versions_fingerprint: str = ""
    version_digests: dict[str, str] | None = None
    lexical: LexicalConfig | None = None  # None: dense only
    candidate: CandidateInfo | None = None

    def spaces_written(self) -> set[str]:
        """Every space one of its versions (loaded or pending) is in: a write reaches all."""
        return set(self.version_spaces.values()) | {self.space_id}


@dataclass(frozen=True)
class ShardAnswer:
    shard_index: int
    hits: list[Hit]
    space_id: str
    version: str
    # BM25 hits of the lexical query, best first (only when the call carried a text).
    lexical_hits: list[Hit] = field(default_factory=list)
    # The answer's encoded size as it arrived (0: unknown): what coalescing learns the
    # size of a hit from.
    encoded_bytes: int = 0


@dataclass(frozen=True)
class ShardBatchAnswer(ShardAnswer):
    """A shard's answer to a batch of queries: ``results`` one hit list per query vector,
    ``lexical_results`` one per query text, in order; ``hits`` and ``lexical_hits`` (the
    base's) hold them all, for the hit count."""

    results: tuple[list[Hit], ...] = ()
    lexical_results: tuple[list[Hit], ...] = ()


@dataclass(frozen=True)
class StoredItem:
    """An item as a shard stores it (serving version)."""

    id: str
    vector: np.ndarray
    metadata: dict[str, Any]
    shard_index: int
    text: str = ""  # what it was written with; "" for none (an image, a vector)


class Pending(Protocol[ResultT_co]):
    """A started downstream call. ``result()`` waits and returns the converted answer or
    raises a ``ContentEmbedError``; ``cancel()`` lets a caller that went away stop it."""

    def result(self) -> ResultT_co: ...

    def cancel(self) -> None: ...

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        """``callback(self)`` once the call has ended (at once if it has); it runs on
        whichever thread ends the call and must not block."""
        ...

    @property
    def latency_ms(self) -> float: ...


def outcomes_of(calls: Sequence[Pending[ResultT]]) -> list[ResultT | ContentEmbedError]:
    """Waits for every call; each result or its failure, in call order."""
    found: list[ResultT | ContentEmbedError] = []
    for call in calls:
        try:
            found.append(call.result())
        except ContentEmbedError as error:
            found.append(error)
    return found


def wait_all(calls: Sequence[Pending[ResultT]]) -> list[ResultT]:
    """Waits for every call (none is left running unobserved), then raises the first
    failure in call order, if any."""
    found = outcomes_of(calls)
    for outcome in found:
        if isinstance(outcome, ContentEmbedError):
            raise outcome
    return found  # type: ignore[return-value]


class EncoderPort(Protocol):
    endpoint: str
    label: str  # "encoder HOST:PORT", for messages

    def info(self, deadline: float, wait_for_ready: bool = False) -> EncoderInfo: ...

    def embed(self, contents: Sequence[str | bytes], deadline: float) -> Pending[Embedded]:
        """Texts (str) or encoded images (bytes), one vector each, in order."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class ReplicaStatus:
    """A replica of a shard as it sees itself: from ``ReplicationService.GetReplicaState``
    (``replica_state``), or from the ``ShardInfo.replica`` of an answer (``limits``), which
    alone carries ``in_sync_replicas`` and ``primary_id``."""

    replica_id: str
    primary: bool
    term: int
    in_sync: bool  # the primary counts it in sync (as it was last told)
    in_sync_replicas: tuple[str, ...] = ()  # from the primary only, itself included
    primary_id: str = ""  # "" when it knows none (or did not say)


@dataclass(frozen=True)
class ShardLimits:
    """What one shard accepts per request; 0: the shard does not say. ``replica``: which
    replica answered and its standing (None: a shard that does not say)."""

    max_top_k: int = 0
    max_queries_per_batch: int = 0
    max_ids_per_call: int = 0
    max_ef: int = 0
    replica: ReplicaStatus | None = None


class ShardPort(Protocol):
    shard_index: int
    endpoint: str
    label: str

    def limits(self, deadline: float) -> Pending[ShardLimits]: ...

    def search(
        self, collection: str, query: np.ndarray | None, space_id: str, top_k: int,
        deadline: float, version: str = "", exact: bool = False, ef: int = 0,
        metadata_filter: Mapping[str, Any] | None = None, text: str = "",
    ) -> Pending[ShardAnswer]:
        """The shard's best ``top_k`` by cosine to ``query`` (``hits``) and, with a
        ``text``, by BM25 (``lexical_hits``), in one call; no ``query``: lexical only.
        ``ef`` 0 is the collection's default; ``exact`` applies to the vector side; the
        filter to both (an empty or absent one matches every item, grammar:
        common/filters.py)."""
        ...

    def search_batch(
        self, collection: str, queries: np.ndarray | None, space_id: str, top_k: int,
        deadline: float, ef: int = 0, metadata_filter: Mapping[str, Any] | None = None,
        texts: Sequence[str] = (),
    ) -> Pending[ShardBatchAnswer]:
        """The shard's best ``top_k`` for each row of ``queries`` and each of ``texts``
        (none, or one per row; no ``queries``: lexical only), serving version."""
        ...

    def get_vector(
        self, collection: str, item_id: str, deadline: float
    ) -> Pending[np.ndarray | None]:
        """The stored vector of an item of the serving version; None when absent."""
        ...

    def get_items(
        self, collection: str, ids: Sequence[str], deadline: float
    ) -> Pending[list[StoredItem]]:
        """The stored items of the serving version among ``ids`` (absent ones left out)."""
        ...

    def upsert(
        self, collection: str, space_id: str, ids: Sequence[str], vectors: np.ndarray,
        metadata: Sequence[dict[str, Any]], deadline: float, versions_fingerprint: str = "",
        texts: Sequence[str] | None = None,
    ) -> Pending[int]:
        """Writes every version of the collection in ``space_id``, each item with its text
        ("" for none); with a fingerprint, the shard refuses (ABORTED VERSIONS_CHANGED)
        when its versions changed since."""
        ...

    def delete_items(self, collection: str, ids: Sequence[str], deadline: float) -> Pending[int]: ...

    def create_collection(
        self, name: str, space_id: str, dim: int, exist_ok: bool, deadline: float,
        lexical: LexicalConfig | None = None,
    ) -> Pending[tuple[ShardCollection, bool]]: ...

    def get_collection(self, name: str, deadline: float) -> Pending[ShardCollection]: ...

    def list_collections(
        self, page_size: int, after: str, deadline: float
    ) -> Pending[tuple[list[ShardCollection], bool]]:
        """Up to ``page_size`` collections named after ``after``, by name; True when more
        follow."""
        ...

    def activate_version(self, name: str, version: str, deadline: float) -> Pending[str]:
        """Returns the version that served before."""
        ...

    def rollback_version(self, name: str, deadline: float) -> Pending[str]:
        """Returns the version now serving."""
        ...

    def begin_version(
        self, name: str, version: str, space_id: str, dim: int, deadline: float
    ) -> Pending[tuple[ShardCollection, bool]]: ...

    def delete_version(self, name: str, version: str, deadline: float) -> Pending[ShardCollection]: ...

    def set_candidate(
        self, name: str, candidate: CandidateInfo | None, deadline: float
    ) -> Pending[ShardCollection]:
        """Records the collection's candidate on the shard (None clears it)."""
        ...

    def delete_collection(self, name: str, deadline: float) -> Pending[None]: ...

    def close(self) -> None: ...


class ReplicaPort(ShardPort, Protocol):
    """One replica of a shard (``replicas.ReplicatedShard`` spreads a shard's calls over
    them): a shard port that also says where it stands in its replica group."""

    def patient(self) -> ReplicaPort:
        """This replica's port whose calls wait for its connection to come back (within
        their deadline) instead of failing at once."""
        ...

    def replica_state(self, deadline: float) -> Pending[ReplicaStatus]:
        """Its role, term and in_sync (``in_sync_replicas`` empty: ``limits`` has them).
        Answered even while the replica is not ready for reads."""
        ...
