"""CoalescingShard over a fake shard whose calls end when the test says: direct calls
below the limit, one SearchBatch for what queued meanwhile, per-member answers, errors,
deadlines and cancellation."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from contentembed.services.common.errors import (
    Cancelled,
    DeadlineExceeded,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)
from contentembed.services.gateway.coalesce import CoalescingShard
from contentembed.services.gateway.merge import Hit
from contentembed.services.gateway.ports import ShardAnswer, ShardBatchAnswer


class FakeCall:
    def __init__(self, kind: str, args: dict[str, Any]) -> None:
        self.kind, self.args = kind, args
        self._callbacks: list[Any] = []
        self._outcome: Any = None
        self.done = False
        self.cancelled = False

    def end(self, outcome: Any) -> None:
        self._outcome, self.done = outcome, True
        for callback in self._callbacks:
            callback(self)

    def add_done_callback(self, callback: Any) -> None:
        if self.done:
            callback(self)
        else:
            self._callbacks.append(callback)

    def result(self) -> Any:
        assert self.done, "result() before the call ended"
        if isinstance(self._outcome, BaseException):
            raise self._outcome
        return self._outcome

    def cancel(self) -> None:
        self.cancelled = True

    latency_ms = 1.0


class FakeShard:
    shard_index = 0
    label = "index shard 0 (fake)"
    endpoint = "fake:1"

    def __init__(self) -> None:
        self.calls: list[FakeCall] = []

    def search(self, collection, query, space_id, top_k, deadline, version="", exact=False,
               ef=0, metadata_filter=None, text=""):
        self.calls.append(FakeCall("search", dict(
            query=query, top_k=top_k, version=version, exact=exact, ef=ef,
            filter=metadata_filter, text=text)))
        return self.calls[-1]

    def search_batch(self, collection, queries, space_id, top_k, deadline, ef=0,
                     metadata_filter=None, texts=()):
        self.calls.append(FakeCall("batch", dict(
            queries=queries, top_k=top_k, ef=ef, filter=metadata_filter, texts=list(texts),
            deadline=deadline, span=trace.get_current_span())))
        return self.calls[-1]

    def upsert(self) -> str:
        return "delegated"


def answer_for(query: np.ndarray | None, text: str) -> tuple[list[Hit], list[Hit]]:
    dense = [] if query is None else [Hit(f"v{int(query[0])}", float(query[0]), 0)]
    lexical = [Hit(f"t-{text}", 1.0, 0)] if text else []
    return dense, lexical


def single_answer(call: FakeCall) -> ShardAnswer:
    dense, lexical = answer_for(call.args["query"], call.args["text"])
    return ShardAnswer(0, dense, "s@1", "v1", lexical)


def batch_answer(call: FakeCall) -> ShardBatchAnswer:
    queries = call.args["queries"]
    texts = call.args["texts"]
    size = len(queries) if queries is not None else len(texts)
    pairs = [answer_for(None if queries is None else queries[i], texts[i] if texts else "")
             for i in range(size)]
    return ShardBatchAnswer(0, [], "s@1", "v1", [], results=tuple(p[0] for p in pairs),
                            lexical_results=tuple(p[1] for p in pairs) if texts else ())


def vec(n: float) -> np.ndarray:
    return np.array([n, 1.0], dtype=np.float32)


def later(seconds: float = 30.0) -> float:
    return time.monotonic() + seconds


def search(shard: CoalescingShard, n: float, text: str = "", **options: Any):
    return shard.search("docs", vec(n), "s@1", 5, options.pop("deadline", later()), text=text,
                        **options)


def test_below_the_limit_every_search_goes_out_at_once_as_itself() -> None:
    fake = FakeShard()
    shard = CoalescingShard(fake, max_in_flight=2, max_batch=8)
    first, second = search(shard, 1), search(shard, 2)
    assert [c.kind for c in fake.calls] == ["search", "search"]
    fake.calls[0].end(single_answer(fake.calls[0]))
    third = search(shard, 3)  # a slot was free again
    assert [c.kind for c in fake.calls] == ["search", "search", "search"]
    assert first.result().hits[0].id == "v1" and second is fake.calls[1] and third is fake.calls[2]
    assert shard.upsert() == "delegated"  # everything but search is the shard's


def test_searches_queued_beyond_the_limit_go_out_as_one_batch_and_get_their_own_answers() -> None:
    fake = FakeShard()
    shard = CoalescingShard(fake, max_in_flight=1, max_batch=8)
    direct = search(shard, 1, "a")
    queued = [search(shard, n, f"q{n}") for n in (2, 3, 4)]
    assert len(fake.calls) == 1  # all three wait for the slot
    fake.calls[0].end(single_answer(fake.calls[0]))
    batch = fake.calls[1]
    assert batch.kind == "batch" and batch.args["texts"] == ["q2", "q3", "q4"]
    np.testing.assert_array_equal(batch.args["queries"][:, 0], [2, 3, 4])
    batch.end(batch_answer(batch))
    assert direct.result().hits[0].id == "v1"
    for n, call in zip((2, 3, 4), queued):
        answer = call.result()
        assert [h.id for h in answer.hits] == [f"v{n}"]
        assert [h.id for h in answer.lexical_hits] == [f"t-q{n}"]
        assert answer.version == "v1" and answer.space_id == "s@1"
    assert shard.batches_sent == 1 and shard.queries_batched == 3


def test_only_searches_with_the_same_options_share_a_batch_oldest_first() -> None:
    fake = FakeShard()
    shard = CoalescingShard(fake, max_in_flight=1, max_batch=8)
    search(shard, 0)
    red = [search(shard, n, metadata_filter={"color": "red"}) for n in (1, 2)]
    deep = search(shard, 3, ef=200)
    blue = search(shard, 4, metadata_filter={"color": "blue"})
    for _ in range(3):
        fake.calls[-1].end(batch_answer(fake.calls[-1]) if fake.calls[-1].kind == "batch"
                           else single_answer(fake.calls[-1]))
    kinds = [(c.kind, c.args["filter"], c.args["ef"]) for c in fake.calls[1:]]
    assert kinds == [("batch", {"color": "red"}, 0), ("batch", None, 200), ("batch", {"color": "blue"}, 0)]
    fake.calls[-1].end(batch_answer(fake.calls[-1]))
    assert [c.result().hits[0].id for c in (*red, deep, blue)] == ["v1", "v2", "v3", "v4"]


def test_other_versions_and_exact_searches_are_never_batched() -> None:
    fake = FakeShard()
    shard = CoalescingShard(fake, max_in_flight=1, max_batch=8)
    search(shard, 0)
    search(shard, 1, version="v2")
    search(shard, 2, exact=True)
    assert [(c.kind, c.args.get("version"), c.args.get("exact")) for c in fake.calls] == [
        ("search", "", False), ("search", "v2", False), ("search", "", True)]


def test_a_batch_refused_invalid_argument_is_asked_again_one_by_one() -> None:
    fake = FakeShard()
    shard = CoalescingShard(fake, max_in_flight=1, max_batch=8)
    search(shard, 0)
    good, bad = search(shard, 1), search(shard, 2)
    fake.calls[0].end(single_answer(fake.calls[0]))
    fake.calls[1].end(InvalidArgument("queries[1]: zero vector", reason="VECTOR_ZERO"))
    alone = fake.calls[2:]
    assert [c.kind for c in alone] == ["search", "search"]
    alone[0].end(single_answer(alone[0]))
    alone[1].end(InvalidArgument("query: zero vector", reason="VECTOR_ZERO"))
    assert good.result().hits[0].id == "v1"
    with pytest.raises(InvalidArgument) as caught:
        bad.result()
    assert caught.value.reason == "VECTOR_ZERO"


def test_a_batch_failing_for_the_shard_fails_every_member() -> None:
    fake = FakeShard()
    shard = CoalescingShard(fake, max_in_flight=1, max_batch=8)
    search(shard, 0)
    members = [search(shard, n) for n in (1, 2)]
    fake.calls[0].end(single_answer(fake.calls[0]))
    fake.calls[1].end(Unavailable("shard restarting", reason="NOT_READY"))
    for member in members:
        with pytest.raises(Unavailable):
            member.result()
    assert len(fake.calls) == 2  # no retry one by one


def test_a_queued_search_past_its_deadline_or_cancelled_is_never_sent() -> None:
    fake = FakeShard()
    shard = CoalescingShard(fake, max_in_flight=1, max_batch=8)
    search(shard, 0)
    expiring = search(shard, 1, deadline=later(0.05))
    cancelled = search(shard, 2)
    kept = search(shard, 3)
    cancelled.cancel()
    with pytest.raises(DeadlineExceeded):
        expiring.result()
    with pytest.raises(Cancelled):
        cancelled.result()
    fake.calls[0].end(single_answer(fake.calls[0]))
    batch = fake.calls[1]
    np.testing.assert_array_equal(batch.args["queries"][:, 0], [3])
    assert batch.args["deadline"] == pytest.approx(time.monotonic() + 30, abs=1)
    batch.end(batch_answer(batch))
    assert kept.result().hits[0].id == "v3"


def test_batches_hold_at_most_max_batch_and_the_rest_waits_its_turn() -> None:
    fake = FakeShard()
    shard = CoalescingShard(fake, max_in_flight=1, max_batch=2)
    search(shard, 0)
    queued = [search(shard, n) for n in range(1, 6)]
    fake.calls[0].end(single_answer(fake.calls[0]))
    sizes = []
    while len(fake.calls) > len(sizes) + 1:
        batch = fake.calls[len(sizes) + 1]
        sizes.append(len(batch.args["queries"]))
        batch.end(batch_answer(batch))
    assert sizes == [2, 2, 1]
    assert [q.result().hits[0].id for q in queued] == ["v1", "v2", "v3", "v4", "v5"]


def test_a_batch_refused_as_too_large_is_asked_again_in_halves_until_each_fits() -> None:
    """Coalescing never fails a search that would succeed alone: a batch whose answer is
    over the message limit is split, down to single searches."""
    fake = FakeShard()
    shard = CoalescingShard(fake, max_in_flight=1, max_batch=8)
    search(shard, 0)
    members = [search(shard, n) for n in range(1, 5)]
    fake.calls[0].end(single_answer(fake.calls[0]))
    too_large = ResourceExhausted("over 16 MiB", reason="ANSWER_TOO_LARGE")
    fake.calls[1].end(too_large)  # the batch of 4
    halves = fake.calls[2:]
    assert [len(c.args["queries"]) for c in halves] == [2, 2]
    halves[0].end(batch_answer(halves[0]))
    halves[1].end(too_large)  # this half is still too large: its two go alone
    alone = fake.calls[4:]
    assert [c.kind for c in alone] == ["search", "search"]
    for call in alone:
        call.end(single_answer(call))
    assert [m.result().hits[0].id for m in members] == ["v1", "v2", "v3", "v4"]
    assert shard.batches_split == 2
    # What the refusals taught: a hit is at least 16 MiB / (2 x 5) bytes.
    assert shard.hit_bytes >= (16 << 20) / 10


def test_a_single_search_refused_as_too_large_keeps_its_error() -> None:
    fake = FakeShard()
    shard = CoalescingShard(fake, max_in_flight=1, max_batch=8)
    search(shard, 0)
    lone, other = search(shard, 1), search(shard, 2)
    fake.calls[0].end(single_answer(fake.calls[0]))
    fake.calls[1].end(ResourceExhausted("too large", reason="ANSWER_TOO_LARGE"))
    fake.calls[2].end(ResourceExhausted("too large", reason="ANSWER_TOO_LARGE"))
    fake.calls[3].end(single_answer(fake.calls[3]))
    with pytest.raises(ResourceExhausted) as caught:
        lone.result()
    assert caught.value.reason == "ANSWER_TOO_LARGE"
    assert other.result().hits[0].id == "v2"


def test_batches_hold_no_more_searches_than_half_a_message_of_answers() -> None:
    """The hit size is learnt from batch answers: with 8 KiB hits, searches at top_k 1,000
    (8 MB each) never share a call, searches at top_k 100 six at a time."""
    fake = FakeShard()
    shard = CoalescingShard(fake, max_in_flight=1, max_batch=64, max_answer_bytes=16 << 20)
    search(shard, 0)
    search(shard, 1), search(shard, 2)
    fake.calls[0].end(single_answer(fake.calls[0]))
    batch = fake.calls[1]
    answer = batch_answer(batch)
    # Two searches of 5 hits: 10 hits in 83,000 bytes.
    batch.end(ShardBatchAnswer(0, [Hit("x", 1.0, 0)] * 10, "s@1", "v1", [], encoded_bytes=83_000,
                               results=answer.results))
    assert 1600 < shard.hit_bytes < 8300  # moving towards 8,300 per hit
    for _ in range(30):
        shard._observe(ShardAnswer(0, [Hit("x", 1.0, 0)] * 10, "s@1", "v1", encoded_bytes=83_000))
    key_1000 = ("docs", "s@1", 1000, 0, "", True, False)
    key_100 = ("docs", "s@1", 100, 0, "", True, False)
    assert shard.batch_limit(key_1000) == 1
    assert shard.batch_limit(key_100) == 6
    assert shard.batch_limit(("docs", "s@1", 5, 0, "", True, False)) == 64


def test_a_batch_call_is_traced_under_its_first_members_request() -> None:
    tracer = TracerProvider().get_tracer("test")
    fake = FakeShard()
    shard = CoalescingShard(fake, max_in_flight=1, max_batch=8)
    search(shard, 0)
    with tracer.start_as_current_span("first request") as first:
        search(shard, 1)
    with tracer.start_as_current_span("second request"):
        search(shard, 2)
    fake.calls[0].end(single_answer(fake.calls[0]))  # outside any request's context
    assert fake.calls[1].args["span"] is first
    assert trace.get_current_span() is trace.INVALID_SPAN  # nothing left attached here
