"""Fetching stored documents by id: each id asked of the shard it hashes to, the answers
put back in request order. Pure: no grpc."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from contentembed.services.common.errors import InvalidArgument
from contentembed.services.common.sharding import shard_for_id
from contentembed.services.common.validation import validate_collection_name, validate_ids
from contentembed.services.gateway.ports import ShardPort, StoredItem, wait_all


@dataclass(frozen=True)
class Lookup:
    shards: Sequence[ShardPort]
    max_ids: int

    def get_documents(
        self, collection: str, ids: Sequence[str], deadline: float,
        register_cancel: Callable[[Callable[[], None]], Any],
    ) -> tuple[list[StoredItem], list[str]]:
        """The stored items of ``ids`` (serving version), in request order (an id asked
        twice is answered twice), and the ids the collection does not hold, in order."""
        validate_collection_name(collection)
        if not ids:
            raise InvalidArgument("ids: at least one id is required", reason="EMPTY_BATCH")
        if len(ids) > self.max_ids:
            raise InvalidArgument(
                f"ids: at most {self.max_ids} per call, got {len(ids)}", reason="BATCH_TOO_LARGE"
            )
        validate_ids(ids, what="ids", unique=False)
        wanted: dict[int, list[str]] = {}
        for item_id in dict.fromkeys(ids):
            wanted.setdefault(shard_for_id(item_id, len(self.shards)), []).append(item_id)
        calls = [
            self.shards[index].get_items(collection, shard_ids, deadline)
            for index, shard_ids in sorted(wanted.items())
        ]
        for call in calls:
            register_cancel(call.cancel)
        found = {item.id: item for items in wait_all(calls) for item in items}
        return (
            [found[item_id] for item_id in ids if item_id in found],
            [item_id for item_id in ids if item_id not in found],
        )
