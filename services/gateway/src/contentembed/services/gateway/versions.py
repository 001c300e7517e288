"""Which versions of a collection a write must reach, as the shards last described them.

A collection has a serving version and may have others: a candidate under shadow traffic,
the previous one kept for rollback, and pending ones that a running build opened. Every
one of them receives every write — embedded in its own space — so that promoting,
rolling back or installing a bundle never drops an acknowledged write. Pure code: no grpc.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from contentembed.services.gateway.ports import ShardCollection, is_lexical_only

# How long a plan is reused. Staleness is safe: each upsert carries the shard's versions
# fingerprint, and a shard whose versions changed refuses it (ABORTED VERSIONS_CHANGED),
# so the writer re-plans; the TTL only bounds how often shards are asked.
WRITE_PLAN_TTL_S = 5.0
VERSIONS_CHANGED = "VERSIONS_CHANGED"


@dataclass(frozen=True)
class ShardTargets:
    """One shard's spaces to write, with the fingerprint of the view they came from."""

    shard_index: int
    spaces: frozenset[str]
    fingerprint: str


@dataclass(frozen=True)
class WritePlan:
    serving_space: str
    shards: tuple[ShardTargets, ...]
    # version -> space over all shards, for messages and for the summary.
    version_spaces: dict[str, str]
    # Only the lexical index: written with text and no vector, in space "" (no encoder).
    lexical_only: bool = False

    @classmethod
    def of(cls, per_shard: Sequence[ShardCollection]) -> WritePlan:
        version_spaces: dict[str, str] = {}
        for collection in per_shard:
            version_spaces.update(collection.version_spaces)
        return cls(
            serving_space=per_shard[0].space_id,
            shards=tuple(
                ShardTargets(index, frozenset(c.spaces_written()), c.versions_fingerprint)
                for index, c in enumerate(per_shard)
            ),
            version_spaces=version_spaces,
            lexical_only=is_lexical_only(per_shard[0].lexical),
        )

    def spaces(self) -> list[str]:
        """Every space some shard writes, the serving one first (its encoder's answer is
        the one the caller hears about: truncation, size limits)."""
        others = sorted({s for shard in self.shards for s in shard.spaces} - {self.serving_space})
        return [self.serving_space, *others]

    def versions_in(self, space: str) -> list[str]:
        return sorted(v for v, s in self.version_spaces.items() if s == space)
