"""CreateCollection across shards is all or nothing: a shard that cannot create it (one
restarting) undoes it on the others, and a create retried after a partial one completes
it. Before, the collection stayed on some shards only: NOT_FOUND on search, ALREADY_EXISTS
on create, shard_count=1 in the listing, and exist_ok repaired it answering created=false."""

from __future__ import annotations

import pytest

from contentembed.services.common.errors import AlreadyExists, Unavailable
from tests.support.gateway_fakes import FakeEncoder, FakeShard, fake_gateway, soon


def test_a_shard_that_cannot_create_leaves_the_collection_on_no_shard() -> None:
    shards = [FakeShard(0), FakeShard(1)]
    gateway = fake_gateway([FakeEncoder("space-a")], shards)
    shards[1].fail["create_collection"] = [Unavailable("index shard 1: still loading", reason="NOT_READY")]
    with pytest.raises(Unavailable) as caught:
        gateway.create_collection("docs", "", False, soon())
    assert caught.value.reason == "NOT_READY"
    assert shards[0].collections == {} and shards[1].collections == {}  # undone on shard 0
    summary, created = gateway.create_collection("docs", "", False, soon())  # the retry
    assert created and summary.shard_count == 2
    with pytest.raises(AlreadyExists):
        gateway.create_collection("docs", "", False, soon())
    assert gateway.create_collection("docs", "", True, soon())[1] is False


def test_a_partial_collection_left_behind_is_completed_by_the_next_create() -> None:
    """The undo itself can fail (a shard down): the retry finishes the job, with or
    without exist_ok, and says created."""
    shards = [FakeShard(0), FakeShard(1)]
    gateway = fake_gateway([FakeEncoder("space-a")], shards)
    shards[1].fail["create_collection"] = [Unavailable("down")]
    shards[0].fail["delete_collection"] = [Unavailable("down too")]
    with pytest.raises(Unavailable):
        gateway.create_collection("docs", "", False, soon())
    assert "docs" in shards[0].collections and "docs" not in shards[1].collections
    summary, created = gateway.create_collection("docs", "", False, soon())
    assert created and summary.shard_count == 2
    assert all("docs" in shard.collections for shard in shards)
