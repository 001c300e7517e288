"""Concurrent searches to one shard, coalesced into SearchBatch calls under load.

Every query fans out to every shard, so a shard answers the gateway's whole query rate,
and one search call costs the shard far more in gRPC handling than in HNSW: at 100k
items, one SearchBatch of 100 queries is answered about five times faster per query than
100 Search calls (docs/benchmarks.md). ``CoalescingShard`` wraps a shard's adapter: while
fewer than ``max_in_flight`` calls to the shard are running, a search goes out at once,
as before (no added latency at low load); beyond, it waits for the next call to finish
and then goes out together with every search that queued meanwhile with the same
options, as one SearchBatch. Batches form only when calls are already waiting, so their
size follows the load, and only as large as an answer fits in half a message: the size
of a hit is learnt from the answers (top_k 1,000 with 8 KiB of metadata is 8 MB a search,
so those never share a call).

What stays exactly as it was, so coalescing never fails a search that would succeed alone:
- Answers: a SearchBatch answers each query as Search would (same shard code).
- Errors: a batch refused INVALID_ARGUMENT may be one member's fault (a zero vector, a
  text over the limit, a search too costly for one call), and a batch refused
  ANSWER_TOO_LARGE its size's: it is asked again in two halves, down to single searches,
  so each member gets the answer or error it would have got alone. Any other failure is
  the shard's and reaches every member, as it would have.
- Deadlines: each member waits until its own deadline; the batch call runs until the
  latest of its members'. A member that gave up (or was cancelled) before its batch left
  is not sent.
- Searches a SearchBatch cannot express (another version, exact) go out on their own.
- Traces: a batch call is a CLIENT span under the first member's request (it is started
  on whichever thread ended the previous call, so that context is carried over).
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from opentelemetry import context as otel_context

from contentembed.services.common.errors import (
    SIZE_REFUSAL_REASONS,
    Cancelled,
    ContentEmbedError,
    DeadlineExceeded,
)
from contentembed.services.gateway.ports import Pending, ShardAnswer, ShardPort

# (collection, space_id, top_k, ef, filter as JSON, has a vector, has a text)
BatchKey = tuple[str, str, int, int, str, bool, bool]
# A batch's answer is planned to take at most this share of the message limit, each hit
# at the size seen so far times a margin: answers vary, and a misjudged batch costs a
# refusal and a re-ask in halves.
BATCH_SHARE_OF_LIMIT = 0.5
SIZE_MARGIN = 1.5
# Until answers have been seen: an id and a few hundred bytes of metadata.
INITIAL_HIT_BYTES = 1024.0
HIT_BYTES_SMOOTHING = 0.2
DEFAULT_MAX_ANSWER_BYTES = 16 << 20


@dataclass(eq=False)  # one member is one caller: compared by identity
class _Member:
    """One queued search: its inputs and the future its caller waits on."""

    query: np.ndarray | None
    text: str
    deadline: float
    future: Future[ShardAnswer] = field(default_factory=Future)
    # The request's trace context, for the batch call's span if this member leads it.
    trace_context: otel_context.Context = field(default_factory=otel_context.get_current)
    started: float = field(default_factory=time.perf_counter)
    finished: float | None = None

    def settle(self, outcome: ShardAnswer | BaseException) -> None:
        try:
            if not self.future.set_running_or_notify_cancel():  # its caller cancelled
                return
        except RuntimeError:  # settled already (a deadline passed while it was queued)
            return
        self.finished = time.perf_counter()
        if isinstance(outcome, BaseException):
            self.future.set_exception(outcome)
        else:
            self.future.set_result(outcome)


class CoalescedCall:
    """What a coalesced search's caller holds (the ``Pending`` protocol)."""

    def __init__(self, member: _Member, label: str, forget: Callable[[_Member], None]) -> None:
        self._member = member
        self._label = label
        self._forget = forget

    def result(self) -> ShardAnswer:
        member = self._member
        try:
            return member.future.result(timeout=max(member.deadline - time.monotonic(), 0.0))
        except FutureTimeout:
            self.cancel()
            raise DeadlineExceeded(f"{self._label}: deadline passed waiting for a batch") from None
        except ContentEmbedError:
            raise
        except BaseException as error:  # noqa: BLE001 - cancelled futures and the like
            if member.future.cancelled():
                raise Cancelled(f"call to {self._label} was cancelled") from None
            raise error

    def cancel(self) -> None:
        if self._member.future.cancel():
            self._forget(self._member)

    def add_done_callback(self, callback: Callable[[CoalescedCall], None]) -> None:
        self._member.future.add_done_callback(lambda _: callback(self))

    @property
    def latency_ms(self) -> float:
        member = self._member
        end = member.finished if member.finished is not None else time.perf_counter()
        return (end - member.started) * 1000.0


