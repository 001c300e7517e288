"""Stable routing of item ids to index shards.

blake2b rather than ``hash()``: Python salts ``hash`` per process, and every gateway
and shard must agree on the owner of an id across restarts and machines.
"""

from __future__ import annotations

import hashlib


def shard_for_id(item_id: str, shard_count: int) -> int:
    if shard_count < 1:
        raise ValueError("shard_count must be at least 1")
    digest = hashlib.blake2b(item_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shard_count
