"""Where a query goes: which encoder embeds into a space, and which space a collection is
in. Pure: no grpc.

Routing is by space: a collection is bound to a space (its serving version's), every
encoder reports the space and modality it serves, and a query is embedded by the encoder
of (collection space, query modality) — so a text query reaches an image collection only
through an encoder of the same space (CLIP), and never with vectors of another space.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from contentembed.services.common.errors import (
    CLIENT_ERROR_CODES,
    ContentEmbedError,
    FailedPrecondition,
)
from contentembed.services.common.validation import shown
from contentembed.services.gateway.ports import (
    TEXT,
    EncoderInfo,
    EncoderPort,
    LexicalConfig,
    ShardPort,
)

log = logging.getLogger(__name__)


class EncoderRouter:
    """Which encoder serves (space, modality), refreshed from the encoders themselves."""

    def __init__(self, encoders: Sequence[EncoderPort]) -> None:
        self.encoders = list(encoders)
        self._infos: dict[str, EncoderInfo] = {}
        self._lock = threading.Lock()

    def refresh(
        self, deadline: float, wait_for_ready: bool = False, require_all: bool = False
    ) -> set[str]:
        """Asks every encoder for its space; returns spaces an encoder stopped serving.
        An encoder that does not answer keeps its last route (it may be restarting),
        unless ``require_all``: then its error is raised once the others were asked."""
        changed: set[str] = set()
        errors: list[ContentEmbedError] = []
        for encoder in self.encoders:
            try:
                info = encoder.info(deadline, wait_for_ready=wait_for_ready)
            except ContentEmbedError as error:
                errors.append(error)
                continue
            with self._lock:
                old = self._infos.get(encoder.endpoint)
                if old is not None and old.space_id != info.space_id:
                    changed.add(old.space_id)
                    log.warning("encoder changed space", extra={
                        "encoder": encoder.endpoint, "old": old.space_id, "new": info.space_id})
                self._infos[encoder.endpoint] = info
        if errors and (require_all or not self._infos):
            raise errors[0]
        return changed

    def route(self, space_id: str, modality: str) -> tuple[EncoderPort, EncoderInfo]:
        with self._lock:
            for encoder in self.encoders:
                info = self._infos.get(encoder.endpoint)
                if info is not None and info.space_id == space_id and info.modality == modality:
                    return encoder, info
            served = sorted(f"{i.modality}:{i.space_id}" for i in self._infos.values())
        raise FailedPrecondition(
            f"no encoder embeds {modality} into space {shown(space_id)} (encoders serve: {served})",
            reason="NO_ENCODER_FOR_SPACE",
        )

    def default_space(self, modality: str = TEXT) -> EncoderInfo:
        """The space a collection gets when its creator names none: that of the only
        encoder of the modality (text unless said otherwise)."""
        with self._lock:
            matching = [i for i in self._infos.values() if i.modality == modality]
            if len(matching) == 1:
                return matching[0]
            choices = sorted(f"{i.modality}:{i.space_id}" for i in self._infos.values())
        raise FailedPrecondition(
            f"name the collection's space_id: {len(matching)} encoders embed {modality} "
            f"(encoders serve {choices})",
            reason="SPACE_REQUIRED",
        )

    def infos(self) -> list[tuple[EncoderPort, EncoderInfo]]:
        """Every encoder with what it last reported, in configuration order."""
        with self._lock:
            return [(e, self._infos[e.endpoint]) for e in self.encoders if e.endpoint in self._infos]

    def space_of_model(self, model_id: str) -> EncoderInfo:
        """The space of the encoders of one model (its towers share it); refused when no
        encoder runs the model or it is served in several spaces (other revisions)."""
        with self._lock:
            matching = {i.space_id: i for i in self._infos.values() if i.model_id == model_id}
            choices = sorted({f"{i.model_id} ({i.space_id})" for i in self._infos.values()})
        if len(matching) == 1:
            return next(iter(matching.values()))
        if matching:
            raise FailedPrecondition(
                f"model {shown(model_id)} is served in {len(matching)} spaces "
                f"({sorted(matching)}): name the collection's space_id",
                reason="SPACE_REQUIRED",
            )
        raise FailedPrecondition(
            f"no encoder runs model {shown(model_id)} (encoders run {choices})",
            reason="NO_ENCODER_FOR_MODEL",
        )

    def info_for_space(self, space_id: str) -> EncoderInfo:
        with self._lock:
            for info in self._infos.values():
                if info.space_id == space_id:
                    return info
            choices = sorted(i.space_id for i in self._infos.values())
        raise FailedPrecondition(
            f"no encoder serves space {shown(space_id)} (encoders serve {choices})",
            reason="NO_ENCODER_FOR_SPACE",
        )


@dataclass(frozen=True)
class CollectionRoute:
    """What a search needs to know of a collection before asking its shards."""

    space_id: str  # the serving version's; "" for a lexical-only collection
    lexical: LexicalConfig | None  # None: no lexical index (dense only)

    @property
    def lexical_only(self) -> bool:
        return self.lexical is not None and self.lexical.lexical_only


class CollectionSpaces:
    """The space each collection serves in, and whether it has a lexical index, as the
    shards report them (one GetCollection answer says both).

    A name is looked up once (its first search) and then kept fresh by the gateway's
    refresh loop, so searches do not ask every shard again whenever an entry ages out.
    A promotion, a rollback, a creation or a deletion through this gateway forgets the
    entry at once; a change made through another gateway shows as a shard refusing the
    space (FAILED_PRECONDITION), which forgets it too, until the next refresh at the latest.
    """

    def __init__(self, shards: Sequence[ShardPort]) -> None:
        self._shards = list(shards)
        self._routes: dict[str, CollectionRoute] = {}
        self._lock = threading.Lock()

    def route_of(self, collection: str, deadline: float) -> CollectionRoute:
        with self._lock:
            known = self._routes.get(collection)
        if known is not None:
            return known
        route = self._ask_shards(collection, deadline)
        with self._lock:
            self._routes[collection] = route
        return route

    def space_of(self, collection: str, deadline: float) -> str:
        return self.route_of(collection, deadline).space_id

    def lexical_of(self, collection: str, deadline: float) -> LexicalConfig | None:
        """The collection's lexical index (None: none), from the same entry as its space:
        a query that needs both asks the shards at most once."""
        return self.route_of(collection, deadline).lexical

    def _ask_shards(self, collection: str, deadline: float) -> CollectionRoute:
        # Any shard knows the space: ask all, take the first answer, so one shard down does
        # not stop searches that allow partial results.
        calls = [shard.get_collection(collection, deadline) for shard in self._shards]
        first_error: ContentEmbedError | None = None
        for call in calls:
            try:
                found = call.result()
            except ContentEmbedError as error:
                if error.code in CLIENT_ERROR_CODES:
                    raise
                first_error = first_error or error
                continue
            return CollectionRoute(found.space_id, found.lexical)
        assert first_error is not None
        raise first_error

    def refresh(self, deadline: float) -> None:
        """Asks again for every known collection; one that is gone is forgotten, one no
        shard answers for keeps its entry (the shards may be restarting)."""
        with self._lock:
            names = list(self._routes)
        for name in names:
            try:
                route = self._ask_shards(name, deadline)
            except ContentEmbedError as error:
                if error.code in CLIENT_ERROR_CODES:
                    self.forget(name)
                continue
            with self._lock:
                if name in self._routes:  # not forgotten meanwhile by a promotion
                    self._routes[name] = route

    def forget(self, collection: str) -> None:
        with self._lock:
            self._routes.pop(collection, None)

    def clear(self) -> None:
        with self._lock:
            self._routes.clear()

    def __contains__(self, collection: str) -> bool:
        with self._lock:
            return collection in self._routes
