"""Answers are refused the moment they pass the message limit, and the answers being
built at once share one memory budget, returned when each is done."""

from __future__ import annotations

import pytest

from contentembed.services.common.budget import (
    COPIES_WHILE_BUILDING,
    AnswerSize,
    MemoryBudget,
)
from contentembed.services.common.errors import ResourceExhausted


def test_an_answer_is_refused_as_soon_as_it_passes_the_limit_with_advice() -> None:
    size = AnswerSize(1000, "lower top_k")
    size.add(600)
    size.add(400)  # exactly at the limit is fine
    with pytest.raises(ResourceExhausted) as caught:
        size.add(1)
    assert caught.value.reason == "ANSWER_TOO_LARGE" and caught.value.retry_after_s is None
    assert "lower top_k" in caught.value.message


def test_answers_share_the_budget_and_return_it() -> None:
    budget = MemoryBudget(8 << 20)
    with AnswerSize(16 << 20, "x", budget) as first:
        first.add(2 << 20)  # holds three copies: 6 MiB
        assert budget.reserved_bytes == COPIES_WHILE_BUILDING * (2 << 20)
        with pytest.raises(ResourceExhausted) as caught, AnswerSize(16 << 20, "x", budget) as second:
            second.add(1 << 20)
        assert caught.value.reason == "MEMORY_BUDGET_EXCEEDED"
        assert caught.value.retry_after_s is not None  # short-lived: worth a retry
    assert budget.reserved_bytes == 0
    with AnswerSize(16 << 20, "x", budget) as third:  # room again
        third.add(2 << 20)
    assert budget.reserved_bytes == 0
