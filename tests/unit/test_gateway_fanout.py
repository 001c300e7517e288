"""The partial-result policy, over in-memory shards: no model, no server."""

from __future__ import annotations

import time

import pytest

from contentembed.services.common.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from contentembed.services.gateway.fanout import gather_shards
from contentembed.services.gateway.ingest import Document
from contentembed.services.gateway.ports import ShardAnswer
from contentembed.services.gateway.search import Query
from tests.support.gateway_fakes import FakeEncoder, FakePending, FakeShard, fake_gateway, soon


def answered(shard: int) -> FakePending[ShardAnswer]:
    return FakePending(lambda: ShardAnswer(shard, [], "s", "v1"))


def failed(error: Exception) -> FakePending[ShardAnswer]:
    def run() -> ShardAnswer:
        raise error

    return FakePending(run)


SHARDS = [FakeShard(0), FakeShard(1)]


def test_every_shard_answering_is_not_partial() -> None:
    answers, outcomes = gather_shards(SHARDS, [answered(0), answered(1)], False, soon())
    assert len(answers) == 2 and all(o.ok for o in outcomes)


def test_a_failed_shard_fails_the_search_unless_partial_answers_are_allowed() -> None:
    calls = [answered(0), failed(Unavailable("index shard 1: down", reason="NOT_READY"))]
    with pytest.raises(Unavailable) as caught:
        gather_shards(SHARDS, calls, False, soon())
    assert caught.value.reason == "SHARDS_FAILED" and "1 of 2" in caught.value.message

    answers, outcomes = gather_shards(SHARDS, calls, True, soon())
    assert [a.shard_index for a in answers] == [0]
    assert [o.ok for o in outcomes] == [True, False]
    assert outcomes[1].error.startswith("UNAVAILABLE NOT_READY:")  # the reason shows


def test_no_shard_answering_fails_even_when_partial_answers_are_allowed() -> None:
    calls = [failed(Unavailable("a")), failed(Unavailable("b"))]
    with pytest.raises(Unavailable):
        gather_shards(SHARDS, calls, True, soon())
    with pytest.raises(DeadlineExceeded):  # past the deadline it says so
        gather_shards(SHARDS, calls, True, time.monotonic() - 1)


@pytest.mark.parametrize("error", [
    NotFound("no collection"), FailedPrecondition("wrong space"),
    # A shard refusing an answer over the message limit is not failing: the request asked
    # for too much, and a retry (SHARDS_FAILED is retryable) would only ask again.
    ResourceExhausted("answer over 16 MiB", reason="ANSWER_TOO_LARGE"),
])
def test_a_client_error_is_passed_through_never_partial(error: Exception) -> None:
    calls = [failed(Unavailable("shard 0 down")), failed(error)]
    with pytest.raises(type(error)) as caught:
        gather_shards(SHARDS, calls, True, soon())
    assert caught.value is error


def test_a_search_with_a_shard_down_through_the_gateway() -> None:
    shards = [FakeShard(0), FakeShard(1)]
    gateway = fake_gateway([FakeEncoder("space-a")], shards)
    gateway.create_collection("shop", "", False, soon())
    gateway.upsert_documents("shop", [Document("a", "coffee"), Document("b", "tea")], soon())
    shards[1].down = True
    with pytest.raises(Unavailable):
        gateway.search(Query("shop", "coffee", 5, soon()))
    outcome = gateway.search(Query("shop", "coffee", 5, soon(), allow_partial=True))
    assert outcome.partial and [s.ok for s in outcome.shards] == [True, False]


def test_an_unknown_collection_is_not_found_even_with_partial_answers_allowed() -> None:
    shards = [FakeShard(0), FakeShard(1)]
    gateway = fake_gateway([FakeEncoder("space-a")], shards)
    shards[0].down = True
    with pytest.raises(NotFound):
        gateway.search(Query("nowhere", "coffee", 5, soon(), allow_partial=True))

