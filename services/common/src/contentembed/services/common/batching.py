"""Dynamic (cross-request) batching, as Triton's dynamic batcher does it.

Concurrent requests wait in one bounded queue; a single worker thread takes the oldest
request and keeps adding the next ones until ``max_batch_size`` items are gathered or
the oldest has waited ``max_queue_delay_s``, then runs them through the model in one
call and hands each request its slice of the results. Model work therefore runs on the
worker thread, never on gRPC threads, one batch at a time.

A full queue refuses new requests (ResourceExhausted with a retry hint) instead of
growing without bound; so does a request whose deadline comes before the queue ahead of
it can be worked off (at the recent batches' median time per item, with what is left
of the batch running): queued, it would only take
model time from requests that can still finish. Requests whose deadline passed or whose
caller went away are dropped when they reach the head of the queue, without being computed.

Traced (given a tracer), each request gets two spans under its caller's span: its wait
in the queue (``encoder.batch_wait``) and the model call of the batch it rode in
(``encoder.batch_encode``, with the batch's items and requests). One model call thus
shows in the trace of every request it served, the same batch number on each.
"""

from __future__ import annotations

import collections
import logging
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from opentelemetry import context as otel_context
from opentelemetry.trace import Span, Status, StatusCode, Tracer
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from contentembed.services.common.errors import (
    Cancelled,
    ContentEmbedError,
    DeadlineExceeded,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)
from contentembed.services.common.metrics import LATENCY_BUCKETS

log = logging.getLogger(__name__)

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")

BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 256, 512)
ESTIMATE_WINDOW = 16  # batches the queue-wait estimate looks back on


class BatcherMetrics:
    def __init__(self, registry: CollectorRegistry, service: str) -> None:
        self.service = service
        self.batch_size = Histogram(
            "contentembed_batch_size_items", "Items per model call.", ["service"],
            registry=registry, buckets=BATCH_SIZE_BUCKETS,
        ).labels(service)
        self.queue_depth = Gauge(
            "contentembed_batch_queue_depth_items", "Items waiting for the model.", ["service"],
            registry=registry,
        ).labels(service)
        self.queue_wait = Histogram(
            "contentembed_batch_queue_wait_seconds", "Time a request waited in the queue.",
            ["service"], registry=registry, buckets=LATENCY_BUCKETS,
        ).labels(service)
        self.compute = Histogram(
            "contentembed_batch_compute_seconds", "Model time per batch.", ["service"],
            registry=registry, buckets=LATENCY_BUCKETS,
        ).labels(service)
        self.items = Counter(
            "contentembed_batch_items", "Items computed (rate() gives items/s).", ["service"],
            registry=registry,
        ).labels(service)
        self.dropped = Counter(
            "contentembed_batch_dropped_requests",
            "Requests dropped before compute, by why.", ["service", "why"], registry=registry,
        )
        self.rejected = Counter(
            "contentembed_batch_rejected_requests",
            "Requests refused: the queue was full or could not be worked off before their deadline.",
            ["service"], registry=registry,
        ).labels(service)


@dataclass
class _Request(Generic[ItemT, ResultT]):
    items: Sequence[ItemT]
    deadline: float | None
    is_active: Callable[[], bool]
    enqueued: float = field(default_factory=time.monotonic)
    future: Future[list[ResultT]] = field(default_factory=Future)
    # Traced only: the submitter's context (the worker thread has none of its own) and
    # the wall-clock enqueue time the wait span starts at.
    trace_context: otel_context.Context | None = None
    enqueued_ns: int = 0


