"""A shard served by a replica group: one ``ShardPort`` over the shard's replicas. Pure: no
grpc; each replica is a ``ReplicaPort`` (the adapter's client, behind its own coalescer).

The group learns each replica's standing in a refresh (at start-up, in the gateway's
refresh loop, and after a failed write): its role, term and whether it is in sync
(``replica_state``), and from the primary the ids it counts in sync (``limits``, which
carries ``ShardInfo.replica``). The primary's list is authoritative while a primary
answers; when none does, the last list is kept, so reads go on while a primary is
replaced.

Reads (search, items, collections, limits) go to an in-sync replica: those that answered
the last refresh and have not failed in the last ``AVOID_S`` first, then the fewest calls
outstanding, ties taken in turn. A read that fails for the replica's sake (UNAVAILABLE,
REPLICA_CATCHING_UP, DEADLINE_EXCEEDED, INTERNAL, overload), never for the request's
(INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION, an answer too large...), is asked once
more of another in-sync replica while the caller's deadline allows: one replica down
never fails the shard. A replica that says REPLICA_CATCHING_UP gets no reads until a
refresh finds it in sync again.

Writes go to the primary. NOT_PRIMARY or UNAVAILABLE (REPLICATION_TIMEOUT included: writes
are idempotent) is retried after a short backoff and a refresh, on whichever replica is
primary then, at most ``MAX_WRITE_ATTEMPTS`` times within the caller's deadline; with no
primary known it fails UNAVAILABLE NO_PRIMARY with a retry delay, for the SDK to retry.
Retries that wait or refresh run on the group's small pool, never on the thread that
ended the previous attempt (a gRPC thread).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Generic, TypeVar

import numpy as np
from opentelemetry import context as otel_context

from contentembed.services.common.errors import (
    Cancelled,
    ContentEmbedError,
    DeadlineExceeded,
    Internal,
    Unavailable,
    caused_by_request,
)
from contentembed.services.gateway.ports import (
    CandidateInfo,
    LexicalConfig,
    Pending,
    ReplicaPort,
    ReplicaStatus,
    ShardAnswer,
    ShardBatchAnswer,
    ShardCollection,
    ShardLimits,
    StoredItem,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

REPLICA_SEPARATOR = "|"
# One refresh asks every replica at once, for at most this long.
REFRESH_TIMEOUT_S = 2.0
# A replica that failed a call is asked after the others for this long.
AVOID_S = 1.0
# A read is tried on at most this many replicas.
READ_ATTEMPTS = 2
# A write is tried at most this many times, the retries after 50, 100, 200 ms.
MAX_WRITE_ATTEMPTS = 4
WRITE_BACKOFF_S = 0.05
WRITE_RETRY_WORKERS = 4
# A retry needs at least this much of the caller's deadline left.
MIN_RETRY_S = 0.005
# What a caller is told to wait when no replica can take its call.
NO_REPLICA_RETRY_S = 1.0
# How long past its deadline a call waits for its last attempt to say how it ended.
SETTLE_GRACE_S = 0.05
# Codes for which a read is asked again of another replica (if not caused by the request).
READ_RETRY_CODES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "INTERNAL", "RESOURCE_EXHAUSTED"})
NOT_PRIMARY = "NOT_PRIMARY"
REPLICA_CATCHING_UP = "REPLICA_CATCHING_UP"
REPLICATION_TIMEOUT = "REPLICATION_TIMEOUT"

READ = "read"
WRITE = "write"


def split_replicas(entry: str) -> list[str]:
    """The replica addresses of one ``--index-endpoints`` entry (``"a:1|a:2"``), in order.

    Raises:
        ValueError: for an empty address ("a:1||a:2", a trailing "|") or one listed twice.
    """
    parts = [part.strip() for part in entry.split(REPLICA_SEPARATOR)]
    if not all(parts):
        raise ValueError(f"an empty replica address in the shard entry {entry!r}")
    if len(set(parts)) != len(parts):
        raise ValueError(f"a replica listed twice in the shard entry {entry!r}")
    return parts


def replica_fault(error: ContentEmbedError) -> bool:
    """Whether a failed read is the replica's doing, so another replica may answer it."""
    return not caused_by_request(error) and (
        error.code in READ_RETRY_CODES or error.reason == REPLICA_CATCHING_UP
    )


