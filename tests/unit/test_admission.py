"""Admission control with a hand-driven clock: what is refused at arrival, what is shed
when a thread picks it up, and what runs."""

from __future__ import annotations

import pytest

from contentembed.services.common.admission import Admission
from contentembed.services.common.errors import ResourceExhausted


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def served(admission: Admission, clock: Clock, method: str, seconds: float) -> None:
    ticket = admission.arrive(method)
    admission.start(ticket, None)
    clock.now += seconds
    admission.finish(ticket)


def test_calls_beyond_the_in_flight_limit_are_refused_with_a_retry_delay() -> None:
    clock = Clock()
    admission = Admission(workers=4, max_in_flight=2, max_queue_wait_s=10, clock=clock)
    admission.arrive("Search")
    admission.arrive("Search")
    with pytest.raises(ResourceExhausted) as caught:
        admission.arrive("Search")
    assert caught.value.reason == "TOO_MANY_CALLS"
    assert caught.value.retry_after_s is not None and caught.value.retry_after_s > 0


def test_arrival_is_refused_when_the_queue_ahead_would_outlast_the_wait_limit() -> None:
    clock = Clock()
    admission = Admission(workers=2, max_in_flight=100, max_queue_wait_s=0.55, clock=clock)
    served(admission, clock, "Search", 0.2)  # calls take about 0.2 s
    running = [admission.arrive("Search") for _ in range(2)]  # both threads busy
    # Each queued call waits 0.1 s longer than the one before: 0.1 ... 0.5 s.
    queued = [admission.arrive("Search") for _ in range(5)]
    with pytest.raises(ResourceExhausted) as caught:
        admission.arrive("Search")  # would wait 6 x 0.2 s / 2 threads = 0.6 s
    assert caught.value.reason == "OVERLOADED"
    assert caught.value.retry_after_s == pytest.approx(0.6, rel=0.01)
    # As calls finish, new ones are admitted again.
    for ticket in running + queued[:2]:
        admission.start(ticket, None)
        admission.finish(ticket)
    admission.arrive("Search")


def test_a_queued_call_that_cannot_finish_before_its_deadline_is_shed() -> None:
    clock = Clock()
    admission = Admission(workers=1, max_in_flight=100, max_queue_wait_s=10, clock=clock)
    served(admission, clock, "Search", 0.3)
    ticket = admission.arrive("Search")
    clock.now += 0.5  # waited half a second for a thread
    with pytest.raises(ResourceExhausted) as caught:
        admission.start(ticket, time_remaining_s=0.1)  # 0.1 s left, Search takes 0.3 s
    assert caught.value.reason == "OVERLOADED"
    admission.finish(ticket)
    assert admission.in_flight == 0
    # A shed call does not drag the mean service time down.
    assert admission.expected_service_s("Search") == pytest.approx(0.3)


def test_a_call_that_did_not_queue_runs_even_with_a_short_deadline() -> None:
    clock = Clock()
    admission = Admission(workers=1, max_in_flight=100, max_queue_wait_s=10, clock=clock)
    served(admission, clock, "Search", 0.3)
    ticket = admission.arrive("Search")
    admission.start(ticket, time_remaining_s=0.1)  # the caller may know better than a mean
    assert ticket.started is not None


def test_service_time_is_a_running_mean_per_method() -> None:
    clock = Clock()
    admission = Admission(workers=1, max_in_flight=100, max_queue_wait_s=10, clock=clock)
    served(admission, clock, "Embed", 0.1)
    for _ in range(50):
        served(admission, clock, "Embed", 0.3)
    served(admission, clock, "GetEncoderInfo", 0.001)
    assert admission.expected_service_s("Embed") == pytest.approx(0.3, rel=0.01)
    assert admission.expected_service_s("GetEncoderInfo") == pytest.approx(0.001)
    assert admission.expected_service_s("Unknown") is None
