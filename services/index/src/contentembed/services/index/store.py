"""The collections of one shard. Pure index code: no grpc."""

from __future__ import annotations

import base64
import threading
from dataclasses import dataclass

from contentembed.services.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from contentembed.services.common.sharding import shard_for_id
from contentembed.services.common.validation import validate_collection_name
from contentembed.services.index.collection import HnswCollection, HnswParams

MAX_DIM = 65536


@dataclass(frozen=True)
class ShardPosition:
    index: int
    count: int

    def check_owns(self, ids: list[str], *, what: str) -> None:
        """Ids are routed by a stable hash; an id that lands here by mistake would be
        invisible to the shard that should hold it, so it is refused."""
        for position, item_id in enumerate(ids):
            owner = shard_for_id(item_id, self.count)
            if owner != self.index:
                raise FailedPrecondition(
                    f"{what}[{position}]: id {item_id!r} belongs to shard {owner}, "
                    f"this is shard {self.index} of {self.count}",
                    reason="WRONG_SHARD",
                )


class CollectionStore:
    def __init__(self, default_params: HnswParams, initial_capacity: int = 1024) -> None:
        self.default_params = default_params
        self.initial_capacity = initial_capacity
        self._collections: dict[str, HnswCollection] = {}
        self._lock = threading.Lock()

    def create(
        self,
        name: str,
        space_id: str,
        dim: int,
        params: HnswParams | None = None,
        exist_ok: bool = False,
    ) -> tuple[HnswCollection, bool]:
        validate_collection_name(name)
        if not space_id:
            raise InvalidArgument("space_id is required", reason="MISSING_SPACE")
        if not 1 <= dim <= MAX_DIM:
            raise InvalidArgument(f"dim must be 1..{MAX_DIM}, got {dim}", reason="BAD_DIM")
        with self._lock:
            existing = self._collections.get(name)
            if existing is not None:
                if not exist_ok:
                    raise AlreadyExists(f"collection {name!r} already exists")
                if existing.space_id != space_id or existing.dim != dim:
                    raise FailedPrecondition(
                        f"collection {name!r} exists in space {existing.space_id} "
                        f"(dim {existing.dim}), not {space_id} (dim {dim})",
                        reason="SPACE_MISMATCH",
                    )
                return existing, False
            collection = HnswCollection(
                name, space_id, dim, params or self.default_params, self.initial_capacity
            )
            self._collections[name] = collection
            return collection, True

    def get(self, name: str) -> HnswCollection:
        collection = self._collections.get(name)
        if collection is None:
            raise NotFound(f"collection {name!r} does not exist", reason="COLLECTION_NOT_FOUND")
        return collection

    def delete(self, name: str) -> None:
        with self._lock:
            if self._collections.pop(name, None) is None:
                raise NotFound(f"collection {name!r} does not exist", reason="COLLECTION_NOT_FOUND")

    def list_page(self, page_size: int, page_token: str) -> tuple[list[HnswCollection], str]:
        """Collections ordered by name; the token is the last name of the previous page."""
        if page_size < 0 or page_size > 1000:
            raise InvalidArgument(f"page_size must be 0..1000, got {page_size}")
        page_size = page_size or 100
        after = ""
        if page_token:
            try:
                after = base64.urlsafe_b64decode(page_token.encode()).decode()
            except ValueError as error:
                raise InvalidArgument("page_token is not one this service issued") from error
        names = sorted(name for name in self._collections if name > after)
        page = names[:page_size]
        token = (
            base64.urlsafe_b64encode(page[-1].encode()).decode() if len(names) > page_size else ""
        )
        return [self._collections[name] for name in page if name in self._collections], token