class DynamicBatcher(Generic[ItemT, ResultT]):
    """Runs ``run_batch(items) -> results`` (same length, same order) over merged requests."""

    def __init__(
        self,
        run_batch: Callable[[list[ItemT]], Sequence[ResultT]],
        *,
        max_batch_size: int,
        max_queue_delay_s: float,
        max_queue_items: int,
        metrics: BatcherMetrics,
        name: str = "batcher",
        tracer: Tracer | None = None,
    ) -> None:
        if max_batch_size < 1 or max_queue_items < max_batch_size:
            raise ValueError("need 1 <= max_batch_size <= max_queue_items")
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_s
        self.max_queue_items = max_queue_items
        self.metrics = metrics
        self._tracer = tracer
        self.batches_run = 0
        self.items_run = 0
        # (items, seconds) of the last batches: the queue wait is estimated from their
        # median time per item. A median, because under CPU contention single batches take
        # several times their usual time, and an estimate that follows the latest refused
        # calls that would have made their deadline (at 20x load: "0 items are queued ahead,
        # about 1841 ms of model time; the deadline is in 1809 ms").
        self._recent: collections.deque[tuple[int, float]] = collections.deque(maxlen=ESTIMATE_WINDOW)
        self._computing_since: float | None = None
        self._computing_items = 0
        self._queue: collections.deque[_Request[ItemT, ResultT]] = collections.deque()
        self._queued_items = 0
        self._cond = threading.Condition()
        self._closed = False
        self._worker = threading.Thread(target=self._work, name=f"{name}-worker", daemon=True)
        self._worker.start()

    def submit(
        self,
        items: Sequence[ItemT],
        deadline: float | None = None,
        is_active: Callable[[], bool] = lambda: True,
    ) -> Future[list[ResultT]]:
        """Queues one request; its future resolves to its own results, in order."""
        if not items:
            raise InvalidArgument("nothing to compute", reason="EMPTY_BATCH")
        if len(items) > self.max_batch_size:
            raise InvalidArgument(
                f"{len(items)} items exceed the maximum batch size {self.max_batch_size}",
                reason="BATCH_TOO_LARGE",
            )
        request: _Request[ItemT, ResultT] = _Request(items, deadline, is_active)
        if self._tracer is not None:
            request.trace_context = otel_context.get_current()
            request.enqueued_ns = time.time_ns()
        with self._cond:
            if self._closed:
                raise Unavailable("shutting down", reason="SHUTTING_DOWN")
            if self._queued_items + len(items) > self.max_queue_items:
                self.metrics.rejected.inc()
                raise ResourceExhausted(
                    f"queue full ({self._queued_items} items waiting, limit "
                    f"{self.max_queue_items}); retry shortly",
                    reason="QUEUE_FULL",
                    retry_after_s=self._retry_hint_s(),
                )
            if deadline is not None:
                done_by = request.enqueued + self._expected_wait_locked(len(items))
                if done_by > deadline:
                    self.metrics.rejected.inc()
                    raise ResourceExhausted(
                        f"overloaded: {self._queued_items} items are queued ahead, about "
                        f"{(done_by - request.enqueued) * 1000:.0f} ms of model time; the "
                        f"deadline is in {(deadline - request.enqueued) * 1000:.0f} ms",
                        reason="OVERLOADED",
                        retry_after_s=self._retry_hint_s(),
                    )
            self._queue.append(request)
            self._queued_items += len(items)
            self.metrics.queue_depth.set(self._queued_items)
            self._cond.notify()
        return request.future

    def _per_item_s(self) -> float:
        """The median model time per item of the recent batches; 0 before any."""
        if not self._recent:
            return 0.0
        return statistics.median(seconds / items for items, seconds in self._recent)

    def _expected_wait_locked(self, items: int) -> float:
        """Seconds until ``items`` more would be computed: what is left of the batch now
        running, then the queue ahead and them. Zero until a batch has been measured."""
        per_item = self._per_item_s()
        running = 0.0
        if self._computing_since is not None:
            expected = self._computing_items * per_item
            running = max(0.0, expected - (time.monotonic() - self._computing_since))
        return running + (self._queued_items + items) * per_item

    def _retry_hint_s(self) -> float:
        """About the time to work off the queue at the recent batch compute time."""
        batches_waiting = max(1, self._queued_items // self.max_batch_size)
        per_batch = (
            statistics.median(seconds for _, seconds in self._recent) if self._recent
            else self.max_queue_delay_s or 0.05
        )
        return round(min(5.0, batches_waiting * per_batch), 3)

    def close(self) -> None:
        """Stops taking requests; fails the queued ones with UNAVAILABLE."""
        with self._cond:
            self._closed = True
            pending = list(self._queue)
            self._queue.clear()
            self._queued_items = 0
            self._cond.notify_all()
        for request in pending:
            if request.future.set_running_or_notify_cancel():
                request.future.set_exception(Unavailable("shutting down", reason="SHUTTING_DOWN"))
        self._worker.join(timeout=30)

    # -- worker ----------------------------------------------------------------------
    def _drop_reason(self, request: _Request[ItemT, ResultT], now: float) -> ContentEmbedError | None:
        if request.deadline is not None and now >= request.deadline:
            return DeadlineExceeded("deadline passed while queued; not computed")
        if not request.is_active():
            return Cancelled("caller went away while queued; not computed")
        return None

    def _take_batch(self) -> list[_Request[ItemT, ResultT]] | None:
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            batch: list[_Request[ItemT, ResultT]] = []
            size = 0
            flush_at = self._queue[0].enqueued + self.max_queue_delay_s
            while True:
                while self._queue:
                    head = self._queue[0]
                    if head.future.cancelled():  # its caller gave up waiting
                        self._pop_locked()
                        self.metrics.dropped.labels(self.metrics.service, "CANCELLED").inc()
                        self._trace_wait(head, time.time_ns(), "CANCELLED", "the caller gave up waiting")
                        continue
                    reason = self._drop_reason(head, time.monotonic())
                    if reason is not None:
                        self._pop_locked()
                        self.metrics.dropped.labels(self.metrics.service, reason.code).inc()
                        self._trace_wait(head, time.time_ns(), reason.code, reason.message)
                        if head.future.set_running_or_notify_cancel():
                            head.future.set_exception(reason)
                        continue
                    if size + len(head.items) > self.max_batch_size:
                        return batch
                    batch.append(self._pop_locked())
                    size += len(head.items)
                if not batch:
                    # Everything was dropped: start over with the next arrival.
                    while not self._queue and not self._closed:
                        self._cond.wait()
                    if self._closed:
                        return None
                    flush_at = self._queue[0].enqueued + self.max_queue_delay_s
                    continue
                remaining = flush_at - time.monotonic()
                if size >= self.max_batch_size or remaining <= 0 or self._closed:
                    return batch
                self._cond.wait(remaining)

    def _pop_locked(self) -> _Request[ItemT, ResultT]:
        request = self._queue.popleft()
        self._queued_items -= len(request.items)
        self.metrics.queue_depth.set(self._queued_items)
        return request

    # -- tracing -----------------------------------------------------------------------
    def _trace_wait(
        self, request: _Request[ItemT, ResultT], end_ns: int, dropped: str | None = None, why: str = ""
    ) -> None:
        """The request's time in the queue; a dropped one's says why it was not computed."""
        if self._tracer is None:
            return
        span = self._tracer.start_span(
            "encoder.batch_wait", context=request.trace_context, start_time=request.enqueued_ns,
            attributes={"contentembed.items": len(request.items)},
        )
        if dropped is not None:
            span.set_attribute("contentembed.dropped", dropped)
            span.set_status(Status(StatusCode.ERROR, f"{dropped}: {why}"))
        span.end(end_time=end_ns)

    def _encode_spans(self, batch: list[_Request[ItemT, ResultT]], items: int) -> list[Span]:
        """Ends each request's wait span and opens its encode span, both at this moment."""
        if self._tracer is None:
            return []
        now = time.time_ns()
        spans = []
        for request in batch:
            self._trace_wait(request, now)
            spans.append(self._tracer.start_span(
                "encoder.batch_encode", context=request.trace_context, start_time=now,
                attributes={"contentembed.batch.number": self.batches_run + 1,
                            "contentembed.batch.items": items,
                            "contentembed.batch.requests": len(batch)},
            ))
        return spans

    def _work(self) -> None:
        while (taken := self._take_batch()) is not None:
            # A future that is running can no longer be cancelled, so setting its result
            # below cannot fail; one cancelled in the meantime is left out of the batch.
            batch = [r for r in taken if r.future.set_running_or_notify_cancel()]
            if not batch:
                continue
            started = time.monotonic()
            with self._cond:
                self._computing_items = sum(len(request.items) for request in batch)
                self._computing_since = started
            for request in batch:
                self.metrics.queue_wait.observe(started - request.enqueued)
            items = [item for request in batch for item in request.items]
            spans = self._encode_spans(batch, len(items))
            try:
                results = list(self._run_batch(items))
                if len(results) != len(items):
                    raise RuntimeError(f"run_batch returned {len(results)} results for {len(items)} items")
            except BaseException as error:  # noqa: BLE001 - every waiter must hear about it
                # Inputs are validated per request before they are queued, so a failing
                # batch is a fault of the model or the machine, not of one caller.
                log.exception("batch of %d items failed", len(items))
                for span in spans:
                    span.record_exception(error)
                    span.set_status(Status(StatusCode.ERROR, f"the batch failed: {error}"))
                    span.end()
                for request in batch:
                    request.future.set_exception(error)
                continue
            finally:
                elapsed = time.monotonic() - started
                with self._cond:
                    self._computing_since = None
                    self._recent.append((len(items), elapsed))
                self.metrics.compute.observe(elapsed)
            self.batches_run += 1
            self.items_run += len(items)
            self.metrics.batch_size.observe(len(items))
            self.metrics.items.inc(len(items))
            # Ended before the results are handed over: the callers' spans end after.
            for span in spans:
                span.end()
            offset = 0
            for request in batch:
                request.future.set_result(results[offset : offset + len(request.items)])
                offset += len(request.items)
