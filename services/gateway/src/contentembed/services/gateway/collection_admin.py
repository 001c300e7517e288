"""Creating, describing, listing and deleting collections across the shards. Pure: no
grpc."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from contentembed.services.common.errors import AlreadyExists, ContentEmbedError, InvalidArgument
from contentembed.services.common.paging import PageTokens, page_size_of
from contentembed.services.common.validation import validate_collection_name
from contentembed.services.gateway.ports import (
    TEXT,
    LexicalConfig,
    ShardCollection,
    ShardPort,
    is_lexical_only,
    outcomes_of,
    wait_all,
)
from contentembed.services.gateway.routing import EncoderRouter

log = logging.getLogger(__name__)
LIST_COLLECTIONS = "ListCollections"  # the scope of the gateway's page tokens


@dataclass(frozen=True)
class CollectionSummary:
    name: str
    space_id: str
    dim: int
    item_count: int
    shard_count: int
    version: str  # the serving versions joined with ",": one unless shards disagree
    versions: list[str] = field(default_factory=list)  # loaded on every shard
    pending_versions: list[str] = field(default_factory=list)  # pending on some shard
    version_spaces: dict[str, str] = field(default_factory=dict)
    candidate_version: str = ""
    serving_versions: list[str] = field(default_factory=list)  # what ``version`` joins
    lexical: LexicalConfig | None = None  # the BM25 index beside the vectors; None: none


def summarize(per_shard: Sequence[ShardCollection], candidate: str = "") -> CollectionSummary:
    first = per_shard[0]
    serving = sorted({c.version for c in per_shard})
    loaded = set.intersection(*(set(c.versions) for c in per_shard))
    spaces: dict[str, str] = {}
    for collection in per_shard:
        spaces.update(collection.version_spaces)
    return CollectionSummary(
        name=first.name,
        space_id=first.space_id,
        dim=first.dim,
        item_count=sum(c.item_count for c in per_shard),
        shard_count=len(per_shard),
        version=",".join(serving),
        versions=sorted(loaded),
        pending_versions=sorted({v for c in per_shard for v in c.pending_versions}),
        version_spaces=spaces,
        candidate_version=candidate,
        serving_versions=serving,
        # Created on every shard with the same config (CreateCollection sends it to all).
        lexical=first.lexical,
    )


class CollectionAdmin:
    def __init__(
        self,
        router: EncoderRouter,
        shards: Sequence[ShardPort],
        candidate_version: Callable[[str], str],
        on_deleted: Callable[[str], None],
        page_tokens: PageTokens | None = None,
    ) -> None:
        self.router = router
        self.page_tokens = page_tokens or PageTokens()
        self.shards = list(shards)
        # The summaries name a collection's candidate, which rollout keeps.
        self._candidate_version = candidate_version
        # What other parts remember of a deleted collection must go with it.
        self._on_deleted = on_deleted

    def summary(self, per_shard: Sequence[ShardCollection]) -> CollectionSummary:
        return summarize(per_shard, self._candidate_version(per_shard[0].name))

    def create(
        self, name: str, space_id: str, exist_ok: bool, deadline: float, modality: str = TEXT,
        model: str = "", lexical: LexicalConfig | None = None,
    ) -> tuple[CollectionSummary, bool]:
        """In ``space_id``; else in the space of ``model``; else in that of the only encoder
        of ``modality``. With ``lexical``, every shard keeps a BM25 index beside the
        vectors (the shards check the language; exist_ok with another config is
        FAILED_PRECONDITION LEXICAL_MISMATCH from the shards). A lexical-only one has no
        space and no encoder: it is created with space "" and dim 0, whatever encoders run."""
        validate_collection_name(name)
        if is_lexical_only(lexical):
            if space_id or model or modality != TEXT:
                raise InvalidArgument(
                    "a lexical-only collection has no embedding space: leave space_id, model "
                    "and modality unset", reason="BAD_LEXICAL_CONFIG",
                )
            return self._create_everywhere(name, "", 0, exist_ok, deadline, lexical)
        if space_id:
            info = self.router.info_for_space(space_id)
        elif model:
            info = self.router.space_of_model(model)
        else:
            info = self.router.default_space(modality)
        return self._create_everywhere(name, info.space_id, info.dim, exist_ok, deadline, lexical)

    def _create_everywhere(
        self, name: str, space_id: str, dim: int, exist_ok: bool, deadline: float,
        lexical: LexicalConfig | None,
    ) -> tuple[CollectionSummary, bool]:
        """Creates the collection on every shard, or on none. Each shard is asked with
        exist_ok (a shard that has it with the same spec says so; another spec is
        FAILED_PRECONDITION), so a create that failed on some shards and is tried again
        completes the rest. When a shard fails (one restarting: NOT_READY), the shards that
        this call created it on drop it again, and the failure is the answer: before, the
        collection stayed on some shards only (NOT_FOUND on search, ALREADY_EXISTS on
        create). Without exist_ok, ALREADY_EXISTS only when every shard already had it."""
        outcomes = outcomes_of(
            [s.create_collection(name, space_id, dim, True, deadline, lexical) for s in self.shards]
        )
        failures = [o for o in outcomes if isinstance(o, ContentEmbedError)]
        if failures:
            made_here = [
                shard for shard, outcome in zip(self.shards, outcomes)
                if not isinstance(outcome, ContentEmbedError) and outcome[1]
            ]
            for outcome in outcomes_of([s.delete_collection(name, deadline) for s in made_here]):
                if isinstance(outcome, ContentEmbedError):
                    log.warning("could not undo a partial create (retrying the create "
                                "completes it)", extra={"collection": name, "error": outcome.message})
            raise failures[0]
        results = [o for o in outcomes if not isinstance(o, ContentEmbedError)]
        created = any(made for _, made in results)
        if not created and not exist_ok:
            raise AlreadyExists(f"collection {name!r} already exists")
        return self.summary([c for c, _ in results]), created

    def get(self, name: str, deadline: float) -> CollectionSummary:
        validate_collection_name(name)
        return self.summary(wait_all([s.get_collection(name, deadline) for s in self.shards]))

    def list(
        self, page_size: int, page_token: str, deadline: float
    ) -> tuple[list[CollectionSummary], str]:
        """A page of collections by name, and this gateway's token of the next ("" after
        the last). Every shard is asked for the names after where the page token says the
        previous page ended: each holds every collection, so each answers the same page."""
        size = page_size_of(page_size)
        after = self.page_tokens.read(LIST_COLLECTIONS, page_token)
        pages = wait_all([s.list_collections(size, after, deadline) for s in self.shards])
        by_name: dict[str, list[ShardCollection]] = defaultdict(list)
        for collections, _ in pages:
            for collection in collections:
                by_name[collection.name].append(collection)
        names = sorted(by_name)
        more = len(names) > size or any(more for _, more in pages)
        summaries = [self.summary(by_name[name]) for name in names[:size]]
        token = self.page_tokens.issue(LIST_COLLECTIONS, summaries[-1].name) if more and summaries else ""
        return summaries, token

    def delete(self, name: str, deadline: float) -> None:
        validate_collection_name(name)
        wait_all([s.delete_collection(name, deadline) for s in self.shards])
        self._on_deleted(name)