def primary_fault(error: ContentEmbedError) -> bool:
    """Whether a failed write may succeed on the primary after a refresh: it was not the
    primary (any more), or it or its followers did not answer in time."""
    return error.reason in (NOT_PRIMARY, REPLICATION_TIMEOUT) or error.code == "UNAVAILABLE"


class Replica:
    """One replica as its group knows it; the mutable fields change under the group's
    lock."""

    def __init__(self, port: ReplicaPort, position: int) -> None:
        self.port = port
        self.position = position
        self.endpoint = port.endpoint
        self.status: ReplicaStatus | None = None  # its answer to the last refresh it answered
        self.answered = True  # the last refresh (True before the first)
        self.catching_up = False  # refused a read REPLICA_CATCHING_UP since that refresh
        self.avoid_until = 0.0  # failed a call: asked after the others until then
        self.outstanding = 0  # calls started and not ended
        self.retries = 0  # calls it failed that were retried (on another replica, or the primary)

    def __repr__(self) -> str:
        return f"Replica({self.endpoint}, {self.status})"


class ReplicaCall(Generic[T]):
    """What a caller of a replicated shard holds (the ``Pending`` protocol): its attempts
    one after the other, each on one replica; the last settles it."""

    def __init__(self, label: str, deadline: float) -> None:
        self._label = label
        self._deadline = deadline
        self._future: Future[T] = Future()
        self._lock = threading.Lock()
        self._current: Pending[Any] | None = None
        self._settled = False
        self._closed = threading.Event()  # settled or cancelled: no further attempt
        self.attempts: list[str] = []  # the endpoint of each attempt, in order
        # The request's trace context: a retry starts on another thread (the one that
        # ended the previous attempt, or the group's pool), its span still the request's.
        self.trace_context = otel_context.get_current()
        self.started = time.perf_counter()
        self.finished: float | None = None

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def wait_closed(self, seconds: float) -> bool:
        """Sleeps up to ``seconds``; True when the call was closed meanwhile."""
        return self._closed.wait(seconds) if seconds > 0 else self.closed

    def begin(self, endpoint: str, pending: Pending[Any]) -> bool:
        """Records a started attempt; False when the call was closed meanwhile (the
        attempt is then cancelled)."""
        with self._lock:
            if not self._settled:
                self._current = pending
                self.attempts.append(endpoint)
                return True
        pending.cancel()
        return False

    def settle(self, outcome: Any) -> bool:
        """Ends the call with a result or a ``BaseException``; False when it had ended."""
        with self._lock:
            if self._settled:
                return False
            self._settled = True
            self.finished = time.perf_counter()
        self._closed.set()
        if isinstance(outcome, BaseException):
            self._future.set_exception(outcome)
        else:
            self._future.set_result(outcome)
        return True

    def result(self) -> T:
        timeout = max(self._deadline - time.monotonic(), 0.0) + SETTLE_GRACE_S
        try:
            return self._future.result(timeout=timeout)
        except FutureTimeout:
            self.settle(DeadlineExceeded(f"{self._label}: deadline passed"))
            self._cancel_current()
            return self._future.result()

    def cancel(self) -> None:
        self.settle(Cancelled(f"call to {self._label} was cancelled"))
        self._cancel_current()

    def _cancel_current(self) -> None:
        with self._lock:
            current = self._current
        if current is not None:
            current.cancel()

    def add_done_callback(self, callback: Callable[[ReplicaCall[T]], None]) -> None:
        self._future.add_done_callback(lambda _: callback(self))

    @property
    def latency_ms(self) -> float:
        end = self.finished if self.finished is not None else time.perf_counter()
        return (end - self.started) * 1000.0


