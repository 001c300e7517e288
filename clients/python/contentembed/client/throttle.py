"""Client-side throttling: a client offers less load once the service sheds what it gets.

Refusing a call is not free: a gateway and its encoder spend a few hundred microseconds
of CPU receiving and refusing each one, and at 20x capacity refusals took the two cores
an answer needed (docs/reliability.md). Callers that keep sending, or that retry after
every RetryInfo delay, keep the service busy refusing. So every ``Client`` (and
``AsyncClient``) throttles itself, as gRPC's clients and Google's SRE book describe:

- **Adaptive throttling.** Over the last ``window_s`` seconds the client counts the calls
  it attempted and how many the service accepted (anything but an overload refusal:
  RESOURCE_EXHAUSTED other than a size limit or quota). Once the window holds one,
  a new call is refused locally, without being sent, with probability
  ``max(0, (attempted - k * accepted) / (attempted + 1))``: never while the service
  accepts more than 1/k of what it gets, most of the excess once it sheds. Calls still in
  flight count as attempted and not yet accepted, which is what makes a client back off
  from a service whose queues grow, not only from its refusals; the refusal it must have
  seen first keeps a healthy burst (a fresh client sending 32 calls at once) from being
  taken for overload. k is 1.5 rather than the SRE book's 2: at 20x overload on two cores
  the refusals of the extra half cost the service answers (bench_overload, one run: 0.56x
  of capacity answered against 0.45x at k=2 with 1 s deadlines, as much with 5 s).
- **A retry budget** (gRPC's retry throttling): a bucket of ``max_tokens``; each overload
  refusal takes one token, each accepted call gives back ``token_ratio``; an overload
  refusal is retried only while more than half the tokens are left. Once the service
  sheds, retries add about a tenth to the load instead of another copy of it.

Only overload refusals count against the service (RESOURCE_EXHAUSTED that is no size
limit or quota): a shard that is down (UNAVAILABLE), a deadline, or a bad request leave
both mechanisms as they are, so a client rides out a restart with its usual retries.
``k = 0`` turns throttling off.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable

from contentembed.rpc_status import is_size_refusal

DEFAULT_K = 1.5
DEFAULT_WINDOW_S = 10.0
DEFAULT_MAX_TOKENS = 10.0
DEFAULT_TOKEN_RATIO = 0.1
DEFAULT_MIN_ATTEMPTS = 20
# What a throttled call suggests waiting: about the window's resolution.
THROTTLED_RETRY_S = 0.5
BUCKET_S = 0.5  # the window is kept in buckets of this length


# RESOURCE_EXHAUSTED that says nothing of load besides a size refusal: a quota.
QUOTA_REASONS = frozenset({"DISK_FULL", "TOO_MANY_COLLECTIONS"})


def is_overload_refusal(
    code: str, retry_after_s: float | None, reason: str = "", message: str = ""
) -> bool:
    """A service shedding load: RESOURCE_EXHAUSTED with a retry delay, or one that is no
    size limit or quota (gRPC's own "Concurrent RPC limit exceeded", which a flooded
    server answers before any of its code runs, carries neither a reason nor a delay)."""
    if code != "RESOURCE_EXHAUSTED":
        return False
    if retry_after_s is not None:
        return True
    return reason not in QUOTA_REASONS and not is_size_refusal(code, reason, message)


class Throttle:
    """Thread-safe; used as is by the async client (nothing here awaits)."""

    def __init__(
        self,
        k: float = DEFAULT_K,
        window_s: float = DEFAULT_WINDOW_S,
        max_tokens: float = DEFAULT_MAX_TOKENS,
        token_ratio: float = DEFAULT_TOKEN_RATIO,
        min_attempts: int = DEFAULT_MIN_ATTEMPTS,
        clock: Callable[[], float] = time.monotonic,
        draw: Callable[[], float] = random.random,
    ) -> None:
        if k < 0 or window_s <= 0 or max_tokens <= 0 or token_ratio < 0:
            raise ValueError("throttle: k, token_ratio >= 0 and window_s, max_tokens > 0")
        self.k = k
        self.window_s = window_s
        self.max_tokens = max_tokens
        self.token_ratio = token_ratio
        self.min_attempts = min_attempts
        self._clock = clock
        self._draw = draw
        self._lock = threading.Lock()
        # (bucket start, attempted, accepted, refused for overload), oldest first.
        self._buckets: deque[list[float]] = deque()
        self._tokens = max_tokens

    @property
    def enabled(self) -> bool:
        return self.k > 0

    def _bucket_locked(self, now: float) -> list[float]:
        start = math.floor(now / BUCKET_S) * BUCKET_S
        while self._buckets and self._buckets[0][0] <= now - self.window_s:
            self._buckets.popleft()
        if not self._buckets or self._buckets[-1][0] != start:
            self._buckets.append([start, 0.0, 0.0, 0.0])
        return self._buckets[-1]

    def rejection_probability(self) -> float:
        with self._lock:
            self._bucket_locked(self._clock())
            attempted = sum(b[1] for b in self._buckets)
            accepted = sum(b[2] for b in self._buckets)
            refused = sum(b[3] for b in self._buckets)
        if attempted < self.min_attempts or not refused:
            return 0.0
        return max(0.0, (attempted - self.k * accepted) / (attempted + 1))

    def admit(self) -> bool:
        """Counts a call the caller attempts; False: refuse it locally."""
        if not self.enabled:
            return True
        probability = self.rejection_probability()
        with self._lock:
            self._bucket_locked(self._clock())[1] += 1
        return self._draw() >= probability

    def record(
        self, code: str, retry_after_s: float | None = None, reason: str = "", message: str = ""
    ) -> None:
        """The outcome of a call that was sent ("OK" for an answer)."""
        if not self.enabled:
            return
        with self._lock:
            bucket = self._bucket_locked(self._clock())
            if is_overload_refusal(code, retry_after_s, reason, message):
                bucket[3] += 1
                self._tokens = max(0.0, self._tokens - 1)
            else:
                bucket[2] += 1
                self._tokens = min(self.max_tokens, self._tokens + self.token_ratio)

    def retry_allowed(self, code: str, retry_after_s: float | None) -> bool:
        """Whether a failure may be retried: an overload refusal with a retry delay (the
        only kind the client retries) only within the budget."""
        if not self.enabled or code != "RESOURCE_EXHAUSTED" or retry_after_s is None:
            return True
        with self._lock:
            return self._tokens > self.max_tokens / 2
