"""Admission control shared by every service: which calls start, and which are shed.

A gRPC sync server runs each call on a pool thread; calls beyond the pool wait in its
queue. Bounding only the *number* of calls lets that queue grow to seconds: under a
burst most callers then spend their whole deadline queued, the calls that do run finish
too late to be used, and useful throughput collapses. So admission accounts for time:

- at arrival, a call is refused when the calls already in progress would keep it
  waiting for a thread longer than ``max_queue_wait_s`` (or when ``max_in_flight`` calls
  are in progress). The wait counts what the calls in progress are doing, not only how
  long calls usually take: a thread held by a client stream, or by a call already running
  longer than ``max_queue_wait_s``, is not counted as one that will soon be free (16
  half-sent uploads held every thread of a shard while admission, going by the mean
  search time, kept admitting searches that could never start);
- client streams (uploads) have their own limit, ``max_streams``, below the thread count,
  so they can never hold every thread; and
- when a thread picks a call up, it is shed if it waited and the time its caller has left
  is shorter than this method usually takes: running it would only spend capacity on an
  answer nobody can use.

Both refusals are RESOURCE_EXHAUSTED with a retry delay, cheap enough that the queue
drains quickly. Service times are exponentially weighted means per method. How many calls
wait and run is counted by the handler pool itself (``CountingExecutor``): a call whose
caller left while it waited never reaches a handler, and a count kept per call would leak
its place. Pure: no grpc.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from typing import Any

from contentembed.services.common.errors import ResourceExhausted

# Weight of the newest observation in the per-method mean service time.
SMOOTHING = 0.1
# A call that waited less than this for a thread did not queue: it runs even if its
# deadline looks short (the caller may know better than a mean).
QUEUED_S = 0.002
MIN_RETRY_S = 0.05
MAX_RETRY_S = 5.0


class CountingExecutor(futures.ThreadPoolExecutor):
    """The handler pool, knowing how many submitted calls wait for a thread or run."""

    def __init__(self, max_workers: int, thread_name_prefix: str = "") -> None:
        super().__init__(max_workers=max_workers, thread_name_prefix=thread_name_prefix)
        self.workers = max_workers
        self._count_lock = threading.Lock()
        self._submitted = 0  # waiting or running

    @property
    def in_progress(self) -> int:
        return self._submitted

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> futures.Future:
        def counted() -> Any:
            try:
                return fn(*args, **kwargs)
            finally:
                with self._count_lock:
                    self._submitted -= 1

        with self._count_lock:
            self._submitted += 1
        try:
            return super().submit(counted)
        except BaseException:
            with self._count_lock:
                self._submitted -= 1
            raise


@dataclass(eq=False)  # one ticket is one call: compared by identity
class Ticket:
    """One admitted call; hand it back to ``finish`` exactly once."""

    method: str
    arrived: float
    started: float | None = None
    stream: bool = False


class Admission:
    def __init__(
        self,
        workers: int,
        max_in_flight: int,
        max_queue_wait_s: float,
        in_progress: Callable[[], int],
        clock: Callable[[], float] = time.monotonic,
        max_streams: int | None = None,
    ) -> None:
        """in_progress: calls submitted to the handler pool and not finished yet.
        max_streams: client streams in progress at most (default: a quarter of the
        threads); each holds a thread for as long as its client sends."""
        self.workers = workers
        self.max_in_flight = max_in_flight
        self.max_queue_wait_s = max_queue_wait_s
        wanted = max(1, workers // 4) if max_streams is None else max_streams
        # Never every thread (unless there is only one).
        self.max_streams = min(wanted, max(1, workers - 1))
        self._in_progress = in_progress
        self._clock = clock
        self._lock = threading.Lock()
        self._service_s: dict[str, float] = {}
        self._mean_service_s = 0.0
        self._running: set[Ticket] = set()  # started, not finished
        self._streams = 0  # running, not finished

    def expected_service_s(self, method: str) -> float | None:
        return self._service_s.get(method)

    def _check_streams(self) -> None:
        if self._streams >= self.max_streams:
            raise ResourceExhausted(
                f"{self._streams} client streams in progress, the limit is "
                f"{self.max_streams} (--max-concurrent-streams); retry later",
                reason="TOO_MANY_STREAMS",
                retry_after_s=MAX_RETRY_S,
            )

    def _held_threads(self, now: float) -> int:
        """Threads that will not be free soon: held by a stream, or by a call that has run
        longer than a queued call may wait."""
        with self._lock:
            return self._streams + sum(
                1 for ticket in self._running
                if not ticket.stream and ticket.started is not None
                and now - ticket.started > self.max_queue_wait_s
            )

    def _expected_wait(self, in_progress: int, now: float) -> float:
        """How long one more call would wait for a thread, from the calls ahead of it and
        the threads left to them."""
        held = min(self._held_threads(now), in_progress)
        free = self.workers - held
        if free <= 0:
            return math.inf
        ahead = in_progress - held + 1 - free
        return max(0, ahead) * self._mean_service_s / free

    def arrive(self, method: str, stream: bool = False) -> Ticket:
        """Admits a call (a client stream with ``stream``) or raises ResourceExhausted
        (with a retry delay)."""
        now = self._clock()
        in_progress = self._in_progress()
        if stream:
            self._check_streams()
            return Ticket(method, now, stream=True)
        wait = self._expected_wait(in_progress, now)
        if in_progress >= self.max_in_flight:
            raise ResourceExhausted(
                f"{in_progress} calls in progress, the limit is {self.max_in_flight}; "
                "retry later",
                reason="TOO_MANY_CALLS",
                retry_after_s=retry_delay(wait),
            )
        if wait > self.max_queue_wait_s:
            about = ("no handler will be free soon" if math.isinf(wait)
                     else f"a new call would wait about {wait * 1000:.0f} ms for a handler")
            raise ResourceExhausted(
                f"overloaded: {about} (limit {self.max_queue_wait_s * 1000:.0f} ms); "
                "retry later",
                reason="OVERLOADED",
                retry_after_s=retry_delay(wait),
            )
        return Ticket(method, now)

    def start(self, ticket: Ticket, time_remaining_s: float | None) -> None:
        """Called on the handler thread; sheds a queued call that can no longer finish
        before its caller's deadline (ResourceExhausted). Otherwise the call starts."""
        now = self._clock()
        waited = now - ticket.arrived
        expected = self._service_s.get(ticket.method)
        if (
            not ticket.stream
            and time_remaining_s is not None
            and expected is not None
            and waited > QUEUED_S
            and time_remaining_s < expected
        ):
            raise ResourceExhausted(
                f"overloaded: the call waited {waited * 1000:.0f} ms for a handler and has "
                f"{time_remaining_s * 1000:.0f} ms left, {ticket.method} usually takes "
                f"{expected * 1000:.0f} ms; retry later",
                reason="OVERLOADED",
                retry_after_s=retry_delay(waited),
            )
        with self._lock:
            if ticket.stream:
                # Counted once running: a stream whose caller left while it was queued
                # never reaches a handler, and would leak its place otherwise.
                self._check_streams()
                self._streams += 1
            ticket.started = now
            self._running.add(ticket)

    def finish(self, ticket: Ticket) -> None:
        """The call ended (answered, failed or shed); a unary call that ran updates the
        mean (a stream's time is its client's pace, not a service time)."""
        now = self._clock()
        with self._lock:
            self._running.discard(ticket)
            if ticket.started is None:
                return
            if ticket.stream:
                self._streams -= 1
                return
            took = now - ticket.started
            previous = self._service_s.get(ticket.method)
            self._service_s[ticket.method] = (
                took if previous is None else previous + SMOOTHING * (took - previous)
            )
            if self._mean_service_s == 0.0:
                self._mean_service_s = took
            else:
                self._mean_service_s += SMOOTHING * (took - self._mean_service_s)


def retry_delay(wait_s: float) -> float:
    return min(max(wait_s, MIN_RETRY_S), MAX_RETRY_S)  # inf: the longest