Invoke = Callable[[ReplicaPort], Pending[T]]


def _start(call: ReplicaCall[Any], invoke: Invoke[T], replica: Replica,
           patient: bool = False) -> Pending[T]:
    """Starts one attempt in the trace context of the call's request."""
    token = otel_context.attach(call.trace_context)
    try:
        return invoke(replica.port.patient() if patient else replica.port)
    finally:
        otel_context.detach(token)


class ReplicatedShard:
    """A ``ShardPort`` over the replicas of one shard (see the module's docstring).

    ``on_retry(endpoint, operation)`` hears of every call a replica failed that was tried
    again ("read" on another replica, "write" on the primary after a refresh): metrics."""

    def __init__(
        self, shard_index: int, endpoint: str, replicas: Sequence[ReplicaPort],
        on_retry: Callable[[str, str], None] | None = None,
    ) -> None:
        if not replicas:
            raise ValueError("a replicated shard needs at least one replica")
        self.shard_index = shard_index
        self.endpoint = endpoint
        self.label = f"index shard {shard_index} ({endpoint})"
        self.replicas = [Replica(port, position) for position, port in enumerate(replicas)]
        self._on_retry = on_retry or (lambda endpoint, operation: None)
        self._lock = threading.Lock()
        self._refreshed = False
        self._primary: Replica | None = None
        self._in_sync_ids: frozenset[str] | None = None  # the primary's list, last heard
        self._tickets = 0  # refreshes started
        self._applied = 0  # the latest refresh applied (an older one finishing later is not)
        self._fresh_since = float("-inf")  # when the applied refresh started
        self._turn = 0  # rotates the preference among equally loaded replicas
        self._last_failure = float("-inf")  # when a replica last failed a call
        self._retry_pool = ThreadPoolExecutor(
            WRITE_RETRY_WORKERS, thread_name_prefix=f"shard-{shard_index}-replicas"
        )

    # -- what the group knows ----------------------------------------------------------
    @property
    def primary(self) -> Replica | None:
        with self._lock:
            return self._primary

    def readable(self) -> list[Replica]:
        """The replicas reads may go to now, in order."""
        with self._lock:
            return [r for r in self.replicas if self._readable_locked(r)]

    def _readable_locked(self, replica: Replica) -> bool:
        if not self._refreshed:
            return True  # nothing known yet: any may answer
        status = replica.status
        if status is None or replica.catching_up:
            return False
        if self._in_sync_ids is not None and status.replica_id not in self._in_sync_ids:
            return False
        return status.in_sync or replica is self._primary

    def refresh(self, deadline: float) -> None:
        """Asks every replica where it stands, and the primary which replicas are in sync."""
        refresh_groups([self], deadline)

    def refresh_unless_since(self, since: float, deadline: float) -> None:
        """Refreshes unless a refresh that started at or after ``since`` was applied."""
        with self._lock:
            if self._fresh_since >= since:
                return
        self.refresh(deadline)

    def _ticket(self) -> tuple[int, float]:
        with self._lock:
            self._tickets += 1
            return self._tickets, time.monotonic()

    def _apply(
        self, ticket: int, started: float,
        statuses: Sequence[ReplicaStatus | ContentEmbedError],
        primary: Replica | None, in_sync_ids: tuple[str, ...] | None,
    ) -> None:
        with self._lock:
            if ticket <= self._applied:
                return
            self._applied, self._fresh_since = ticket, started
            for replica, status in zip(self.replicas, statuses):
                if isinstance(status, ReplicaStatus):
                    replica.status, replica.answered, replica.catching_up = status, True, False
                else:
                    replica.answered = False
            before, self._primary = self._primary, primary
            if in_sync_ids is not None:
                self._in_sync_ids = frozenset(in_sync_ids)
            self._refreshed = True
            readable = [r.endpoint for r in self.replicas if self._readable_locked(r)]
        if primary is not before:
            log.info(
                "shard primary changed",
                extra={"shard": self.shard_index,
                       "primary": primary.endpoint if primary is not None else "",
                       "readable": ",".join(readable)},
            )

    # -- choosing replicas ---------------------------------------------------------------
    def _pick_reader(self, tried: Sequence[Replica]) -> Replica | None:
        with self._lock:
            now = time.monotonic()
            found = [r for r in self.replicas if r not in tried and self._readable_locked(r)]
            if not found:
                return None
            start, count = self._turn, len(found)
            self._turn += 1
            chosen = found[min(range(count), key=lambda n: (
                not found[n].answered or found[n].avoid_until > now, found[n].outstanding,
                (n - start) % count,
            ))]
            chosen.outstanding += 1
            return chosen

    def _pick_writer(self) -> Replica | None:
        with self._lock:
            chosen = self._primary
            if chosen is not None:
                chosen.outstanding += 1
            return chosen

    def _ended(self, replica: Replica) -> None:
        with self._lock:
            replica.outstanding -= 1

    def _failed(self, replica: Replica, error: ContentEmbedError) -> None:
        """A call failed for the replica's sake: ask the others first for a while (one
        catching up: not at all until a refresh finds it in sync)."""
        with self._lock:
            self._last_failure = time.monotonic()
            if error.reason == REPLICA_CATCHING_UP:
                replica.catching_up = True
            else:
                replica.avoid_until = time.monotonic() + AVOID_S
            if error.reason == NOT_PRIMARY and self._primary is replica:
                self._primary = None

    def _count_retry(self, replica: Replica, operation: str) -> None:
        with self._lock:
            replica.retries += 1
        self._on_retry(replica.endpoint, operation)

    # -- reads ---------------------------------------------------------------------------
    def _read(self, invoke: Invoke[T], deadline: float) -> ReplicaCall[T]:
        call: ReplicaCall[T] = ReplicaCall(self.label, deadline)
        self._read_on(call, invoke, deadline, ())
        return call

    def _read_on(
        self, call: ReplicaCall[T], invoke: Invoke[T], deadline: float,
        tried: tuple[Replica, ...], last_error: ContentEmbedError | None = None,
        refreshed: bool = False,
    ) -> None:
        replica = self._pick_reader(tried)
        if replica is None and not refreshed and deadline - time.monotonic() > MIN_RETRY_S:
            # What the group knew may be stale (a replica that caught up since it refused a
            # read waits for the refresh loop): learn again, then pick once more. Off the
            # caller's thread, as a write retry.
            self._retry_pool.submit(self._refresh_then_read, call, invoke, deadline, tried, last_error)
            return
        if replica is None:
            call.settle(last_error or Unavailable(
                f"{self.label}: no replica in sync to read from", reason="NO_IN_SYNC_REPLICA",
                retry_after_s=NO_REPLICA_RETRY_S,
            ))
            return
        if last_error is not None:
            self._count_retry(tried[-1], READ)
        retry = bool(tried)
        tried = (*tried, replica)
        try:
            # A retry waits for its replica's connection: it may be one that came back a
            # moment ago, and the first attempt already failed.
            pending = _start(call, invoke, replica, patient=retry)
        except ContentEmbedError as error:  # e.g. the deadline passed just now
            self._ended(replica)
            self._read_failed(call, invoke, deadline, tried, error)
            return
        if call.begin(replica.endpoint, pending):
            pending.add_done_callback(
                lambda done: self._read_done(call, invoke, deadline, tried, done)
            )
        else:
            self._ended(replica)

    def _refresh_then_read(
        self, call: ReplicaCall[T], invoke: Invoke[T], deadline: float,
        tried: tuple[Replica, ...], last_error: ContentEmbedError | None,
    ) -> None:
        try:
            # A refresh that started after the last failure seen knows of it: reads that
            # fail together share one.
            with self._lock:
                since = self._last_failure
            self.refresh_unless_since(since, min(deadline, time.monotonic() + REFRESH_TIMEOUT_S))
        except Exception:  # noqa: BLE001 - a failed refresh leaves the view as it was
            log.exception("replica refresh failed")
        if not call.closed:
            self._read_on(call, invoke, deadline, tried, last_error, refreshed=True)

    def _read_done(
        self, call: ReplicaCall[T], invoke: Invoke[T], deadline: float,
        tried: tuple[Replica, ...], done: Pending[T],
    ) -> None:
        self._ended(tried[-1])
        try:
            value = done.result()
        except ContentEmbedError as error:
            self._read_failed(call, invoke, deadline, tried, error)
        except Exception as error:  # noqa: BLE001 - the caller must hear of it
            call.settle(Internal(f"{self.label}: {error!r}"))
        else:
            call.settle(value)

    def _read_failed(
        self, call: ReplicaCall[T], invoke: Invoke[T], deadline: float,
        tried: tuple[Replica, ...], error: ContentEmbedError,
    ) -> None:
        if not replica_fault(error):
            call.settle(error)
            return
        self._failed(tried[-1], error)
        if (len(tried) < READ_ATTEMPTS and not call.closed
                and deadline - time.monotonic() > MIN_RETRY_S):
            self._read_on(call, invoke, deadline, tried, error)
        else:
            call.settle(error)

    # -- writes --------------------------------------------------------------------------
    def _write(self, invoke: Invoke[T], deadline: float) -> ReplicaCall[T]:
        call: ReplicaCall[T] = ReplicaCall(self.label, deadline)
        self._write_on(call, invoke, deadline, 1, None)
        return call

    def _write_on(
        self, call: ReplicaCall[T], invoke: Invoke[T], deadline: float, attempt: int,
        last_error: ContentEmbedError | None,
    ) -> None:
        if call.closed:
            return
        primary = self._pick_writer()
        if primary is None:
            self._write_later(call, invoke, deadline, attempt, last_error, time.monotonic())
            return
        try:
            pending = _start(call, invoke, primary)
        except ContentEmbedError as error:
            self._ended(primary)
            self._write_failed(call, invoke, deadline, attempt, primary, error)
            return
        if call.begin(primary.endpoint, pending):
            pending.add_done_callback(
                lambda done: self._write_done(call, invoke, deadline, attempt, primary, done)
            )
        else:
            self._ended(primary)

    def _write_done(
        self, call: ReplicaCall[T], invoke: Invoke[T], deadline: float, attempt: int,
        primary: Replica, done: Pending[T],
    ) -> None:
        self._ended(primary)
        try:
            value = done.result()
        except ContentEmbedError as error:
            self._write_failed(call, invoke, deadline, attempt, primary, error)
        except Exception as error:  # noqa: BLE001 - the caller must hear of it
            call.settle(Internal(f"{self.label}: {error!r}"))
        else:
            call.settle(value)

    def _write_failed(
        self, call: ReplicaCall[T], invoke: Invoke[T], deadline: float, attempt: int,
        primary: Replica, error: ContentEmbedError,
    ) -> None:
        if not primary_fault(error):
            call.settle(error)
            return
        failed_at = time.monotonic()
        self._failed(primary, error)
        if self._write_later(call, invoke, deadline, attempt, error, failed_at):
            self._count_retry(primary, WRITE)

    def _write_later(
        self, call: ReplicaCall[T], invoke: Invoke[T], deadline: float, attempt: int,
        last_error: ContentEmbedError | None, since: float,
    ) -> bool:
        """Schedules the next attempt after a backoff (none before the first) and a
        refresh; or settles the call when no attempt is left. True when scheduled."""
        if attempt >= MAX_WRITE_ATTEMPTS or call.closed or deadline - time.monotonic() <= MIN_RETRY_S:
            call.settle(self._write_error(last_error))
            return False
        pause = WRITE_BACKOFF_S * 2 ** (attempt - 1) if last_error is not None or attempt > 1 else 0.0

        def later() -> None:
            try:
                if call.wait_closed(min(pause, max(deadline - time.monotonic() - MIN_RETRY_S, 0.0))):
                    return
                self.refresh_unless_since(since, deadline)
                self._write_on(call, invoke, deadline, attempt + 1, last_error)
            except Exception as error:  # noqa: BLE001 - never leave the caller waiting
                call.settle(error if isinstance(error, ContentEmbedError)
                            else Internal(f"{self.label}: {error!r}"))

        try:
            self._retry_pool.submit(later)
        except RuntimeError:  # closed
            call.settle(self._write_error(last_error))
            return False
        return True

    def _write_error(self, last_error: ContentEmbedError | None) -> ContentEmbedError:
        """Why a write failed for good: the primary's last refusal, or no primary known."""
        if last_error is not None and self.primary is not None:
            return last_error
        return Unavailable(
            f"{self.label}: no primary replica known; writes wait for one"
            + (f" (last: {last_error.message})" if last_error is not None else ""),
            reason="NO_PRIMARY", retry_after_s=NO_REPLICA_RETRY_S,
        )

    # -- the port: reads -----------------------------------------------------------------
    def limits(self, deadline: float) -> Pending[ShardLimits]:
        return self._read(lambda port: port.limits(deadline), deadline)

    def search(
        self, collection: str, query: np.ndarray | None, space_id: str, top_k: int,
        deadline: float, version: str = "", exact: bool = False, ef: int = 0,
        metadata_filter: Any = None, text: str = "",
    ) -> Pending[ShardAnswer]:
        return self._read(
            lambda port: port.search(collection, query, space_id, top_k, deadline, version,
                                     exact, ef, metadata_filter, text),
            deadline,
        )

    def search_batch(
        self, collection: str, queries: np.ndarray | None, space_id: str, top_k: int,
        deadline: float, ef: int = 0, metadata_filter: Any = None, texts: Sequence[str] = (),
    ) -> Pending[ShardBatchAnswer]:
        return self._read(
            lambda port: port.search_batch(collection, queries, space_id, top_k, deadline, ef,
                                           metadata_filter, texts),
            deadline,
        )

    def get_vector(self, collection: str, item_id: str, deadline: float) -> Pending[np.ndarray | None]:
        return self._read(lambda port: port.get_vector(collection, item_id, deadline), deadline)

    def get_items(
        self, collection: str, ids: Sequence[str], deadline: float
    ) -> Pending[list[StoredItem]]:
        return self._read(lambda port: port.get_items(collection, ids, deadline), deadline)

    def get_collection(self, name: str, deadline: float) -> Pending[ShardCollection]:
        return self._read(lambda port: port.get_collection(name, deadline), deadline)

    def list_collections(
        self, page_size: int, after: str, deadline: float
    ) -> Pending[tuple[list[ShardCollection], bool]]:
        return self._read(lambda port: port.list_collections(page_size, after, deadline), deadline)

    # -- the port: writes ----------------------------------------------------------------
    def upsert(
        self, collection: str, space_id: str, ids: Sequence[str], vectors: np.ndarray,
        metadata: Sequence[dict[str, Any]], deadline: float, versions_fingerprint: str = "",
        texts: Sequence[str] | None = None,
    ) -> Pending[int]:
        return self._write(
            lambda port: port.upsert(collection, space_id, ids, vectors, metadata, deadline,
                                     versions_fingerprint, texts),
            deadline,
        )

    def delete_items(self, collection: str, ids: Sequence[str], deadline: float) -> Pending[int]:
        return self._write(lambda port: port.delete_items(collection, ids, deadline), deadline)

    def create_collection(
        self, name: str, space_id: str, dim: int, exist_ok: bool, deadline: float,
        lexical: LexicalConfig | None = None,
    ) -> Pending[tuple[ShardCollection, bool]]:
        return self._write(
            lambda port: port.create_collection(name, space_id, dim, exist_ok, deadline, lexical),
            deadline,
        )

    def activate_version(self, name: str, version: str, deadline: float) -> Pending[str]:
        return self._write(lambda port: port.activate_version(name, version, deadline), deadline)

    def rollback_version(self, name: str, deadline: float) -> Pending[str]:
        return self._write(lambda port: port.rollback_version(name, deadline), deadline)

    def begin_version(
        self, name: str, version: str, space_id: str, dim: int, deadline: float
    ) -> Pending[tuple[ShardCollection, bool]]:
        return self._write(
            lambda port: port.begin_version(name, version, space_id, dim, deadline), deadline
        )

    def delete_version(self, name: str, version: str, deadline: float) -> Pending[ShardCollection]:
        return self._write(lambda port: port.delete_version(name, version, deadline), deadline)

    def set_candidate(
        self, name: str, candidate: CandidateInfo | None, deadline: float
    ) -> Pending[ShardCollection]:
        return self._write(lambda port: port.set_candidate(name, candidate, deadline), deadline)

    def delete_collection(self, name: str, deadline: float) -> Pending[None]:
        return self._write(lambda port: port.delete_collection(name, deadline), deadline)

    def close(self) -> None:
        self._retry_pool.shutdown(wait=False, cancel_futures=True)
        for replica in self.replicas:
            replica.port.close()


