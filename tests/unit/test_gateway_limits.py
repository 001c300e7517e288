"""The gateway refuses to start with limits its shards would refuse: a request it accepts
must never fail at a shard for its size."""

from __future__ import annotations

import pytest

from contentembed.services.common.errors import FailedPrecondition
from contentembed.services.gateway.ports import ShardLimits
from tests.support.gateway_fakes import FakeEncoder, FakeShard, fake_gateway, soon


def test_limits_within_the_shards_connect() -> None:
    shards = [FakeShard(0), FakeShard(1)]
    shards[0].shard_limits = ShardLimits(max_top_k=1000, max_queries_per_batch=1024,
                                         max_ids_per_call=10_000)
    gateway = fake_gateway([FakeEncoder("space-a")], shards, max_top_k=100)
    gateway.connect(soon(), refresh_every_s=60)  # shard 1 says nothing: trusted
    gateway.close()


def test_limits_above_a_shards_are_refused_naming_each() -> None:
    shards = [FakeShard(0), FakeShard(1)]
    shards[1].shard_limits = ShardLimits(max_top_k=50, max_queries_per_batch=16, max_ids_per_call=500)
    gateway = fake_gateway([FakeEncoder("space-a")], shards, max_top_k=100,
                           max_queries_per_batch=64, max_ids_per_get=1000)
    with pytest.raises(FailedPrecondition) as caught:
        gateway.connect(soon(), refresh_every_s=60)
    assert caught.value.reason == "LIMITS_EXCEED_SHARDS"
    for part in ("max_top_k 100 > 50", "max_queries_per_batch 64 > 16", "max_ids_per_get 1000 > 500"):
        assert part in caught.value.message
    gateway.close()
