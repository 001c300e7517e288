"""Client-side throttling: once the gateway sheds load a client sends about k times what
it accepts and budgets its overload retries; a gateway that is down or a bad request
changes neither."""

from __future__ import annotations

import asyncio

import pytest

from contentembed.client import AsyncClient, Client, ResourceExhaustedError, UnavailableError
from contentembed.client.throttle import Throttle
from tests.support.flaky_gateway import overloaded


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_nothing_is_refused_while_the_service_accepts() -> None:
    throttle = Throttle(k=2.0, clock=Clock(), draw=lambda: 0.0)
    for _ in range(1000):
        assert throttle.admit()
        throttle.record("OK")
    assert throttle.rejection_probability() == 0.0
    # Failures that are not overload leave it alone: a shard down, a bad request, a size
    # limit (with its reason, or gRPC's own "larger than max"), a quota.
    for code in ("UNAVAILABLE", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED"):
        throttle.record(code)
    throttle.record("RESOURCE_EXHAUSTED", None, "ANSWER_TOO_LARGE")
    throttle.record("RESOURCE_EXHAUSTED", None, "", "Received message larger than max (9 vs. 4)")
    throttle.record("RESOURCE_EXHAUSTED", None, "TOO_MANY_COLLECTIONS")
    assert throttle.rejection_probability() == 0.0
    assert throttle.retry_allowed("RESOURCE_EXHAUSTED", 0.1)
    # gRPC's own refusal of a flooded server has neither reason nor delay: overload.
    throttle.record("RESOURCE_EXHAUSTED", None, "", "Concurrent RPC limit exceeded!")
    assert throttle._buckets[-1][3] == 1


def test_under_shedding_the_client_sends_about_k_times_what_is_accepted() -> None:
    clock = Clock()
    throttle = Throttle(k=2.0, clock=clock)
    sent = accepted = 0
    for _ in range(20_000):  # 20x: the service accepts one call in twenty sent to it
        clock.now += 0.001
        if not throttle.admit():
            continue
        sent += 1
        if sent % 20 == 0:
            accepted += 1
            throttle.record("OK")
        else:
            throttle.record("RESOURCE_EXHAUSTED", 0.05)
    # Of 20,000 attempts about 2 x accepted reach the service, not all of them.
    assert sent < 0.2 * 20_000
    assert throttle.rejection_probability() > 0.8
    # And the overload retries are budgeted: no tokens left.
    assert not throttle.retry_allowed("RESOURCE_EXHAUSTED", 0.05)
    assert throttle.retry_allowed("UNAVAILABLE", None)  # restarts are still ridden out
    # The window forgets: ten quiet seconds later everything is sent again.
    clock.now += 11
    assert throttle.rejection_probability() == 0.0


def test_a_client_refuses_locally_once_the_gateway_sheds(flaky_gateway) -> None:
    servicer, address = flaky_gateway
    servicer.failures = 10**6
    servicer.failure = overloaded(0.01)
    with Client(address, timeout=2.0, retries=3, initial_backoff_s=0.01) as client:
        reasons = []
        for _ in range(200):
            with pytest.raises(ResourceExhaustedError) as caught:
                client.search("shop", text="x")
            reasons.append(caught.value.reason)
    throttled = reasons.count("CLIENT_THROTTLED")
    assert throttled > 100, reasons[:20]  # most never reached the gateway
    assert servicer.calls["Search"] < 200 + 20  # and retries stopped with the budget


def test_a_gateway_that_is_down_is_still_retried_and_never_throttled(flaky_gateway) -> None:
    servicer, address = flaky_gateway
    servicer.failures = 10**6
    servicer.failure = pytest.importorskip("grpc").StatusCode.UNAVAILABLE
    with Client(address, timeout=2.0, retries=1, initial_backoff_s=0.001) as client:
        for _ in range(50):
            with pytest.raises(UnavailableError):
                client.search("shop", text="x")
    assert servicer.calls["Search"] == 100  # every call and its retry went out


def test_the_async_client_throttles_the_same_way(flaky_gateway) -> None:
    servicer, address = flaky_gateway
    servicer.failures = 10**6
    servicer.failure = overloaded(0.01)

    async def run() -> list[str]:
        async with AsyncClient(address, timeout=2.0, retries=0) as client:
            reasons = []
            for _ in range(200):
                try:
                    await client.search("shop", text="x")
                except ResourceExhaustedError as error:
                    reasons.append(error.reason)
            return reasons

    reasons = asyncio.run(run())
    assert reasons.count("CLIENT_THROTTLED") > 100


def test_a_burst_in_flight_is_not_taken_for_overload_until_the_service_refuses() -> None:
    """A fresh client sending 64 calls at once: none answered yet, and none refused, so
    nothing is throttled. Once the service refuses one, the calls still in flight count
    as not accepted (a service whose queues grow is backed off from too)."""
    throttle = Throttle(k=1.5, clock=Clock(), draw=lambda: 0.5)
    assert all(throttle.admit() for _ in range(64))
    assert throttle.rejection_probability() == 0.0
    throttle.record("RESOURCE_EXHAUSTED", 0.1)
    assert throttle.rejection_probability() > 0.9
