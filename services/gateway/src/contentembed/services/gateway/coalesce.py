"""Concurrent searches to one shard, coalesced into SearchBatch calls under load.

Every query fans out to every shard, so a shard answers the gateway's whole query rate,
and one search call costs the shard far more in gRPC handling than in HNSW: at 100k
items, one SearchBatch of 100 queries is answered about five times faster per query than
100 Search calls (docs/benchmarks.md). ``CoalescingShard`` wraps a shard's adapter: while
fewer than ``max_in_flight`` calls to the shard are running, a search goes out at once,
as before (no added latency at low load); beyond, it waits for the next call to finish
and then goes out together with every search that queued meanwhile with the same
options, as one SearchBatch. Batches form only when calls are already waiting, so their
size follows the load.

What stays exactly as it was:
- Answers: a SearchBatch answers each query as Search would (same shard code).
- Errors: a batch refused INVALID_ARGUMENT may be one member's fault (a zero vector, a
  text over the limit), so each member is then asked again on its own and gets its own
  answer. Any other failure is the shard's and reaches every member, as it would have.
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
    Cancelled,
    ContentEmbedError,
    DeadlineExceeded,
)
from contentembed.services.gateway.ports import Pending, ShardAnswer, ShardBatchAnswer, ShardPort

# (collection, space_id, top_k, ef, filter as JSON, has a vector, has a text)
BatchKey = tuple[str, str, int, int, str, bool, bool]


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
    wrapped shard's. ``max_batch`` must not exceed the shard's max_queries_per_batch."""

    def __init__(
        self, shard: ShardPort, max_in_flight: int, max_batch: int,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        """``on_batch(size)`` hears of every SearchBatch sent (the metrics)."""
        if max_in_flight < 1 or max_batch < 1:
            raise ValueError("max_in_flight and max_batch must be at least 1")
        self._shard = shard
        self.max_in_flight = max_in_flight
        self.max_batch = max_batch
        self._lock = threading.Lock()
        self._in_flight = 0
        # Oldest key first: the batch that goes out next is the one waiting longest.
        self._queued: OrderedDict[BatchKey, list[_Member]] = OrderedDict()
        self.batches_sent = 0  # observability and tests
        self.queries_batched = 0
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
            live = [m for m in members[: self.max_batch]
                    if not m.future.done() and m.deadline > now]
            for member in members[: self.max_batch]:
                if not member.future.done() and member.deadline <= now:
                    member.settle(DeadlineExceeded(
                        f"{self._shard.label}: deadline passed waiting for a batch"))
            rest = members[self.max_batch:]
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
        collection, space_id, top_k, ef, filter_json, has_vector, has_text = key
        metadata_filter = json.loads(filter_json) if filter_json else None
        token = otel_context.attach(members[0].trace_context)
        try:
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
            self._finished()
            return
        finally:
            otel_context.detach(token)
        self.batches_sent += 1
        self.queries_batched += len(members)
        self._on_batch(len(members))
        call.add_done_callback(
            lambda _: self._answered(key, members, call, metadata_filter))

    def _answered(
        self, key: BatchKey, members: list[_Member], call: Pending[ShardBatchAnswer],
        metadata_filter: Mapping[str, Any] | None,
    ) -> None:
        try:
            answer = call.result()
        except Exception as error:  # noqa: BLE001 - every member must hear of it
            if isinstance(error, ContentEmbedError) and error.code == "INVALID_ARGUMENT" \
                    and len(members) > 1:
                self._one_by_one(key, members, metadata_filter)
            else:
                for member in members:
                    member.settle(error)
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
            self._finished()

    def _one_by_one(
        self, key: BatchKey, members: list[_Member], metadata_filter: Mapping[str, Any] | None
    ) -> None:
        """Each member of a refused batch asked on its own: the refusal may be one's."""
        collection, space_id, top_k, ef, _, _, _ = key
        for member in members:
            try:
                call = self._shard.search(collection, member.query, space_id, top_k,
                                          member.deadline, metadata_filter=metadata_filter,
                                          ef=ef, text=member.text)
            except Exception as error:  # noqa: BLE001 - the member must hear of it
                member.settle(error)
                continue

            def settle(_: object, member: _Member = member, call: Pending[ShardAnswer] = call) -> None:
                try:
                    member.settle(call.result())
                except Exception as error:  # noqa: BLE001 - the member must hear of it
                    member.settle(error)

            call.add_done_callback(settle)
