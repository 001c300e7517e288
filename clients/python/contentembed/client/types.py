"""Typed inputs and results of the SDK.

Results are frozen dataclasses; the small multi-value results (:class:`UpsertResult`,
:class:`CollectionCreated`, :class:`Promotion`) are named tuples, so code that unpacks
them (``count, truncated = client.upsert_documents(...)``) keeps working while new code
reads fields by name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

__all__ = [
    "CollectionCreated",
    "CollectionInfo",
    "Document",
    "EncoderSpace",
    "Hit",
    "ImageDocument",
    "Promotion",
    "SearchResult",
    "ShadowReport",
    "ShardEndpoint",
    "ShardResult",
    "TextDocument",
    "UpsertResult",
]


# -- inputs ----------------------------------------------------------------------------
@dataclass(frozen=True)
class TextDocument:
    """A document the text encoder embeds.

    Attributes:
        id: Unique within the collection; upserting an existing id replaces it.
        text: The text to embed (the encoder truncates past its token limit).
        metadata: JSON-like values returned with each hit.
    """

    id: str
    text: str
    metadata: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class ImageDocument:
    """A document the image encoder embeds.

    Attributes:
        id: Unique within the collection; upserting an existing id replaces it.
        image: Encoded image bytes (JPEG, PNG, ...), not pixels.
        metadata: JSON-like values returned with each hit.
    """

    id: str
    image: bytes
    metadata: Mapping[str, Any] | None = None


#: What ``upsert_documents`` accepts: a typed document, or a mapping with ``id``,
#: ``text`` or ``image`` and optional ``metadata``.
Document = TextDocument | ImageDocument | Mapping[str, Any]


# -- results ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Hit:
    """One search result: its id, score, metadata and where it came from.

    ``score`` is the cosine similarity of a dense answer, the BM25 score of a lexical one
    and the fusion score of a hybrid one (see ``SearchResult.mode``). Each retriever's own
    score and rank (from 1) of the hit are set when that retriever found it among its
    candidates, None otherwise: which retriever found it, and how well.
    """

    id: str
    score: float
    metadata: dict[str, Any]
    shard_index: int
    collection: str = ""
    dense_score: float | None = None
    lexical_score: float | None = None
    dense_rank: int | None = None
    lexical_rank: int | None = None


@dataclass(frozen=True)
class StoredDocument:
    """A stored document: its id, metadata and, when asked for, its vector (float32
    values in the collection's space; None unless ``with_vectors``)."""

    id: str
    metadata: dict[str, Any]
    shard_index: int
    vector: list[float] | None = None
    # The text it was written with ("" when it had none, or was written as a vector).
    text: str = ""


@dataclass(frozen=True)
class DocumentsResult:
    """The documents found, in request order, and the ids the collection does not hold."""

    documents: list[StoredDocument]
    missing_ids: list[str]


@dataclass(frozen=True)
class ShardResult:
    """How one index shard answered a search."""

    shard_index: int
    ok: bool
    error: str
    hit_count: int
    latency_ms: float


@dataclass(frozen=True)
class SearchResult:
    """A search's hits (best first) with the space and version that answered."""

    hits: list[Hit]
    space_id: str
    version: str
    partial: bool
    shards: list[ShardResult]
    latency_ms: dict[str, float] = field(default_factory=dict)
    query_truncated: bool = False
    cache_hit: bool = False
    fused: bool = False
    # The versions that answered and the spaces searched, as lists (``version`` and
    # ``space_id`` join them with ","), sorted.
    versions: list[str] = field(default_factory=list)
    space_ids: list[str] = field(default_factory=list)
    # The retrieval that answered ("dense", "lexical" or "hybrid"; "" from a gateway that
    # predates hybrid retrieval) and, for hybrid, the fusion ("rrf" or "minmax"; else "").
    mode: str = ""
    fusion: str = ""


@dataclass(frozen=True)
class CollectionInfo:
    """A collection: its space, size, shards and versions."""

    name: str
    space_id: str
    dim: int
    item_count: int
    shard_count: int
    version: str
    # Loaded on every shard; pending ones (opened by a build, waiting for its bundle).
    versions: list[str] = field(default_factory=list)
    pending_versions: list[str] = field(default_factory=list)
    version_spaces: dict[str, str] = field(default_factory=dict)
    candidate_version: str = ""
    # Each shard's serving version, sorted and unique (``version`` joins them with ",").
    serving_versions: list[str] = field(default_factory=list)
    # A lexical (BM25) index beside the vectors: a hybrid collection, and its language
    # ("english" unless it was created with another; "" when not lexical).
    lexical: bool = False
    lexical_language: str = ""
    # Only the lexical index (``lexical`` is True too): no vectors, space ("") or encoder;
    # every search of it is lexical.
    lexical_only: bool = False


@dataclass(frozen=True)
class EncoderSpace:
    """An encoder the gateway routes to."""

    space_id: str
    model_id: str
    model_revision: str
    dim: int
    modality: str  # "text" or "image"
    address: str
    backend: str
    max_batch_size: int
    max_input_bytes: int


@dataclass(frozen=True)
class ShardEndpoint:
    """An index shard the gateway fans out to."""

    shard_index: int
    address: str


@dataclass(frozen=True)
class ShadowReport:
    """How a candidate version compares with the serving one on mirrored queries."""

    primary_version: str
    candidate_version: str
    candidate_space_id: str
    queries: int
    failures: int
    mean_overlap_at_k: float
    mean_rank_correlation: float
    mean_latency_delta_ms: float
    canary_queries: int


class UpsertResult(NamedTuple):
    """What ``upsert_documents`` wrote."""

    upserted_count: int
    """Documents written."""
    truncated_ids: list[str]
    """Ids whose text the model truncated to its input limit."""


class CollectionCreated(NamedTuple):
    """A collection (or version) that exists now, and whether this call made it."""

    collection: CollectionInfo
    created: bool


class Promotion(NamedTuple):
    """The versions around a promotion."""

    previous_version: str
    version: str
