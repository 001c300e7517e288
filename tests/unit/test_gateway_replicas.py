"""Shards served by replica groups (``replicas.ReplicatedShard``), over in-memory replicas:
reads spread over the in-sync replicas and retried on another, writes follow the primary,
and the ``--index-endpoints a:1|a:2`` setting."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Generic, TypeVar

import grpc
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from contentembed.index.v1 import index_service_pb2 as index_pb
from contentembed.index.v1 import index_service_pb2_grpc as index_grpc
from contentembed.index.v1 import replication_service_pb2 as replication_pb
from contentembed.index.v1 import replication_service_pb2_grpc as replication_grpc
from contentembed.services.common.config import load_settings
from contentembed.services.common.errors import (
    ContentEmbedError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from contentembed.services.gateway.coalesce import CoalescingShard
from contentembed.services.gateway.downstream import IndexShardClient
from contentembed.services.gateway.ingest import Document
from contentembed.services.gateway.ports import ReplicaStatus, ShardLimits
from contentembed.services.gateway.replicas import (
    MAX_WRITE_ATTEMPTS,
    ReplicatedShard,
    split_replicas,
)
from contentembed.services.gateway.search import Query
from contentembed.services.gateway.service import GatewayService, GatewaySettings
from tests.support.gateway_fakes import FakeEncoder, FakePending, FakeShard, fake_gateway, soon

T = TypeVar("T")
QUERY = np.ones(8, dtype=np.float32) / np.sqrt(8)


class DelayedPending(Generic[T]):
    """A call that ends ``delay`` seconds after it starts, on a timer thread (as a gRPC
    call ends on one of gRPC's)."""

    def __init__(self, run: Callable[[], T], delay: float) -> None:
        self._future: Future[T] = Future()
        self.started = time.perf_counter()
        threading.Timer(delay, self._finish, args=(run,)).start()

    def _finish(self, run: Callable[[], T]) -> None:
        try:
            self._future.set_result(run())
        except ContentEmbedError as error:
            self._future.set_exception(error)

    def result(self) -> T:
        return self._future.result(timeout=5)

    def cancel(self) -> None:
        pass

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        self._future.add_done_callback(lambda _: callback(self))

    @property
    def latency_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000.0


class FakeReplica(FakeShard):
    """One replica of a shard: a fake shard that says where it stands. Replicas of one
    group share their collections (what replication would do), not their failures."""

    def __init__(
        self, shard_index: int, replica_id: str, primary: bool = False, in_sync: bool = True,
        term: int = 1, delay: float = 0.0,
    ) -> None:
        super().__init__(shard_index)
        self.replica_id = replica_id
        self.endpoint = f"{replica_id}:1"
        self.label = f"index shard {shard_index} ({self.endpoint})"
        self.primary = primary
        self.in_sync = in_sync
        self.term = term
        self.in_sync_replicas: tuple[str, ...] = ()  # the primary's list
        self.delay = delay
        self.patient_calls = 0  # attempts that were to wait for the connection (retries)

    def _call(self, method: str, args: tuple[Any, ...], run: Callable[[], T]) -> Any:
        call = super()._call(method, args, run)
        if not self.delay:
            return call
        return DelayedPending(call.result, self.delay)

    def patient(self) -> FakeReplica:
        self.patient_calls += 1
        return self

    def replica_state(self, deadline: float) -> FakePending[ReplicaStatus]:
        return self._call("replica_state", (), lambda: ReplicaStatus(
            self.replica_id, self.primary, self.term, self.in_sync))

    def limits(self, deadline: float) -> FakePending[ShardLimits]:
        return self._call("limits", (), lambda: ShardLimits(replica=ReplicaStatus(
            self.replica_id, self.primary, self.term, self.in_sync,
            self.in_sync_replicas if self.primary else (),
        )))

    def count(self, method: str) -> int:
        return sum(1 for name, _ in self.calls if name == method)


def group_of(*replicas: FakeReplica, shard_index: int = 0) -> ReplicatedShard:
    """A refreshed group; the replicas share the first one's collections."""
    for replica in replicas[1:]:
        replica.collections = replicas[0].collections
    replicas[0].add_collection("shop", "v1", "space-a")
    group = ReplicatedShard(shard_index, "|".join(r.endpoint for r in replicas), replicas)
    group.refresh(soon())
    return group


def three(**primary: Any) -> tuple[FakeReplica, FakeReplica, FakeReplica]:
    a = FakeReplica(0, "a", primary=True, **primary)
    a.in_sync_replicas = ("a", "b", "c")
    return a, FakeReplica(0, "b"), FakeReplica(0, "c")


def search(group: ReplicatedShard) -> Any:
    return group.search("shop", QUERY, "space-a", 5, soon()).result()


def unavailable(reason: str = "UNAVAILABLE") -> Unavailable:
    return Unavailable("replica down", reason=reason, retry_after_s=1.0)


# -- configuration -----------------------------------------------------------------------
def test_replicas_are_listed_with_a_bar_per_shard() -> None:
    settings = load_settings(GatewaySettings, ["--index-endpoints", "a:1|a:2, b:1 | b:2,c:1"])
    assert settings.index_endpoints == ["a:1|a:2", "b:1|b:2", "c:1"]
    assert settings.index_replicas == [["a:1", "a:2"], ["b:1", "b:2"], ["c:1"]]
    assert split_replicas("x:1") == ["x:1"]


@pytest.mark.parametrize("listed", ["a:1||a:2", "a:1|", "|a:1", "a:1|a:1"])
def test_an_empty_or_repeated_replica_is_refused(listed: str) -> None:
    with pytest.raises(Exception, match="replica"):
        load_settings(GatewaySettings, ["--index-endpoints", f"{listed},b:1"])


def test_only_a_shard_with_replicas_becomes_a_replica_group() -> None:
    """One address: the coalescing shard client as before; several: a group of them, each
    with a coalescer of its own (no call is made: channels connect lazily)."""
    service = GatewayService(
        GatewaySettings(index_endpoints="a:1|a:2,b:1", encoder_endpoints="e:1"),
        CollectorRegistry(),
    )
    try:
        group, single = service.gateway.shards
        assert isinstance(single, CoalescingShard) and single.endpoint == "b:1"
        assert isinstance(group, ReplicatedShard) and group.endpoint == "a:1|a:2"
        assert [r.endpoint for r in group.replicas] == ["a:1", "a:2"]
        assert all(isinstance(r.port, CoalescingShard) for r in group.replicas)
        assert group.replicas[0].port is not group.replicas[1].port
        assert [c.endpoint for c in service.clients if isinstance(c, IndexShardClient)] == [
            "a:1", "a:2", "b:1"]
    finally:
        service.close()

    service = GatewayService(
        GatewaySettings(index_endpoints="a:1|a:2", encoder_endpoints="e:1", shard_max_in_flight=0),
        CollectorRegistry(),
    )
    try:
        (group,) = service.gateway.shards
        assert all(isinstance(r.port, IndexShardClient) for r in group.replicas)  # type: ignore[attr-defined]
    finally:
        service.close()


def test_a_gateway_of_single_address_shards_asks_no_replica_state() -> None:
    shards = [FakeReplica(0, "a", primary=True), FakeReplica(1, "b", primary=True)]
    gateway = fake_gateway([FakeEncoder("space-a")], shards)
    gateway.connect(soon(), refresh_every_s=60)
    gateway.refresh_replicas(soon())
    gateway.close()
    assert all(shard.count("replica_state") == 0 for shard in shards)


# -- reads -------------------------------------------------------------------------------
def test_reads_spread_evenly_over_the_in_sync_replicas() -> None:
    replicas = three()
    group = group_of(*replicas)
    for _ in range(300):
        search(group)
    assert [len(r.searches) for r in replicas] == [100, 100, 100]


def test_concurrent_reads_of_equal_latency_spread_within_a_fifth() -> None:
    replicas = three(delay=0.002)
    for replica in replicas:
        replica.delay = 0.002
    group = group_of(*replicas)

    def caller() -> None:
        for _ in range(60):
            search(group)

    with ThreadPoolExecutor(8) as pool:
        for future in [pool.submit(caller) for _ in range(8)]:
            future.result()
    counts = [len(r.searches) for r in replicas]
    mean = sum(counts) / len(counts)
    assert sum(counts) == 480
    assert all(abs(count - mean) <= 0.2 * mean for count in counts), counts
    assert all(r.outstanding == 0 for r in group.replicas)


def test_reads_prefer_the_replica_with_fewer_calls_outstanding() -> None:
    a, b = FakeReplica(0, "a", primary=True), FakeReplica(0, "b")
    a.in_sync_replicas = ("a", "b")
    group = group_of(a, b)
    a.delay = 0.5  # a's calls stay outstanding
    slow = group.search("shop", QUERY, "space-a", 5, soon())
    for _ in range(5):
        search(group)
    assert [len(a.searches), len(b.searches)] == [1, 5]
    slow.result()


def test_a_failed_read_is_retried_once_on_another_replica() -> None:
    a, b, c = three()
    group = group_of(a, b, c)
    a.fail["search"] = [unavailable()]
    for _ in range(3):  # a is asked in one of them, fails, and another answers
        assert search(group).shard_index == 0
    assert len(a.searches) == 1 and len(b.searches) + len(c.searches) == 3
    assert [r.retries for r in group.replicas] == [1, 0, 0]
    # Only the retry waits for its replica's connection (it may have just come back).
    assert (a.patient_calls, b.patient_calls + c.patient_calls) == (0, 1)


def test_a_read_fails_when_two_replicas_fail_it() -> None:
    a, b, c = three()
    group = group_of(a, b, c)
    for replica in (a, b, c):
        replica.fail["search"] = [unavailable(), unavailable()]
    with pytest.raises(Unavailable):
        search(group)
    assert sum(len(r.searches) for r in (a, b, c)) == 2  # once retried, not more


@pytest.mark.parametrize("error", [
    InvalidArgument("zero vector", reason="ZERO_VECTOR"),
    NotFound("no collection", reason="COLLECTION_NOT_FOUND"),
    FailedPrecondition("wrong space", reason="SPACE_MISMATCH"),
])
def test_a_request_error_is_never_retried(error: ContentEmbedError) -> None:
    a, b, c = three()
    group = group_of(a, b, c)
    for replica in (a, b, c):
        replica.fail["search"] = [error]
    with pytest.raises(type(error)):
        search(group)
    assert sum(len(r.searches) for r in (a, b, c)) == 1


def test_a_replica_down_never_makes_a_partial_answer() -> None:
    """Down after the last refresh: its reads fail fast and go to the other replica."""
    groups = []
    for shard in (0, 1):
        primary, follower = FakeReplica(shard, f"p{shard}", primary=True), FakeReplica(shard, f"f{shard}")
        primary.in_sync_replicas = (primary.replica_id, follower.replica_id)
        follower.collections = primary.collections
        groups.append((primary, follower))
    gateway = fake_gateway(
        [FakeEncoder("space-a")],
        [ReplicatedShard(n, f"p{n}|f{n}", replicas) for n, replicas in enumerate(groups)],
    )
    gateway.refresh_replicas(soon())
    gateway.create_collection("shop", "", False, soon())
    gateway.upsert_documents("shop", [Document(f"d{n}", f"text {n}") for n in range(8)], soon())
    groups[0][1].down = True
    groups[1][0].down = True  # a primary down: reads go on
    for _ in range(20):
        outcome = gateway.search(Query("shop", "text 3", 8, soon()))
        assert not outcome.partial and all(s.ok for s in outcome.shards)
        assert len(outcome.hits) == 8
    documents, missing = gateway.get_documents("shop", ["d1", "d2", "nope"], soon())
    assert {d.id for d in documents} == {"d1", "d2"} and missing == ["nope"]
    gateway.close()


def test_a_follower_not_in_sync_gets_no_reads() -> None:
    a, b, c = three()
    c.in_sync = False  # it says so itself, though the primary's list still has it
    group = group_of(a, b, c)
    for _ in range(20):
        search(group)
    assert len(c.searches) == 0 and len(a.searches) == len(b.searches) == 10
    c.in_sync = True
    group.refresh(soon())
    for _ in range(30):
        search(group)
    assert len(c.searches) == 10


def test_the_primarys_in_sync_list_is_honoured() -> None:
    a, b, c = three()
    a.in_sync_replicas = ("a", "b")  # c still thinks it is in sync: not told yet
    group = group_of(a, b, c)
    for _ in range(20):
        search(group)
    assert len(c.searches) == 0
    assert [r.endpoint for r in group.readable()] == ["a:1", "b:1"]


def test_without_a_primary_the_last_in_sync_list_is_kept() -> None:
    a, b, c = three()
    a.in_sync_replicas = ("a", "b")
    group = group_of(a, b, c)
    a.down = True
    group.refresh(soon())
    assert group.primary is None
    # Not c: the list stands. a, silent, only if b fails too.
    assert [r.endpoint for r in group.readable()] == ["a:1", "b:1"]
    for _ in range(5):
        search(group)
    assert len(b.searches) == 5 and len(c.searches) == 0


def test_a_replica_catching_up_gets_no_reads_until_a_refresh_finds_it_in_sync() -> None:
    a, b = FakeReplica(0, "a", primary=True), FakeReplica(0, "b")
    a.in_sync_replicas = ("a", "b")
    group = group_of(a, b)
    b.fail["search"] = [unavailable("REPLICA_CATCHING_UP")]
    for _ in range(6):
        search(group)
    assert len(b.searches) == 1 and len(a.searches) == 6  # b's one read was retried on a
    group.refresh(soon())
    for _ in range(6):
        search(group)
    assert len(b.searches) == 4


def test_with_no_replica_left_to_try_a_read_refreshes_and_finds_one_that_caught_up() -> None:
    """b refused a read while catching up, then caught up; a goes down before the refresh
    loop came round: the read learns again and is answered by b, never failed."""
    a, b = FakeReplica(0, "a", primary=True), FakeReplica(0, "b")
    a.in_sync_replicas = ("a", "b")
    group = group_of(a, b)
    b.fail["search"] = [unavailable("REPLICA_CATCHING_UP")]
    for _ in range(2):
        search(group)
    a.fail["search"] = [unavailable()]
    assert search(group).shard_index == 0
    assert len(b.searches) == 2 and b.patient_calls == 1


def test_reads_with_no_replica_to_answer_fail_unavailable() -> None:
    a, b = FakeReplica(0, "a", primary=True), FakeReplica(0, "b")
    a.in_sync_replicas = ("a", "b")
    group = group_of(a, b)
    a.down = b.down = True
    group.refresh(soon())
    with pytest.raises(Unavailable):
        search(group)  # both tried (they were in sync when last heard): the last refusal
    assert len(a.searches) + len(b.searches) == 2

    group = group_of(FakeReplica(0, "c", in_sync=False), FakeReplica(0, "d", in_sync=False))
    with pytest.raises(Unavailable) as caught:
        search(group)
    assert caught.value.reason == "NO_IN_SYNC_REPLICA" and caught.value.retry_after_s


def test_a_cancelled_read_is_not_retried() -> None:
    a, b = FakeReplica(0, "a", primary=True, delay=0.2), FakeReplica(0, "b", delay=0.2)
    a.in_sync_replicas = ("a", "b")
    group = group_of(a, b)
    call = group.search("shop", QUERY, "space-a", 5, soon())
    call.cancel()
    with pytest.raises(ContentEmbedError) as caught:
        call.result()
    assert caught.value.code == "CANCELLED"
    time.sleep(0.3)
    assert len(a.searches) + len(b.searches) == 1


# -- writes ------------------------------------------------------------------------------
def upsert(group: ReplicatedShard, deadline: float | None = None) -> int:
    return group.upsert("shop", "space-a", ["x"], np.stack([QUERY]), [{}],
                        deadline or soon()).result()


def test_writes_go_to_the_primary() -> None:
    a, b, c = three()
    group = group_of(a, b, c)
    for _ in range(5):
        assert upsert(group) == 1
    group.create_collection("more", "space-a", 8, False, soon()).result()
    group.delete_items("shop", ["x"], soon()).result()
    assert a.count("upsert") == 5 and a.count("create_collection") == a.count("delete_items") == 1
    assert all(r.count(m) == 0 for r in (b, c) for m in ("upsert", "create_collection", "delete_items"))


def test_writes_follow_a_primary_change() -> None:
    a, b, c = three()
    group = group_of(a, b, c)
    upsert(group)
    a.primary, b.primary, b.term = False, True, 2  # b took over; the gateway does not know yet
    b.in_sync_replicas = ("b", "c")
    a.fail["upsert"] = [unavailable("NOT_PRIMARY")]
    assert upsert(group) == 1
    assert a.count("upsert") == 2 and b.count("upsert") == 1
    assert group.primary is not None and group.primary.endpoint == "b:1"
    assert group.replicas[0].retries == 1
    upsert(group)
    assert b.count("upsert") == 2  # straight to the new primary
    assert [r.endpoint for r in group.readable()] == ["b:1", "c:1"]


def test_a_write_to_a_primary_that_went_down_waits_for_the_next() -> None:
    a, b, c = three()
    group = group_of(a, b, c)
    a.down = True
    b.primary, b.term, b.in_sync_replicas = True, 2, ("b", "c")
    b.fail["replica_state"] = [unavailable()]  # the first refresh after finds no primary
    assert upsert(group) == 1  # retried after refreshes until b is primary (within bounds)
    assert b.count("upsert") == 1 and b.count("replica_state") == 3


def test_a_replication_timeout_is_retried_on_the_same_primary() -> None:
    a, b, c = three()
    group = group_of(a, b, c)
    a.fail["upsert"] = [unavailable("REPLICATION_TIMEOUT")]
    assert upsert(group) == 1
    assert a.count("upsert") == 2


def test_with_no_primary_a_write_fails_unavailable_with_a_retry_delay() -> None:
    a, b = FakeReplica(0, "a"), FakeReplica(0, "b")  # neither is primary
    group = group_of(a, b)
    with pytest.raises(Unavailable) as caught:
        upsert(group)
    assert caught.value.reason == "NO_PRIMARY" and caught.value.retry_after_s
    # Bounded: the first refresh, then one per retry.
    assert a.count("replica_state") == MAX_WRITE_ATTEMPTS
    assert a.count("upsert") == b.count("upsert") == 0


def test_a_primary_refusing_every_try_fails_after_a_bounded_number() -> None:
    a, b = FakeReplica(0, "a", primary=True), FakeReplica(0, "b")
    group = group_of(a, b)
    a.fail["upsert"] = [unavailable("REPLICATION_TIMEOUT")] * 10
    with pytest.raises(Unavailable) as caught:
        upsert(group)
    assert caught.value.reason == "REPLICATION_TIMEOUT"
    assert a.count("upsert") == MAX_WRITE_ATTEMPTS


def test_a_write_refused_for_the_request_is_not_retried() -> None:
    a, b = FakeReplica(0, "a", primary=True), FakeReplica(0, "b")
    group = group_of(a, b)
    with pytest.raises(NotFound):
        group.upsert("nowhere", "space-a", ["x"], np.stack([QUERY]), [{}], soon()).result()
    assert a.count("upsert") == 1 and a.count("replica_state") == 1


def test_a_write_gives_up_at_the_callers_deadline() -> None:
    a, b = FakeReplica(0, "a"), FakeReplica(0, "b")
    group = group_of(a, b)
    with pytest.raises(ContentEmbedError) as caught:
        upsert(group, time.monotonic() + 0.02)
    assert caught.value.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED")


def test_the_gateway_refreshes_groups_at_connect() -> None:
    a, b = FakeReplica(0, "a", primary=True), FakeReplica(0, "b")
    a.in_sync_replicas = ("a", "b")
    b.collections = a.collections
    group = ReplicatedShard(0, "a:1|b:1", [a, b])
    gateway = fake_gateway([FakeEncoder("space-a")], [group])
    gateway.connect(soon(), refresh_every_s=60)
    assert a.count("replica_state") == b.count("replica_state") == 1
    assert group.primary is not None and group.primary.endpoint == "a:1"
    gateway.close()


def test_reads_before_any_refresh_go_to_any_replica() -> None:
    a, b = FakeReplica(0, "a", primary=True), FakeReplica(0, "b")
    b.collections = a.collections
    a.add_collection("shop", "v1", "space-a")
    group = ReplicatedShard(0, "a:1|b:1", [a, b])
    for _ in range(4):
        search(group)
    assert Counter(len(r.searches) for r in (a, b)) == Counter({2: 2})


# -- the adapter -------------------------------------------------------------------------
def test_the_adapter_reads_a_replicas_state_and_the_primarys_in_sync_list() -> None:
    """IndexShardClient against a bare ReplicationService and IndexService on port 0."""
    class Replication(replication_grpc.ReplicationServiceServicer):
        def GetReplicaState(self, request, context):  # noqa: N802 - gRPC's name
            assert request.term == 0  # an observer
            return replication_pb.GetReplicaStateResponse(state=replication_pb.ReplicaState(
                replica_id="r1", term=7, in_sync=True, role=replication_pb.REPLICA_ROLE_PRIMARY))

    class Index(index_grpc.IndexServiceServicer):
        def ListCollections(self, request, context):  # noqa: N802 - gRPC's name
            return index_pb.ListCollectionsResponse(shard=index_pb.ShardInfo(
                max_top_k=100, replica=index_pb.ReplicaInfo(
                    replica_id="r1", primary=True, term=7, in_sync=True,
                    in_sync_replicas=["r1", "r2"], primary_id="r1")))

    server = grpc.server(ThreadPoolExecutor(2))
    replication_grpc.add_ReplicationServiceServicer_to_server(Replication(), server)
    index_grpc.add_IndexServiceServicer_to_server(Index(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    client = IndexShardClient(0, f"127.0.0.1:{port}", GatewaySettings())
    try:
        assert client.replica_state(soon()).result() == ReplicaStatus("r1", True, 7, True)
        limits = client.limits(soon()).result()
        assert limits.max_top_k == 100
        assert limits.replica == ReplicaStatus("r1", True, 7, True, ("r1", "r2"), "r1")
    finally:
        client.close()
        server.stop(None)