def _outcome(start: Callable[[], Pending[T]]) -> Pending[T] | ContentEmbedError:
    try:
        return start()
    except ContentEmbedError as error:
        return error


def _result(call: Pending[T] | ContentEmbedError) -> T | ContentEmbedError:
    if isinstance(call, ContentEmbedError):
        return call
    try:
        return call.result()
    except ContentEmbedError as error:
        return error


def refresh_groups(groups: Sequence[ReplicatedShard], deadline: float) -> None:
    """Refreshes every group at once: each replica's ``replica_state``, then each
    primary's ``limits`` (its list of in-sync replicas). Failures are the state learnt
    (a replica that does not answer), never raised."""
    if not groups:
        return
    until = min(deadline, time.monotonic() + REFRESH_TIMEOUT_S)
    tickets = [group._ticket() for group in groups]
    asked = [
        [_outcome(lambda r=replica: r.port.replica_state(until)) for replica in group.replicas]
        for group in groups
    ]
    statuses = [[_result(call) for call in calls] for calls in asked]
    primaries = [_primary_of(group.replicas, found) for group, found in zip(groups, statuses)]
    infos = [
        _outcome(lambda p=primary: p.port.limits(until)) if primary is not None else None
        for primary in primaries
    ]
    for group, ticket, found, primary, info in zip(groups, tickets, statuses, primaries, infos):
        in_sync_ids: tuple[str, ...] | None = None
        if primary is not None and info is not None:
            limits = _result(info)
            own = next(s for r, s in zip(group.replicas, found) if r is primary)
            if (isinstance(limits, ShardLimits) and limits.replica is not None
                    and limits.replica.primary and isinstance(own, ReplicaStatus)
                    and limits.replica.replica_id == own.replica_id):
                in_sync_ids = limits.replica.in_sync_replicas
        group._apply(ticket[0], ticket[1], found, primary, in_sync_ids)


def _primary_of(
    replicas: Sequence[Replica], found: Sequence[ReplicaStatus | ContentEmbedError]
) -> Replica | None:
    """The replica that answered as primary with the highest term (None: none did)."""
    best: tuple[int, Replica] | None = None
    for replica, status in zip(replicas, found):
        if isinstance(status, ReplicaStatus) and status.primary:
            if best is None or status.term > best[0]:
                best = (status.term, replica)
    return None if best is None else best[1]
