"""A bounded pool for work the gateway does after it answered: shadow queries and recall
audits. Pure: no grpc."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, Tracer

from contentembed.services.common.errors import ContentEmbedError

log = logging.getLogger(__name__)


class BackgroundPool:
    """Runs work off the request path. A full queue skips the work (``on_skip`` counts
    it), so background traffic can never slow or fail an answer."""

    def __init__(self, workers: int, queue_limit: int, on_skip: Callable[[], None]) -> None:
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="shadow")
        self._queue_limit = queue_limit
        self._on_skip = on_skip
        self._pending = 0
        self._lock = threading.Lock()
        # The runtime's (Gateway.use_tracer); spans of the background work.
        self.tracer: Tracer = trace.NoOpTracer()

    def offload(self, work: Callable[[], None], span_name: str) -> bool:
        """Queues ``work``; False when the queue was full and it was skipped.

        Work for a traced request gets a trace of its own, linked to the request's span:
        as a child it would stretch a trace that ended when the caller got its answer."""
        with self._lock:
            if self._pending >= self._queue_limit:
                self._on_skip()
                return False
            self._pending += 1
        origin = trace.get_current_span().get_span_context()

        def run() -> None:
            try:
                if origin.is_valid:
                    with self.tracer.start_as_current_span(
                        span_name, context=otel_context.Context(), links=[Link(origin)]
                    ):
                        work()
                else:
                    work()
            except ContentEmbedError as error:
                log.info("background query failed", extra={"error": error.message})
            finally:
                with self._lock:
                    self._pending -= 1

        self._pool.submit(run)
        return True

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """True once nothing is pending (for tests and orderly shutdown)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self._pending == 0:
                    return True
            time.sleep(0.01)
        return False

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
