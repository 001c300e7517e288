"""Bounds on the memory an answer takes while it is built (pure: no grpc).

An answer is refused the moment it grows past the message limit, not once it has been
built: a SearchBatch of 1,024 queries x 1,000 hits with 8 KiB of metadata each would
otherwise build 8 GB before its size was looked at (an index shard was OOM-killed that
way). ``AnswerSize`` counts the bytes as the builder adds them.

All answers under construction in one process also share a ``MemoryBudget`` (what
Elasticsearch calls a request circuit breaker): each holds a reservation for what it has
built so far, times the copies building makes, and a call that would take the process past
the budget is refused with RESOURCE_EXHAUSTED and a retry delay. So 16 handler threads
building 16 MiB answers at once cannot take the process past the budget either.
"""

from __future__ import annotations

import threading
from types import TracebackType

from contentembed.services.common.errors import ResourceExhausted

# Building an answer holds about this many copies of its encoded size at once: the
# Python values (strings, lists), the protobuf message, and its serialized bytes.
COPIES_WHILE_BUILDING = 3
# Reservations grow in steps of this size, not per hit.
RESERVATION_STEP = 1 << 20
# Reservations last the milliseconds an answer takes to build: worth a short retry.
BUDGET_RETRY_S = 0.1


class MemoryBudget:
    """Bytes the answers being built in this process may hold together."""

    def __init__(self, limit_bytes: int) -> None:
        if limit_bytes < RESERVATION_STEP:
            raise ValueError(f"a memory budget needs at least {RESERVATION_STEP} bytes")
        self.limit_bytes = limit_bytes
        self._reserved = 0
        self._lock = threading.Lock()

    @property
    def reserved_bytes(self) -> int:
        return self._reserved

    def reserve(self, size: int) -> None:
        """Takes ``size`` bytes of the budget, or raises ResourceExhausted
        MEMORY_BUDGET_EXCEEDED (retryable: reservations are short-lived)."""
        with self._lock:
            if self._reserved + size > self.limit_bytes:
                raise ResourceExhausted(
                    f"answers being built hold {self._reserved} bytes; this one needs "
                    f"{size} more, beyond the budget of {self.limit_bytes} "
                    "(--max-answer-memory-bytes); retry shortly",
                    reason="MEMORY_BUDGET_EXCEEDED",
                    retry_after_s=BUDGET_RETRY_S,
                )
            self._reserved += size

    def release(self, size: int) -> None:
        with self._lock:
            self._reserved -= size


class AnswerSize:
    """The encoded size of one answer as it is built. ``add`` raises ResourceExhausted
    ANSWER_TOO_LARGE as soon as it would pass ``max_bytes`` (saying ``advice``: what the
    caller can change), and MEMORY_BUDGET_EXCEEDED when the process's budget (if any)
    cannot hold it. Use as a context manager: the reservation is returned on exit."""

    def __init__(self, max_bytes: int, advice: str, budget: MemoryBudget | None = None) -> None:
        self.max_bytes = max_bytes
        self.advice = advice
        self.used = 0
        self._budget = budget
        self._reserved = 0

    def add(self, size: int) -> None:
        self.used += size
        if self.used > self.max_bytes:
            raise ResourceExhausted(
                f"the answer would be more than {self.max_bytes} bytes, the message limit: "
                f"{self.advice}",
                reason="ANSWER_TOO_LARGE",
            )
        if self._budget is not None:
            needed = self.used * COPIES_WHILE_BUILDING
            if needed > self._reserved:
                step = max(RESERVATION_STEP, needed - self._reserved)
                self._budget.reserve(step)
                self._reserved += step

    def __enter__(self) -> AnswerSize:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self._budget is not None and self._reserved:
            self._budget.release(self._reserved)
            self._reserved = 0
