"""Admission control with a hand-driven clock and pool: what is refused at arrival, what
is shed when a thread picks it up, and what runs."""

from __future__ import annotations

import threading

import pytest

from contentembed.services.common.admission import Admission, CountingExecutor, Ticket
from contentembed.services.common.errors import ResourceExhausted


class Pool:
    """Stands in for the handler pool: the test says when calls are submitted and end."""

    def __init__(self) -> None:
        self.now = 100.0
        self.in_progress = 0

    def clock(self) -> float:
        return self.now

    def admission(self, workers: int, max_in_flight: int = 100, max_queue_wait_s: float = 10) -> Admission:
        return Admission(workers, max_in_flight, max_queue_wait_s, lambda: self.in_progress, self.clock)

    def arrive(self, admission: Admission, method: str = "Search") -> Ticket:
        ticket = admission.arrive(method)
        self.in_progress += 1
        return ticket

    def end(self, admission: Admission, ticket: Ticket) -> None:
        admission.finish(ticket)
        self.in_progress -= 1

    def served(self, admission: Admission, method: str, seconds: float) -> None:
        ticket = self.arrive(admission, method)
        admission.start(ticket, None)
        self.now += seconds
        self.end(admission, ticket)


def test_calls_beyond_the_in_flight_limit_are_refused_with_a_retry_delay() -> None:
    pool = Pool()
    admission = pool.admission(workers=4, max_in_flight=2)
    pool.arrive(admission)
    pool.arrive(admission)
    with pytest.raises(ResourceExhausted) as caught:
        admission.arrive("Search")
    assert caught.value.reason == "TOO_MANY_CALLS"
    assert caught.value.retry_after_s is not None and caught.value.retry_after_s > 0


def test_arrival_is_refused_when_the_queue_ahead_would_outlast_the_wait_limit() -> None:
    pool = Pool()
    admission = pool.admission(workers=2, max_queue_wait_s=0.55)
    pool.served(admission, "Search", 0.2)  # calls take about 0.2 s
    running = [pool.arrive(admission) for _ in range(2)]  # both threads busy
    # Each queued call waits 0.1 s longer than the one before: 0.1 ... 0.5 s.
    queued = [pool.arrive(admission) for _ in range(5)]
    with pytest.raises(ResourceExhausted) as caught:
        admission.arrive("Search")  # would wait 6 x 0.2 s / 2 threads = 0.6 s
    assert caught.value.reason == "OVERLOADED"
    assert caught.value.retry_after_s == pytest.approx(0.6, rel=0.01)
    # As calls finish, new ones are admitted again.
    for ticket in running + queued[:2]:
        admission.start(ticket, None)
        pool.end(admission, ticket)
    pool.arrive(admission)


def test_a_queued_call_that_cannot_finish_before_its_deadline_is_shed() -> None:
    pool = Pool()
    admission = pool.admission(workers=1)
    pool.served(admission, "Search", 0.3)
    ticket = pool.arrive(admission)
    pool.now += 0.5  # waited half a second for a thread
    with pytest.raises(ResourceExhausted) as caught:
        admission.start(ticket, time_remaining_s=0.1)  # 0.1 s left, Search takes 0.3 s
    assert caught.value.reason == "OVERLOADED"
    pool.end(admission, ticket)
    # A shed call does not drag the mean service time down.
    assert admission.expected_service_s("Search") == pytest.approx(0.3)


def test_a_call_that_did_not_queue_runs_even_with_a_short_deadline() -> None:
    pool = Pool()
    admission = pool.admission(workers=1)
    pool.served(admission, "Search", 0.3)
    ticket = pool.arrive(admission)
    admission.start(ticket, time_remaining_s=0.1)  # the caller may know better than a mean
    assert ticket.started is not None


def test_service_time_is_a_running_mean_per_method() -> None:
    pool = Pool()
    admission = pool.admission(workers=1)
    pool.served(admission, "Embed", 0.1)
    for _ in range(50):
        pool.served(admission, "Embed", 0.3)
    pool.served(admission, "GetEncoderInfo", 0.001)
    assert admission.expected_service_s("Embed") == pytest.approx(0.3, rel=0.01)
    assert admission.expected_service_s("GetEncoderInfo") == pytest.approx(0.001)
    assert admission.expected_service_s("Unknown") is None


def test_the_pool_counts_what_waits_and_runs_until_it_ends() -> None:
    pool = CountingExecutor(1)
    gate = threading.Event()
    first = pool.submit(gate.wait, 5)
    second = pool.submit(lambda: None)
    assert pool.in_progress == 2
    gate.set()
    first.result(5)
    second.result(5)
    assert pool.in_progress == 0
    failing = pool.submit(lambda: 1 / 0)  # a call that raises gives its place back too
    with pytest.raises(ZeroDivisionError):
        failing.result(5)
    assert pool.in_progress == 0
    pool.shutdown()


def test_client_streams_have_their_own_limit_below_the_threads() -> None:
    pool = Pool()
    admission = Admission(8, 100, 10, lambda: pool.in_progress, pool.clock, max_streams=2)
    streams = [admission.arrive("UploadBundle", stream=True) for _ in range(3)]
    admission.start(streams[0], None)
    admission.start(streams[1], None)
    with pytest.raises(ResourceExhausted) as caught:
        admission.arrive("UploadBundle", stream=True)
    assert caught.value.reason == "TOO_MANY_STREAMS" and caught.value.retry_after_s
    # Admitted while the others were queued, it is refused when it would start.
    with pytest.raises(ResourceExhausted):
        admission.start(streams[2], None)
    admission.finish(streams[2])  # refused before it ran: nothing to give back
    admission.finish(streams[0])
    admission.start(admission.arrive("UploadBundle", stream=True), None)
    # Never every thread, whatever is configured.
    assert Admission(4, 100, 10, lambda: 0, max_streams=16).max_streams == 3


def test_threads_held_by_streams_or_long_calls_are_not_counted_as_soon_free() -> None:
    """Going by the mean service time alone, searches behind stalled uploads looked like
    a few milliseconds' wait and were admitted to wait forever."""
    pool = Pool()
    admission = Admission(4, 100, 0.5, lambda: pool.in_progress, pool.clock, max_streams=3)
    pool.served(admission, "Search", 0.01)
    for _ in range(3):  # three stalled uploads hold three of the four threads
        ticket = admission.arrive("UploadBundle", stream=True)
        pool.in_progress += 1
        admission.start(ticket, None)
    slow = pool.arrive(admission)  # one search running on the last thread ...
    admission.start(slow, None)
    pool.now += 2.0  # ... for two seconds already
    with pytest.raises(ResourceExhausted) as caught:
        admission.arrive("Search")
    assert caught.value.reason == "OVERLOADED" and "no handler will be free soon" in caught.value.message
    pool.end(admission, slow)
    admission.arrive("Search")  # a thread is free again