class CoalescingShard:
    """A ``ShardPort`` whose ``search`` coalesces under load; everything else is the
    wrapped shard's. ``max_batch`` must not exceed the shard's max_queries_per_batch;
    ``max_answer_bytes`` is the largest answer the shard may send (the message limit)."""

    def __init__(
        self, shard: ShardPort, max_in_flight: int, max_batch: int,
        on_batch: Callable[[int], None] | None = None,
        max_answer_bytes: int = DEFAULT_MAX_ANSWER_BYTES,
    ) -> None:
        """``on_batch(size)`` hears of every SearchBatch sent (the metrics)."""
        if max_in_flight < 1 or max_batch < 1:
            raise ValueError("max_in_flight and max_batch must be at least 1")
        self._shard = shard
        self.max_in_flight = max_in_flight
        self.max_batch = max_batch
        self.max_answer_bytes = max_answer_bytes
        self._lock = threading.Lock()
        self._in_flight = 0
        # Oldest key first: the batch that goes out next is the one waiting longest.
        self._queued: OrderedDict[BatchKey, list[_Member]] = OrderedDict()
        # What one hit of this shard's answers takes (smoothed over the answers seen).
        self.hit_bytes = INITIAL_HIT_BYTES
        self.batches_sent = 0  # observability and tests
        self.queries_batched = 0
        self.batches_split = 0
        self._on_batch = on_batch or (lambda size: None)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._shard, name)  # shard_index, label, upsert, search_batch, ...

    def search(
        self, collection: str, query: np.ndarray | None, space_id: str, top_k: int,
        deadline: float, version: str = "", exact: bool = False, ef: int = 0,
        metadata_filter: Mapping[str, Any] | None = None, text: str = "",
    ) -> Pending[ShardAnswer]:
        if version or exact:  # SearchBatch serves the active version, approximately
            return self._shard.search(collection, query, space_id, top_k, deadline, version,
                                      exact, ef, metadata_filter, text)
        key: BatchKey = (
            collection, space_id, top_k, ef,
            json.dumps(metadata_filter, sort_keys=True) if metadata_filter else "",
            query is not None, bool(text),
        )
        with self._lock:
            direct = self._in_flight < self.max_in_flight
            if direct:
                self._in_flight += 1
            else:
                member = _Member(query, text, deadline)
                self._queued.setdefault(key, []).append(member)
        if direct:
            try:
                call = self._shard.search(collection, query, space_id, top_k, deadline,
                                          metadata_filter=metadata_filter, ef=ef, text=text)
            except BaseException:
                self._finished()
                raise
            call.add_done_callback(lambda _: self._finished())
            return call
        return CoalescedCall(member, self._shard.label, lambda m: self._forget(key, m))

    def _observe(self, answer: ShardAnswer) -> None:
        """Learns the hit size from an answer the coalescer reads anyway (batches and
        their re-asks; direct calls are read by their callers only)."""
        hits = len(answer.hits) + len(answer.lexical_hits)
        if answer.encoded_bytes and hits:
            per_hit = answer.encoded_bytes / hits
            self.hit_bytes += HIT_BYTES_SMOOTHING * (per_hit - self.hit_bytes)

    def _observe_too_large(self, key: BatchKey, members: int) -> None:
        """A refused answer had more than the message limit: its hits were at least that
        limit over their number (top_k per retriever each, at most)."""
        _, _, top_k, _, _, has_vector, has_text = key
        hits = members * top_k * (int(has_vector) + int(has_text))
        self.hit_bytes = max(self.hit_bytes, self.max_answer_bytes / max(hits, 1))

    def batch_limit(self, key: BatchKey) -> int:
        """How many searches of ``key`` one SearchBatch may carry: at most max_batch, and
        few enough that their answer (top_k hits per retriever each, at the hit size seen
        so far, with a margin) takes at most half of the message limit."""
        _, _, top_k, _, _, has_vector, has_text = key
        member_bytes = top_k * (int(has_vector) + int(has_text)) * self.hit_bytes * SIZE_MARGIN
        fitting = int(self.max_answer_bytes * BATCH_SHARE_OF_LIMIT // max(member_bytes, 1.0))
        return max(1, min(self.max_batch, fitting))

    def _forget(self, key: BatchKey, member: _Member) -> None:
        with self._lock:
            members = self._queued.get(key)
            if members is not None and member in members:
                members.remove(member)
                if not members:
                    del self._queued[key]

    def _finished(self) -> None:
        """A call to the shard ended: the slot goes to the searches waiting longest."""
        with self._lock:
            self._in_flight -= 1
            batch = self._take_locked()
        if batch is not None:
            self._send(*batch)

    def _take_locked(self) -> tuple[BatchKey, list[_Member]] | None:
        now = time.monotonic()
        while self._queued and self._in_flight < self.max_in_flight:
            key, members = next(iter(self._queued.items()))
            limit = self.batch_limit(key)
            live = [m for m in members[:limit] if not m.future.done() and m.deadline > now]
            for member in members[:limit]:
                if not member.future.done() and member.deadline <= now:
                    member.settle(DeadlineExceeded(
                        f"{self._shard.label}: deadline passed waiting for a batch"))
            rest = members[limit:]
            if rest:
                self._queued[key] = rest
                self._queued.move_to_end(key)
            else:
                del self._queued[key]
            if live:
                self._in_flight += 1
                return key, live
        return None

    def _send(self, key: BatchKey, members: list[_Member]) -> None:
        """Sends the members as one call, which holds one slot until it ends (re-asks of a
        refused batch do not: they are bounded by the batch)."""
        token = otel_context.attach(members[0].trace_context)
        try:
            self._ask(key, members, on_end=self._finished, batch=True)
        finally:
            otel_context.detach(token)

    def _ask(
        self, key: BatchKey, members: list[_Member], on_end: Callable[[], None] | None = None,
        batch: bool = False,
    ) -> None:
        """One SearchBatch (one search for a single member, unless ``batch``). A batch refused for
        something one member or its size may cause (INVALID_ARGUMENT: a zero vector, an
        over-long text, a search too costly for one call; ANSWER_TOO_LARGE) is asked again
        in two halves, down to single searches, so every member gets the answer or the
        error it would have got alone. Any other failure reaches every member."""
        collection, space_id, top_k, ef, filter_json, has_vector, has_text = key
        metadata_filter = json.loads(filter_json) if filter_json else None
        try:
            if len(members) == 1 and not batch:
                member = members[0]
                call: Pending[Any] = self._shard.search(
                    collection, member.query, space_id, top_k, member.deadline,
                    metadata_filter=metadata_filter, ef=ef, text=member.text,
                )
            else:
                call = self._shard.search_batch(
                    collection,
                    np.stack([m.query for m in members]) if has_vector else None,  # type: ignore[misc]
                    space_id, top_k, max(m.deadline for m in members), ef=ef,
                    metadata_filter=metadata_filter,
                    texts=[m.text for m in members] if has_text else (),
                )
        except Exception as error:  # noqa: BLE001 - e.g. every deadline passed just now
            for member in members:
                member.settle(error)
            if on_end is not None:
                on_end()
            return
        if len(members) > 1 or batch:
            self.batches_sent += 1
            self.queries_batched += len(members)
            self._on_batch(len(members))
        call.add_done_callback(lambda _: self._answered(key, members, call, on_end, batch))

    def _answered(
        self, key: BatchKey, members: list[_Member], call: Pending[Any],
        on_end: Callable[[], None] | None, batch: bool,
    ) -> None:
        try:
            answer = call.result()
        except Exception as error:  # noqa: BLE001 - every member must hear of it
            if len(members) > 1 and _refused_for_a_member(error):
                if isinstance(error, ContentEmbedError) and error.reason in SIZE_REFUSAL_REASONS:
                    self._observe_too_large(key, len(members))
                self.batches_split += 1
                middle = len(members) // 2
                self._ask(key, members[:middle])
                self._ask(key, members[middle:])
            else:
                for member in members:
                    member.settle(error)
        else:
            self._observe(answer)
            if len(members) == 1 and not batch:
                members[0].settle(answer)
            else:
                _, _, _, _, _, has_vector, has_text = key
                for position, member in enumerate(members):
                    member.settle(ShardAnswer(
                        shard_index=answer.shard_index,
                        hits=answer.results[position] if has_vector else [],
                        space_id=answer.space_id,
                        version=answer.version,
                        lexical_hits=answer.lexical_results[position] if has_text else [],
                    ))
        finally:
            if on_end is not None:
                on_end()


def _refused_for_a_member(error: Exception) -> bool:
    """A batch refusal that one member, or the batch's size, may have caused."""
    return isinstance(error, ContentEmbedError) and (
        error.code == "INVALID_ARGUMENT" or error.reason in SIZE_REFUSAL_REASONS
    )
