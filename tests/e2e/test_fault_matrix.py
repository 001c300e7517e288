"""The rows of docs/reliability.md's expectation matrix that need a whole stack: a shard
frozen or killed, an encoder killed, the gateway restarted — what a caller gets, with
which code, within its deadline, and that everything answers again once the process is
back (restarted the way `contentembed up` restarts it)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator

import pytest

from contentembed.cli.stack import LocalStack
from contentembed.client import ApiError, Client, SearchResult
from tests.support.documents import TEN_PRODUCTS
from tests.support.processes import kill, service

pytestmark = pytest.mark.e2e
DOCUMENTS = TEN_PRODUCTS
DEADLINE_S = 2.0
# Over the caller's deadline, what an answer may take: the client library's own overhead.
SLACK_S = 1.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    stack = LocalStack(run_dir=tmp_path_factory.mktemp("faults"), shard_count=2)
    stack.start(timeout=300)
    try:
        with Client(stack.gateway_address, timeout=60) as client:
            client.create_collection("things", exist_ok=True)
            client.upsert_documents("things", DOCUMENTS)
        yield stack
    finally:
        stack.stop()


def timed(call: Callable[[], SearchResult]) -> tuple[SearchResult | ApiError, float]:
    started = time.monotonic()
    try:
        return call(), time.monotonic() - started
    except ApiError as error:
        return error, time.monotonic() - started


def search(stack: LocalStack, text: str, allow_partial: bool) -> tuple[SearchResult | ApiError, float]:
    # One attempt: these tests measure the services' own failure, not the SDK's retries.
    with Client(stack.gateway_address, retries=0) as client:
        return timed(lambda: client.search(
            "things", text=text, top_k=3, allow_partial=allow_partial, timeout=DEADLINE_S))


def back_to_serving(stack: LocalStack, name: str) -> None:
    """Restarts what exited, as `up` does, and waits until it and the gateway answer."""
    stack.poll()
    service(stack, name).wait_until_serving(time.monotonic() + 120)
    deadline = time.monotonic() + 30
    while True:
        outcome, _ = search(stack, "kettle", allow_partial=False)
        if isinstance(outcome, SearchResult):
            return
        assert time.monotonic() < deadline, f"no full answer after {name} came back: {outcome}"
        time.sleep(0.3)


def test_a_frozen_shard_degrades_to_partial_or_deadline_exceeded_within_the_deadline(stack) -> None:
    shard = service(stack, "index-1")
    os.kill(shard.pid, signal.SIGSTOP)
    try:
        partial, took = search(stack, "coffee grinder", allow_partial=True)
        assert isinstance(partial, SearchResult), partial
        assert partial.partial and took < DEADLINE_S + SLACK_S
        failed = [s for s in partial.shards if not s.ok]
        assert [s.shard_index for s in failed] == [1]
        strict, took = search(stack, "coffee grinder", allow_partial=False)
        assert isinstance(strict, ApiError) and strict.code == "DEADLINE_EXCEEDED", strict
        assert took < DEADLINE_S + SLACK_S
    finally:
        os.kill(shard.pid, signal.SIGCONT)
    back_to_serving(stack, "index-1")


def test_a_killed_shard_degrades_at_once_and_serves_again_after_its_restart(stack) -> None:
    kill(stack, "index-0")
    partial, took = search(stack, "tent for two", allow_partial=True)
    assert isinstance(partial, SearchResult) and partial.partial, partial
    assert took < DEADLINE_S + SLACK_S
    strict, _ = search(stack, "tent for two", allow_partial=False)
    assert isinstance(strict, ApiError) and strict.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
    with Client(stack.gateway_address) as client:
        with pytest.raises(ApiError) as caught:
            client.upsert_documents("things", DOCUMENTS, timeout=DEADLINE_S)
    assert caught.value.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
    back_to_serving(stack, "index-0")
    with Client(stack.gateway_address) as client:
        assert client.get_collection("things").item_count == len(DOCUMENTS)  # nothing lost


def test_a_killed_encoder_fails_new_queries_fast_but_cached_ones_still_answer(stack) -> None:
    cached, _ = search(stack, "espresso machine", allow_partial=False)
    assert isinstance(cached, SearchResult)
    kill(stack, "text-encoder")
    fresh, took = search(stack, "something never asked before", allow_partial=True)
    assert isinstance(fresh, ApiError) and fresh.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED"), fresh
    assert took < DEADLINE_S + SLACK_S
    again, _ = search(stack, "espresso machine", allow_partial=False)
    assert isinstance(again, SearchResult) and again.cache_hit
    back_to_serving(stack, "text-encoder")


def test_a_restarted_gateway_is_unavailable_then_answers_with_everything_kept(stack) -> None:
    kill(stack, "gateway")
    down, took = search(stack, "sleeping bag", allow_partial=False)
    assert isinstance(down, ApiError) and down.code == "UNAVAILABLE", down
    back_to_serving(stack, "gateway")
    with Client(stack.gateway_address) as client:
        assert client.get_collection("things").item_count == len(DOCUMENTS)
        assert client.search("things", text="sleeping bag", top_k=1).hits[0].id == "doc-3"
