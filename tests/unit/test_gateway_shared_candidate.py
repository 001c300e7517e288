"""The candidate lives on the shards: a second gateway (or this one restarted) over the
same shards shadows and canaries the same candidate after one refresh, a promotion or a
clear through one is seen by the other, and a shard that cannot take it fails the call."""

from __future__ import annotations

import pytest

from contentembed.services.common.errors import Unavailable
from contentembed.services.gateway.ports import CandidateInfo
from tests.support.gateway_fakes import FakeEncoder, FakeShard, fake_gateway, soon


def shards_with_candidate_version() -> list[FakeShard]:
    shards = [FakeShard(0), FakeShard(1)]
    for shard in shards:
        shard.add_collection("shop", "v1", "space-a")
        shard.add_version("shop", "v2", "space-a")
    return shards


def gateway_over(shards: list[FakeShard]):
    return fake_gateway([FakeEncoder("space-a")], shards)


def test_a_candidate_set_through_one_gateway_is_honoured_by_another() -> None:
    shards = shards_with_candidate_version()
    first, second = gateway_over(shards), gateway_over(shards)
    first.set_candidate("shop", "v2", shadow_fraction=0.5, canary_weight=1.0, deadline=soon())
    assert all(s.collections["shop"].candidate == CandidateInfo("v2", 0.5, 1.0) for s in shards)
    assert second.rollout.assign("shop").version == ""  # not refreshed yet
    second.refresh_candidates(soon())
    assigned = second.rollout.assign("shop")
    assert assigned.canary and assigned.version == "v2" and assigned.space_id == "space-a"
    restarted = gateway_over(shards)  # a gateway that went away mid-canary, starting again
    restarted.refresh_candidates(soon())
    assert restarted.rollout.assign("shop").canary


def test_promotion_or_clearing_through_one_gateway_ends_the_canary_of_the_other() -> None:
    shards = shards_with_candidate_version()
    first, second = gateway_over(shards), gateway_over(shards)
    first.set_candidate("shop", "v2", shadow_fraction=0.0, canary_weight=1.0, deadline=soon())
    second.refresh_candidates(soon())
    first.promote("shop", soon())
    second.refresh_candidates(soon())
    assert second.rollout.assign("shop").candidate is None
    first.set_candidate("shop", "v1", shadow_fraction=0.0, canary_weight=1.0, deadline=soon())
    second.refresh_candidates(soon())
    assert second.rollout.assign("shop").version == "v1"
    first.set_candidate("shop", "", shadow_fraction=0.0, canary_weight=0.0, deadline=soon())
    assert all(s.collections["shop"].candidate is None for s in shards)
    second.refresh_candidates(soon())
    assert second.rollout.assign("shop").candidate is None


def test_refreshing_keeps_the_shadow_statistics_of_an_unchanged_candidate() -> None:
    shards = shards_with_candidate_version()
    gateway = gateway_over(shards)
    gateway.set_candidate("shop", "v2", shadow_fraction=0.5, canary_weight=0.0, deadline=soon())
    gateway.rollout.candidates.get("shop").stats.record(["a"], ["a"], 1.0)
    gateway.refresh_candidates(soon())
    assert gateway.rollout.candidates.get("shop").stats.queries == 1


def test_a_shard_that_cannot_record_the_candidate_fails_the_call() -> None:
    shards = shards_with_candidate_version()
    gateway = gateway_over(shards)
    shards[1].fail["set_candidate"] = [Unavailable("shard 1 restarting")]
    with pytest.raises(Unavailable):
        gateway.set_candidate("shop", "v2", shadow_fraction=0.5, canary_weight=0.1, deadline=soon())
    assert gateway.rollout.assign("shop").candidate is None
    gateway.set_candidate("shop", "v2", shadow_fraction=0.5, canary_weight=0.1, deadline=soon())
    assert all(s.collections["shop"].candidate is not None for s in shards)
