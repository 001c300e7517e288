"""SDK retries against a fake gateway on port 0 that fails N times, then answers."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from contentembed.client import (
    AsyncClient,
    Client,
    InvalidArgumentError,
    ResourceExhaustedError,
    UnavailableError,
)
from tests.support.flaky_gateway import overloaded


def test_search_is_retried_on_unavailable_until_it_answers(flaky_gateway) -> None:
    servicer, address = flaky_gateway
    servicer.failures = 2
    with Client(address, timeout=5.0, retries=3, initial_backoff_s=0.01) as client:
        result = client.search("shop", text="x")
    assert [h.id for h in result.hits] == ["a"] and servicer.calls["Search"] == 3


def test_retries_give_up_after_the_configured_number(flaky_gateway) -> None:
    servicer, address = flaky_gateway
    servicer.failures = 10
    with Client(address, timeout=5.0, retries=2, initial_backoff_s=0.01) as client:
        with pytest.raises(UnavailableError):
            client.search("shop", text="x")
    assert servicer.calls["Search"] == 3


def test_zero_retries_disables_retrying(flaky_gateway) -> None:
    servicer, address = flaky_gateway
    servicer.failures = 1
    with Client(address, retries=0) as client, pytest.raises(UnavailableError):
        client.search("shop", text="x")
    assert servicer.calls["Search"] == 1


def test_upserts_are_retried_idempotent_by_id(flaky_gateway) -> None:
    servicer, address = flaky_gateway
    servicer.failures = 1
    with Client(address, initial_backoff_s=0.01) as client:
        assert client.upsert_documents("shop", [{"id": "a", "text": "x"}]).upserted_count == 1
    assert servicer.calls["UpsertDocuments"] == 2


@pytest.mark.parametrize("call", [
    lambda c: c.set_candidate("shop", "v2"),
    lambda c: c.promote_candidate("shop"),
    lambda c: c.delete_collection("shop"),
])
def test_calls_that_are_not_idempotent_are_never_retried(flaky_gateway, call) -> None:
    servicer, address = flaky_gateway
    servicer.failures = 1
    with Client(address, retries=5, initial_backoff_s=0.01) as client, pytest.raises(UnavailableError):
        call(client)
    assert sum(servicer.calls.values()) == 1


def test_overload_waits_the_servers_retry_delay(flaky_gateway) -> None:
    servicer, address = flaky_gateway
    servicer.failures, servicer.failure = 1, overloaded(0.3)
    with Client(address, timeout=5.0, initial_backoff_s=0.001) as client:
        started = time.monotonic()
        client.search("shop", text="x")
    assert time.monotonic() - started >= 0.3 and servicer.calls["Search"] == 2


def test_a_retry_delay_past_the_deadline_is_not_waited_for(flaky_gateway) -> None:
    servicer, address = flaky_gateway
    servicer.failures, servicer.failure = 1, overloaded(5.0)
    with Client(address, timeout=1.0) as client:
        started = time.monotonic()
        with pytest.raises(ResourceExhaustedError) as caught:
            client.search("shop", text="x")
    assert time.monotonic() - started < 0.5 and caught.value.retry_after_s == pytest.approx(5.0)
    assert servicer.calls["Search"] == 1


def test_other_codes_are_not_retried(flaky_gateway) -> None:
    servicer, address = flaky_gateway
    servicer.failures, servicer.failure = 1, grpc.StatusCode.INVALID_ARGUMENT
    with Client(address) as client, pytest.raises(InvalidArgumentError):
        client.search("shop", text="x")
    assert servicer.calls["Search"] == 1


def test_retries_stop_at_the_calls_deadline(flaky_gateway) -> None:
    servicer, address = flaky_gateway
    servicer.failures = 10_000
    with Client(address, retries=1000, initial_backoff_s=0.05, max_backoff_s=0.1) as client:
        started = time.monotonic()
        with pytest.raises(UnavailableError):
            client.search("shop", text="x", timeout=0.6)
    assert time.monotonic() - started < 0.9 and 3 <= servicer.calls["Search"] < 30


def test_async_client_retries_the_same_way(flaky_gateway) -> None:
    servicer, address = flaky_gateway
    servicer.failures = 2

    async def main() -> None:
        async with AsyncClient(address, timeout=5.0, initial_backoff_s=0.01) as client:
            result = await client.search("shop", text="x")
            assert result.version == "live"
            with pytest.raises(UnavailableError):
                await client.set_candidate("shop", "v2")

    asyncio.run(main())
    assert servicer.calls["Search"] == 3 and servicer.calls["SetCandidate"] == 1
