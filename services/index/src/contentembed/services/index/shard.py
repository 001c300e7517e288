"""Which shard of how many this process is, and the data directory's claim to it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from contentembed.services.common.errors import FailedPrecondition
from contentembed.services.common.sharding import shard_for_id
from contentembed.services.common.validation import shown
from contentembed.services.index.persistence import CorruptData, atomic_write

SHARD_FILE = "shard.json"


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
                    f"{what}[{position}]: id {shown(item_id)} belongs to shard {owner}, "
                    f"this is shard {self.index} of {self.count}",
                    reason="WRONG_SHARD",
                )


def claim_data_dir(data_dir: Path, shard: ShardPosition) -> None:
    """Records which shard of how many a data directory belongs to, and refuses to load it
    as another. Ids are routed by hash modulo the shard count: under another count most of
    its items belong elsewhere, and serving them would answer with duplicates (an upsert
    lands on the new owner, the old copy stays) and deletes that miss. A directory written
    before this file existed is claimed as it is found."""
    path = data_dir / SHARD_FILE
    if path.exists():
        try:
            recorded = json.loads(path.read_bytes())
            found = ShardPosition(int(recorded["index"]), int(recorded["count"]))
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise CorruptData(f"{path}: unreadable ({error})") from None
        if found != shard:
            raise CorruptData(
                f"{data_dir} holds shard {found.index} of {found.count}; this process is "
                f"shard {shard.index} of {shard.count}. Ids hash to other shards under another "
                f"count: give it a new data directory and fill it (build --shards "
                f"{shard.count} + publish, or re-ingest), or start it as shard {found.index} "
                f"of {found.count}"
            )
        return
    data_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps({"index": shard.index, "count": shard.count}).encode())
