"""Gathering the shards' answers to one search, and the partial-result policy. Pure: no
grpc."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from contentembed.services.common.errors import (
    ContentEmbedError,
    DeadlineExceeded,
    Unavailable,
    caused_by_request,
)
from contentembed.services.gateway.ports import Pending, ShardAnswer, ShardPort

AnswerT = TypeVar("AnswerT", bound=ShardAnswer)


@dataclass(frozen=True)
class ShardOutcome:
    shard_index: int
    ok: bool
    error: str = ""
    hit_count: int = 0
    latency_ms: float = 0.0


def gather_shards(
    shards: Sequence[ShardPort],
    calls: Sequence[Pending[AnswerT]],
    allow_partial: bool,
    deadline: float,
) -> tuple[list[AnswerT], list[ShardOutcome]]:
    """The answers of the shards that answered and how each shard did, in shard order.

    Raises a request-level error (unknown collection, wrong space, an answer too large
    for one message) as it is: it is the caller's to fix and the same on every shard, so
    never a "partial" answer. Raises
    SHARDS_FAILED when a shard failed and the caller did not allow a partial answer, or
    when none answered."""
    answers: list[AnswerT] = []
    outcomes: list[ShardOutcome] = []
    failures: list[ContentEmbedError] = []
    for shard, call in zip(shards, calls):
        try:
            answer = call.result()
        except ContentEmbedError as error:
            failures.append(error)
            # With its reason: UNAVAILABLE NOT_READY (a shard replaying its log, back
            # soon) reads differently from a shard that is down.
            label = error.code if error.reason == error.code else f"{error.code} {error.reason}"
            outcomes.append(
                ShardOutcome(shard.shard_index, False, f"{label}: {error.message}",
                             latency_ms=call.latency_ms)
            )
            continue
        answers.append(answer)
        outcomes.append(
            ShardOutcome(shard.shard_index, True,
                         hit_count=len(answer.hits) + len(answer.lexical_hits),
                         latency_ms=call.latency_ms)
        )
    for error in failures:
        if caused_by_request(error):
            raise error
    if failures and (not allow_partial or not answers):
        summary = "; ".join(error.message for error in failures)
        failed = f"{len(failures)} of {len(shards)} index shards failed: {summary}"
        if time.monotonic() >= deadline:
            raise DeadlineExceeded(failed, reason="SHARDS_FAILED")
        raise Unavailable(failed, reason="SHARDS_FAILED")
    return answers, outcomes
