"""DynamicBatcher with a model stand-in whose calls the test can hold."""

from __future__ import annotations

import threading
import time

import pytest
from prometheus_client import CollectorRegistry

from contentembed.services.common.batching import BatcherMetrics, DynamicBatcher
from contentembed.services.common.errors import (
    Cancelled,
    DeadlineExceeded,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)


class GatedModel:
    """Doubles numbers; each call waits until the test opens the gate."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.gate = threading.Event()
        self.entered = threading.Event()

    def __call__(self, items: list[int]) -> list[int]:
        self.calls.append(list(items))
        self.entered.set()
        assert self.gate.wait(10)
        return [2 * item for item in items]


def make(model, **overrides) -> DynamicBatcher[int, int]:
    options = {"max_batch_size": 8, "max_queue_delay_s": 0.05, "max_queue_items": 32}
    options.update(overrides)
    return DynamicBatcher(model, metrics=BatcherMetrics(CollectorRegistry(), "test"), **options)


def test_concurrent_requests_share_model_calls_and_get_their_own_results() -> None:
    model = GatedModel()
    model.gate.set()
    batcher = make(model, max_queue_delay_s=0.2)
    futures = [batcher.submit([i, 100 + i]) for i in range(4)]
    assert [f.result(5) for f in futures] == [[2 * i, 200 + 2 * i] for i in range(4)]
    assert len(model.calls) == 1 and sorted(model.calls[0]) == sorted([0, 100, 1, 101, 2, 102, 3, 103])
    batcher.close()


def test_batches_never_exceed_max_and_never_split_a_request() -> None:
    model = GatedModel()
    batcher = make(model, max_batch_size=4)
    first = batcher.submit([1])
    assert model.entered.wait(5)  # worker busy: the next requests queue up
    rest = [batcher.submit([10 * i, 10 * i + 1, 10 * i + 2]) for i in range(1, 4)]
    model.gate.set()
    assert first.result(5) == [2]
    assert [f.result(5) for f in rest] == [[20 * i, 20 * i + 2, 20 * i + 4] for i in range(1, 4)]
    assert all(len(call) <= 4 for call in model.calls)
    assert [len(call) for call in model.calls[1:]] == [3, 3, 3]
    batcher.close()


def test_full_queue_is_refused_with_retry_hint_and_nothing_lost() -> None:
    model = GatedModel()
    batcher = make(model, max_batch_size=2, max_queue_items=4)
    running = batcher.submit([0, 0])
    assert model.entered.wait(5)
    queued = [batcher.submit([1, 2]), batcher.submit([3, 4])]
    with pytest.raises(ResourceExhausted) as caught:
        batcher.submit([5])
    assert caught.value.reason == "QUEUE_FULL" and caught.value.retry_after_s > 0
    model.gate.set()
    assert running.result(5) == [0, 0]
    assert [f.result(5) for f in queued] == [[2, 4], [6, 8]]
    batcher.close()


def test_expired_and_cancelled_requests_are_dropped_uncomputed() -> None:
    model = GatedModel()
    batcher = make(model, max_batch_size=2)
    running = batcher.submit([0])
    assert model.entered.wait(5)
    expired = batcher.submit([1], deadline=time.monotonic() + 0.01)
    abandoned = batcher.submit([2], is_active=lambda: False)
    alive = batcher.submit([3])
    time.sleep(0.05)
    model.gate.set()
    with pytest.raises(DeadlineExceeded):
        expired.result(5)
    with pytest.raises(Cancelled):
        abandoned.result(5)
    assert running.result(5) == [0] and alive.result(5) == [6]
    assert [item for call in model.calls for item in call] == [0, 3]
    batcher.close()


def test_model_failure_reaches_every_waiter_and_the_worker_survives() -> None:
    calls = []

    def flaky(items: list[int]) -> list[int]:
        calls.append(items)
        if len(calls) == 1:
            raise RuntimeError("CUDA out of memory")
        return items

    batcher = make(flaky)
    with pytest.raises(RuntimeError):
        batcher.submit([1]).result(5)
    assert batcher.submit([7]).result(5) == [7]
    batcher.close()


def test_limits_and_shutdown() -> None:
    batcher = make(lambda items: items, max_batch_size=2)
    with pytest.raises(InvalidArgument):
        batcher.submit([])
    with pytest.raises(InvalidArgument):
        batcher.submit([1, 2, 3])
    batcher.close()
    with pytest.raises(Unavailable):
        batcher.submit([1])


def test_a_caller_that_stops_waiting_does_not_break_the_worker() -> None:
    model = GatedModel()
    batcher = make(model, max_batch_size=2)
    running = batcher.submit([1])
    assert model.entered.wait(5)
    abandoned = batcher.submit([2])
    assert abandoned.cancel()  # the gRPC handler's deadline passed while it was queued
    model.gate.set()
    assert running.result(5) == [2]
    assert batcher.submit([3]).result(5) == [6]  # the worker is alive
    assert [item for call in model.calls for item in call] == [1, 3]
    batcher.close()


def test_cancelling_while_the_batch_computes_is_harmless() -> None:
    model = GatedModel()
    batcher = make(model)
    inflight = batcher.submit([5])
    assert model.entered.wait(5)
    assert not inflight.cancel()  # already running: too late to cancel
    model.gate.set()
    assert inflight.result(5) == [10]
    assert batcher.submit([4]).result(5) == [8]
    batcher.close()


def test_a_request_that_cannot_be_computed_before_its_deadline_is_refused_at_once() -> None:
    class SlowModel(GatedModel):
        def __call__(self, items: list[int]) -> list[int]:
            time.sleep(0.05 * len(items))  # 50 ms of model time per item
            return super().__call__(items)

    model = SlowModel()
    model.gate.set()
    batcher = make(model, max_batch_size=4, max_queue_items=64)
    assert batcher.submit([1, 2]).result(5) == [2, 4]  # measures the model: ~50 ms per item
    model.gate.clear()
    model.entered.clear()
    running = batcher.submit([3])
    assert model.entered.wait(5)  # the worker is busy; what follows queues
    queued = [batcher.submit([i, i, i, i]) for i in range(4)]  # 16 items: ~0.8 s of model time
    with pytest.raises(ResourceExhausted) as caught:
        batcher.submit([9], deadline=time.monotonic() + 0.2)
    assert caught.value.reason == "OVERLOADED"
    assert caught.value.retry_after_s is not None and caught.value.retry_after_s > 0
    # With time to spare it is queued as usual, and nothing queued before was disturbed.
    later = batcher.submit([9], deadline=time.monotonic() + 30)
    model.gate.set()
    assert running.result(5) == [6]
    assert [f.result(10) for f in queued] == [[2 * i] * 4 for i in range(4)]
    assert later.result(10) == [18]
    batcher.close()


def test_the_estimate_counts_what_is_left_of_the_running_batch_and_ignores_one_slow_batch() -> None:
    """A batch near its end no longer counts whole against a new deadline, and one batch
    slowed by contention does not make every later estimate that slow."""
    durations = iter([0.05, 0.05, 0.05, 1.5, 0.05, 0.05, 0.6, 0.05])

    class TimedModel(GatedModel):
        def __call__(self, items: list[int]) -> list[int]:
            time.sleep(next(durations))
            return super().__call__(items)

    model = TimedModel()
    model.gate.set()
    batcher = make(model, max_batch_size=1, max_queue_items=64)
    for value in range(5):  # four batches of 50 ms, one of 1.5 s (contention)
        assert batcher.submit([value]).result(5) == [2 * value]
    # The median is still 50 ms: a 200 ms deadline with nothing queued is admitted.
    assert batcher.submit([7], deadline=time.monotonic() + 0.2).result(5) == [14]
    model.gate.clear()
    model.entered.clear()
    running = batcher.submit([8])  # this one takes 0.6 s
    assert model.entered.wait(5)  # (entered after the 0.6 s sleep: the batch is at its end)
    # Expected 50 ms, already 600 ms in: nothing is left of it to wait for.
    admitted = batcher.submit([9], deadline=time.monotonic() + 0.3)
    model.gate.set()
    assert running.result(5) == [16] and admitted.result(5) == [18]
    batcher.close()
