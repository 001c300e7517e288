"""In-memory encoders and index shards implementing the gateway's ports, so the gateway's
domain runs in unit tests without a model, a server or grpc.

They keep what the gateway's logic depends on — spaces, versions and their fingerprints,
the shards' refusals — and nothing of an index's internals: search is exact cosine, and
the lexical side a bare idf sum over the query's words (enough to rank, not BM25).
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np
from prometheus_client import CollectorRegistry

from contentembed.services.common.errors import (
    Aborted,
    AlreadyExists,
    ContentEmbedError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from contentembed.services.common.filters import matches
from contentembed.services.gateway.gateway import Gateway, GatewayConfig
from contentembed.services.gateway.merge import Hit
from contentembed.services.gateway.metrics import GatewayMetrics
from contentembed.services.gateway.ports import (
    TEXT,
    CandidateInfo,
    Embedded,
    EncoderInfo,
    LexicalConfig,
    ShardAnswer,
    ShardBatchAnswer,
    ShardCollection,
    ShardLimits,
    StoredItem,
)

T = TypeVar("T")


class FakePending(Generic[T]):
    """A call that already finished: with its value, or with its error."""

    def __init__(self, run: Callable[[], T]) -> None:
        self.cancelled = False
        try:
            self._value: T | None = run()
            self._error: ContentEmbedError | None = None
        except ContentEmbedError as error:
            self._value, self._error = None, error

    def result(self) -> T:
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]

    def cancel(self) -> None:
        self.cancelled = True

    def add_done_callback(self, callback: Callable[[FakePending[T]], None]) -> None:
        callback(self)  # it has finished already

    @property
    def latency_ms(self) -> float:
        return 0.1


def vector_for(space: str, content: str | bytes, dim: int) -> np.ndarray:
    """The same content in the same space gives the same unit vector; another space, another."""
    data = content.encode() if isinstance(content, str) else content
    seed = int.from_bytes(hashlib.sha256(space.encode() + b"\0" + data).digest()[:8], "little")
    vector = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return vector / np.linalg.norm(vector)


class FakeEncoder:
    def __init__(
        self, space_id: str, modality: str = TEXT, dim: int = 8, max_batch_size: int = 64,
        max_input_bytes: int = 10_000, endpoint: str | None = None,
    ) -> None:
        self.endpoint = endpoint or f"fake-{modality}-{space_id}"
        self.label = f"encoder {self.endpoint}"
        self.space_id = space_id
        self.modality = modality
        self.dim = dim
        self.max_batch_size = max_batch_size
        self.max_input_bytes = max_input_bytes
        self.batches: list[list[str | bytes]] = []  # every embed call's inputs
        self.down = False

    def info(self, deadline: float, wait_for_ready: bool = False) -> EncoderInfo:
        if self.down:
            raise Unavailable(f"{self.label}: down")
        return EncoderInfo(self.space_id, self.dim, self.max_batch_size, self.max_input_bytes,
                           "fake", self.modality)

    def embed(self, contents: Sequence[str | bytes], deadline: float) -> FakePending[Embedded]:
        def run() -> Embedded:
            if self.down:
                raise Unavailable(f"{self.label}: down")
            self.batches.append(list(contents))
            vectors = np.stack([vector_for(self.space_id, c, self.dim) for c in contents])
            return Embedded(vectors, self.space_id, [False] * len(contents))

        return FakePending(run)

    def close(self) -> None:
        pass


@dataclass
class FakeCollection:
    name: str
    serving: str
    version_spaces: dict[str, str]  # every version, loaded or pending
    pending: set[str] = field(default_factory=set)
    previous: list[str] = field(default_factory=list)
    dim: int = 8
    # version -> id -> (vector, metadata)
    items: dict[str, dict[str, tuple[np.ndarray, dict[str, Any]]]] = field(default_factory=dict)
    changes: int = 0  # bumped by every version change: the fingerprint
    lexical: LexicalConfig | None = None
    # version -> id -> the text it was written with
    texts: dict[str, dict[str, str]] = field(default_factory=dict)
    candidate: CandidateInfo | None = None

    def fingerprint(self) -> str:
        return f"{self.changes}:{sorted(self.version_spaces.items())}"


def words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower()))


@dataclass(frozen=True)
class SearchCall:
    """What one search or batch call asked of a fake shard."""

    top_k: int
    vectors: int  # query vectors sent (0: lexical only)
    texts: tuple[str, ...]  # lexical queries sent
    exact: bool = False
    metadata_filter: Any = None
    version: str = ""


class FakeShard:
    """One index shard. ``fail[method]`` makes that method raise the given error (once
    per entry in the list, then succeed); ``down`` makes every call fail."""

    def __init__(self, shard_index: int) -> None:
        self.shard_index = shard_index
        self.shard_limits = ShardLimits()  # says nothing: trusted
        self.endpoint = f"fake-shard-{shard_index}"
        self.label = f"index shard {shard_index} ({self.endpoint})"
        self.collections: dict[str, FakeCollection] = {}
        self.fail: dict[str, list[ContentEmbedError]] = {}
        self.down = False
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.searches: list[SearchCall] = []  # every search and search_batch, in order
        # Run before an upsert is checked: lets a test change versions mid-write.
        self.before_upsert: Callable[[], None] | None = None

    # -- helpers for tests -----------------------------------------------------------
    def add_collection(
        self, name: str, version: str, space: str, dim: int = 8,
        lexical: LexicalConfig | None = None,
    ) -> FakeCollection:
        collection = FakeCollection(name, version, {version: space}, dim=dim, items={version: {}},
                                    lexical=lexical, texts={version: {}})
        self.collections[name] = collection
        return collection

    def add_version(self, name: str, version: str, space: str, pending: bool = False) -> None:
        collection = self.collections[name]
        collection.version_spaces[version] = space
        collection.items.setdefault(version, {})
        collection.texts.setdefault(version, {})
        if pending:
            collection.pending.add(version)
        collection.changes += 1

    def _call(self, method: str, args: tuple[Any, ...], run: Callable[[], T]) -> FakePending[T]:
        self.calls.append((method, args))

        def checked() -> T:
            if self.down:
                raise Unavailable(f"{self.label}: connection refused")
            queued = self.fail.get(method)
            if queued:
                raise queued.pop(0)
            return run()

        return FakePending(checked)

    def _get(self, name: str) -> FakeCollection:
        collection = self.collections.get(name)
        if collection is None:
            raise NotFound(f"{self.label}: collection {name!r} not found", reason="COLLECTION_NOT_FOUND")
        return collection

    def _describe(self, c: FakeCollection) -> ShardCollection:
        count = len(c.items.get(c.serving, {}))
        return ShardCollection(
            name=c.name, space_id=c.version_spaces[c.serving], dim=c.dim, item_count=count,
            version=c.serving, version_spaces=dict(c.version_spaces),
            versions=tuple(sorted(set(c.version_spaces) - c.pending)),
            pending_versions=tuple(sorted(c.pending)), versions_fingerprint=c.fingerprint(),
            lexical=c.lexical, candidate=c.candidate,
        )

    def _lexical(self, c: FakeCollection, version: str, text: str, top_k: int,
                 metadata_filter: Any) -> list[Hit]:
        if c.lexical is None:
            raise FailedPrecondition(f"{self.label}: {c.name} has no lexical index",
                                     reason="LEXICAL_NOT_ENABLED")
        texts = c.texts.get(version, {})
        documents = {item_id: words(t) for item_id, t in texts.items()}
        scored = []
        for item_id, (_, metadata) in c.items[version].items():
            if metadata_filter and not matches(metadata, metadata_filter):
                continue
            score = 0.0
            for word in words(text) & documents.get(item_id, set()):
                df = sum(1 for d in documents.values() if word in d)
                score += math.log(1 + (len(documents) - df + 0.5) / (df + 0.5))
            if score > 0:
                scored.append(Hit(item_id, score, self.shard_index, metadata, c.name))
        scored.sort(key=lambda h: (-h.score, h.id))
        return scored[:top_k]

    # -- the port --------------------------------------------------------------------
    def search(self, collection, query, space_id, top_k, deadline, version="", exact=False, ef=0,
               metadata_filter=None, text=""):
        self.searches.append(SearchCall(top_k, 0 if query is None else 1, (text,) if text else (),
                                        exact, metadata_filter, version))
        return self._call("search", (collection, space_id, version, exact, ef, metadata_filter),
                          lambda: self._search(collection, query, space_id, top_k, version,
                                               metadata_filter, text))

    def _search(self, collection, query, space_id, top_k, version, metadata_filter, text):
        c = self._get(collection)
        answered = version or c.serving
        if answered not in c.version_spaces or answered in c.pending:
            raise FailedPrecondition(f"version {answered} not loaded", reason="VERSION_NOT_LOADED")
        if not 1 <= top_k <= 1000:
            raise InvalidArgument(f"top_k {top_k}", reason="TOP_K_OUT_OF_RANGE")
        if query is None and not text:
            raise InvalidArgument("neither a vector nor a text", reason="EMPTY_QUERY")
        scored: list[Hit] = []
        if query is not None:
            if c.version_spaces[answered] != space_id:
                raise FailedPrecondition(
                    f"{self.label}: query space {space_id}, version {answered} is in "
                    f"{c.version_spaces[answered]}", reason="SPACE_MISMATCH")
            scored = [
                Hit(item_id, float(vector @ query), self.shard_index, metadata, collection)
                for item_id, (vector, metadata) in c.items[answered].items()
                if not metadata_filter or matches(metadata, metadata_filter)
            ]
            scored.sort(key=lambda h: (-h.score, h.id))
        lexical = self._lexical(c, answered, text, top_k, metadata_filter) if text else []
        return ShardAnswer(self.shard_index, scored[:top_k], space_id, answered, lexical)

    def get_vector(self, collection, item_id, deadline):
        def run() -> np.ndarray | None:
            c = self._get(collection)
            found = c.items.get(c.serving, {}).get(item_id)
            return None if found is None else found[0]

        return self._call("get_vector", (collection, item_id), run)

    def search_batch(self, collection, queries, space_id, top_k, deadline, ef=0, metadata_filter=None,
                     texts=()):
        rows = [] if queries is None else list(queries)
        self.searches.append(SearchCall(top_k, len(rows), tuple(texts), False, metadata_filter))

        def run() -> ShardBatchAnswer:
            if texts and rows and len(texts) != len(rows):
                raise InvalidArgument("texts and queries differ in count", reason="BATCH_MISMATCH")
            count = len(rows) or len(texts)
            found = [
                self._search(collection, rows[n] if rows else None, space_id, top_k, "",
                             metadata_filter, texts[n] if texts else "")
                for n in range(count)
            ]
            results = tuple(answer.hits for answer in found)
            lexical = tuple(answer.lexical_hits for answer in found) if texts else ()
            return ShardBatchAnswer(self.shard_index, [h for hits in results for h in hits],
                                    found[0].space_id, found[0].version,
                                    [h for hits in lexical for h in hits], results=results,
                                    lexical_results=lexical)

        return self._call("search_batch", (collection, space_id, ef, metadata_filter), run)

    def get_items(self, collection, ids, deadline):
        def run() -> list[StoredItem]:
            c = self._get(collection)
            stored = c.items.get(c.serving, {})
            texts = c.texts.get(c.serving, {})
            return [
                StoredItem(i, stored[i][0], dict(stored[i][1]), self.shard_index, texts.get(i, ""))
                for i in ids if i in stored
            ]

        return self._call("get_items", (collection, tuple(ids)), run)

    def upsert(self, collection, space_id, ids, vectors, metadata, deadline, versions_fingerprint="",
               texts=None):
        def run() -> int:
            if self.before_upsert is not None:
                hook, self.before_upsert = self.before_upsert, None
                hook()
            c = self._get(collection)
            if versions_fingerprint and versions_fingerprint != c.fingerprint():
                raise Aborted(f"{self.label}: versions changed", reason="VERSIONS_CHANGED")
            for version, space in c.version_spaces.items():
                if space == space_id:
                    for item_id, vector, meta, text in zip(ids, vectors, metadata,
                                                           texts or [""] * len(ids)):
                        c.items[version][item_id] = (np.asarray(vector), dict(meta))
                        c.texts.setdefault(version, {})[item_id] = text
            return len(ids)

        return self._call("upsert", (collection, space_id, tuple(ids)), run)

    def delete_items(self, collection, ids, deadline):
        def run() -> int:
            c = self._get(collection)
            deleted = 0
            for items in c.items.values():
                deleted = max(deleted, sum(1 for i in ids if items.pop(i, None) is not None))
            for texts in c.texts.values():
                for i in ids:
                    texts.pop(i, None)
            return deleted

        return self._call("delete_items", (collection, tuple(ids)), run)

    def create_collection(self, name, space_id, dim, exist_ok, deadline, lexical=None):
        def run() -> tuple[ShardCollection, bool]:
            if name in self.collections:
                if not exist_ok:
                    raise AlreadyExists(f"collection {name!r} exists")
                if self.collections[name].lexical != lexical:
                    raise FailedPrecondition("lexical differs", reason="LEXICAL_MISMATCH")
                return self._describe(self.collections[name]), False
            return self._describe(self.add_collection(name, "v0", space_id, dim, lexical)), True

        return self._call("create_collection", (name, space_id), run)

    def get_collection(self, name, deadline):
        return self._call("get_collection", (name,), lambda: self._describe(self._get(name)))

    def limits(self, deadline):
        return self._call("limits", (), lambda: self.shard_limits)

    def list_collections(self, page_size, after, deadline):
        def run() -> tuple[list[ShardCollection], bool]:
            names = sorted(n for n in self.collections if n > after)
            return ([self._describe(self.collections[n]) for n in names[:page_size]],
                    len(names) > page_size)

        return self._call("list_collections", (page_size, after), run)

    def activate_version(self, name, version, deadline):
        def run() -> str:
            c = self._get(name)
            if version not in c.version_spaces or version in c.pending:
                raise FailedPrecondition(f"version {version} not loaded", reason="VERSION_NOT_LOADED")
            before = c.serving
            if before != version:
                c.previous.append(before)
                c.serving = version
                c.changes += 1
            if c.candidate is not None and c.candidate.version == version:
                c.candidate = None  # as a shard: a candidate that serves is none any more
            return before

        return self._call("activate_version", (name, version), run)

    def rollback_version(self, name, deadline):
        def run() -> str:
            c = self._get(name)
            if not c.previous:
                raise FailedPrecondition("nothing to roll back to", reason="NO_PREVIOUS_VERSION")
            c.serving = c.previous.pop()
            c.changes += 1
            return c.serving

        return self._call("rollback_version", (name,), run)

    def begin_version(self, name, version, space_id, dim, deadline):
        def run() -> tuple[ShardCollection, bool]:
            c = self._get(name)
            created = version not in c.version_spaces
            if created:
                self.add_version(name, version, space_id, pending=True)
            return self._describe(c), created

        return self._call("begin_version", (name, version, space_id), run)

    def set_candidate(self, name, candidate, deadline):
        def run() -> ShardCollection:
            c = self._get(name)
            if candidate is not None and (candidate.version not in c.version_spaces
                                          or candidate.version in c.pending):
                raise FailedPrecondition(f"version {candidate.version} not loaded",
                                         reason="VERSION_NOT_LOADED")
            c.candidate = candidate
            return self._describe(c)

        return self._call("set_candidate", (name, candidate), run)

    def delete_version(self, name, version, deadline):
        def run() -> ShardCollection:
            c = self._get(name)
            if version not in c.version_spaces:
                raise NotFound(f"version {version} not found", reason="VERSION_NOT_FOUND")
            del c.version_spaces[version]
            if c.candidate is not None and c.candidate.version == version:
                c.candidate = None
            c.items.pop(version, None)
            c.texts.pop(version, None)
            c.pending.discard(version)
            c.changes += 1
            return self._describe(c)

        return self._call("delete_version", (name, version), run)

    def delete_collection(self, name, deadline):
        def run() -> None:
            self._get(name)
            del self.collections[name]

        return self._call("delete_collection", (name,), run)

    def close(self) -> None:
        pass


def fake_gateway(
    encoders: Sequence[FakeEncoder], shards: Sequence[FakeShard], **config: Any
) -> Gateway:
    """A gateway over fakes, its routes asked once (as ``connect`` would, without the
    refresh thread)."""
    gateway = Gateway(
        encoders, shards, GatewayMetrics(CollectorRegistry(), 0.3), GatewayConfig(**config)
    )
    gateway.router.refresh(time.monotonic() + 1)
    return gateway


def soon(seconds: float = 5.0) -> float:
    """A deadline for a unit test's call."""
    return time.monotonic() + seconds
