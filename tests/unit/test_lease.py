"""The shard lease: take_over/renew semantics on every store (a file on a shared disk, and
a Kubernetes Lease through the official client against a fake API server that enforces
resourceVersion compare-and-swap as the real one does), and the Kubernetes store's mapping,
conflicts and failures."""

from __future__ import annotations

import datetime
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from contentembed.services.index.lease import (
    FileLease,
    LeaseConflict,
    LeaseRecord,
    LeaseStore,
    LeaseUnavailable,
    renew,
    take_over,
)
from contentembed.services.index.lease_k8s import (
    IN_SYNC_ANNOTATION,
    KubernetesLease,
    api_client_for,
)
from tests.support.fake_kube_api import FakeKubeApi

pytestmark = pytest.mark.timeout(60)

NAMESPACE, NAME = "contentembed", "index-shard-0"
T0 = 1_700_000_000.0  # whole seconds: a MicroTime with zero microseconds on purpose
RACERS = 8

StoreFactory = Callable[[], LeaseStore]


# -- stores ----------------------------------------------------------------------------------
@pytest.fixture
def kube_api() -> Iterator[FakeKubeApi]:
    with FakeKubeApi() as api:
        yield api


@pytest.fixture
def kube_leases(kube_api: FakeKubeApi) -> Iterator[Callable[..., KubernetesLease]]:
    """A new KubernetesLease (its own ApiClient: another replica) on the fake server."""
    made: list[KubernetesLease] = []

    def make(timeout_s: float = 2.0, configuration: client.Configuration | None = None) -> KubernetesLease:
        lease = KubernetesLease(NAMESPACE, NAME,
                                api_client_for(configuration or client.Configuration(host=kube_api.url)),
                                timeout_s=timeout_s)
        made.append(lease)
        return lease

    yield make
    for lease in made:
        lease.close()


@pytest.fixture(params=["file", "kubernetes"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """Each call: another replica's handle on the same lease."""
    if request.param == "file":
        return lambda: FileLease(tmp_path / "shard-0.lease")
    return request.getfixturevalue("kube_leases")


def held_by(store: LeaseStore, holder: str, in_sync: tuple[str, ...], renewed_at: float,
            duration_s: float, term: int = 3) -> LeaseRecord:
    """Writes a lease held by ``holder`` (through the store, as that holder would)."""
    return store.swap(store.read(), LeaseRecord(holder, term, in_sync, renewed_at, duration_s))


class _ReadThenWait:
    """A store whose read() waits for every racer to have read: all of them then swap
    from the same version, so the race is real on every run."""

    def __init__(self, store: LeaseStore, barrier: threading.Barrier) -> None:
        self.store, self.barrier = store, barrier

    def read(self) -> LeaseRecord:
        record = self.store.read()
        self.barrier.wait(timeout=20)
        return record

    def swap(self, expected: LeaseRecord, new: LeaseRecord) -> LeaseRecord:
        return self.store.swap(expected, new)


def race(stores: StoreFactory, replicas: list[str], now: float) -> dict[str, LeaseRecord | None]:
    barrier = threading.Barrier(len(replicas))
    results: dict[str, LeaseRecord | None] = {}
    errors: list[BaseException] = []

    def attempt(replica: str, store: LeaseStore) -> None:
        try:
            results[replica] = take_over(_ReadThenWait(store, barrier), replica, 10.0, now=now)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=attempt, args=(r, stores())) for r in replicas]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(t.is_alive() for t in threads), "a racer hung"
    assert not errors, errors
    return results


# -- take_over / renew, on every store -------------------------------------------------------
def test_racing_for_a_lease_nobody_held_exactly_one_wins(stores: StoreFactory) -> None:
    replicas = [f"index-0-{i}" for i in range(RACERS)]
    results = race(stores, replicas, T0)
    winners = [r for r, won in results.items() if won is not None]
    assert len(winners) == 1, results
    stored = stores().read()
    assert (stored.holder, stored.term, stored.in_sync) == (winners[0], 1, (winners[0],))
    assert stored == results[winners[0]]


@pytest.mark.parametrize("round_", range(3))
def test_racing_for_an_expired_lease_exactly_one_wins(stores: StoreFactory, round_: int) -> None:
    replicas = [f"index-0-{i}" for i in range(RACERS)]
    old = held_by(stores(), "index-0-old", ("index-0-old", *replicas), T0, 5.0, term=4)
    results = race(stores, replicas, T0 + 5 + round_)
    winners = [r for r, won in results.items() if won is not None]
    assert len(winners) == 1, results
    stored = stores().read()
    assert stored.holder == winners[0] and stored.term == old.term + 1
    assert stored.in_sync == (winners[0],) and stored.renewed_at == T0 + 5 + round_
    assert stored.version != old.version


def test_a_replica_outside_the_in_sync_set_cannot_take_over(stores: StoreFactory) -> None:
    old = held_by(stores(), "a", ("a", "b"), T0, 5.0)
    assert take_over(stores(), "c", 5.0, now=T0 + 60) is None
    assert stores().read() == old  # untouched: same version
    taken = take_over(stores(), "b", 5.0, now=T0 + 60)
    assert taken is not None
    assert (taken.holder, taken.term, taken.in_sync) == ("b", old.term + 1, ("b",))
    # "a" was dropped from the new in-sync set: it may not take the lease back.
    assert take_over(stores(), "a", 5.0, now=T0 + 600) is None
    assert stores().read().holder == "b"


def test_an_unexpired_lease_is_not_taken(stores: StoreFactory) -> None:
    old = held_by(stores(), "a", ("a", "b"), T0, 10.0)
    for now in (T0, T0 + 5, T0 + 9.5):
        assert take_over(stores(), "b", 10.0, now=now) is None, now
    assert stores().read() == old
    assert take_over(stores(), "b", 10.0, now=T0 + 10) is not None  # expired at renewed + duration


def test_the_holder_renews_and_a_restarted_holder_leads_under_a_new_term(stores: StoreFactory) -> None:
    store = stores()
    restarted = take_over(store, "a", 10.0, now=T0)
    assert restarted is not None
    held = take_over(store, "a", 10.0, now=T0 + 1)  # unexpired, but its own: a restart
    assert held is not None and held.term == restarted.term + 1 and held.in_sync == ("a",)
    renewed = renew(store, held, in_sync=("a", "b"), now=T0 + 3)
    assert (renewed.holder, renewed.term, renewed.in_sync, renewed.renewed_at) == ("a", 2, ("a", "b"), T0 + 3)
    assert renewed.version != held.version
    assert stores().read() == renewed
    again = renew(store, renewed, now=T0 + 6)
    assert again.in_sync == ("a", "b") and again.renewed_at == T0 + 6
    with pytest.raises(LeaseConflict):
        renew(store, held, now=T0 + 7)  # a stale record: not a renewal


def test_renew_after_a_take_over_by_someone_else_raises_conflict(stores: StoreFactory) -> None:
    primary = stores()
    held = take_over(primary, "a", 5.0, now=T0)
    assert held is not None
    held = renew(primary, held, in_sync=("a", "b"), now=T0 + 1)
    # "a" is cut off; its lease runs out and "b" takes it over.
    taken = take_over(stores(), "b", 5.0, now=T0 + 7)
    assert taken is not None and taken.term == held.term + 1
    with pytest.raises(LeaseConflict):
        renew(primary, held, now=T0 + 8)
    assert stores().read() == taken
    assert renew(stores(), taken, now=T0 + 8).holder == "b"


# -- KubernetesLease: mapping ------------------------------------------------------------------
def test_read_of_a_missing_lease_is_an_empty_record(kube_leases: Callable[..., KubernetesLease],
                                                    kube_api: FakeKubeApi) -> None:
    assert kube_leases().read() == LeaseRecord()
    assert kube_api.requests == [("GET", f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases/{NAME}")]


@pytest.mark.parametrize("renewed_at", [T0, T0 + 0.123456, T0 + 0.5])
def test_every_field_round_trips_through_the_lease_object(
    kube_leases: Callable[..., KubernetesLease], kube_api: FakeKubeApi, renewed_at: float
) -> None:
    wanted = LeaseRecord("index-0-1", 7, ("index-0-1", "index-0-0"), renewed_at, 2.25,
                         extra={"example.com/owner": "search-team"})
    stored = kube_leases().swap(LeaseRecord(), wanted)
    assert stored.version and int(stored.version) > 0
    # What the API server holds, field by field.
    obj = kube_api.leases[(NAMESPACE, NAME)]
    spec, metadata = obj["spec"], obj["metadata"]
    assert spec["holderIdentity"] == "index-0-1"
    assert spec["leaseTransitions"] == 7
    assert spec["leaseDurationSeconds"] == 3  # rounded up, never down
    moment = datetime.datetime.fromtimestamp(renewed_at, tz=datetime.UTC)
    assert spec["renewTime"] == moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert json.loads(metadata["annotations"][IN_SYNC_ANNOTATION]) == ["index-0-1", "index-0-0"]
    assert metadata["annotations"]["example.com/owner"] == "search-team"
    assert metadata["resourceVersion"] == stored.version
    # And back, through another client.
    read = kube_leases().read()
    assert read == stored
    assert (read.holder, read.term, read.in_sync) == (wanted.holder, wanted.term, wanted.in_sync)
    assert read.renewed_at == pytest.approx(renewed_at, abs=1e-6)
    assert read.duration_s == 3.0
    assert read.version == stored.version
    assert read.extra == {"example.com/owner": "search-team"}


def test_resource_versions_are_strings_that_change_on_every_write(
    kube_leases: Callable[..., KubernetesLease]
) -> None:
    store = kube_leases()
    held = take_over(store, "a", 10.0, now=T0)
    assert held is not None
    versions = [held.version]
    for step in range(1, 4):
        held = renew(store, held, now=T0 + step)
        versions.append(held.version)
    assert all(isinstance(v, str) for v in versions)
    assert [int(v) for v in versions] == sorted({int(v) for v in versions})


def test_a_swap_from_a_stale_version_is_a_conflict_and_changes_nothing(
    kube_leases: Callable[..., KubernetesLease], kube_api: FakeKubeApi
) -> None:
    store = kube_leases()
    held = take_over(store, "a", 10.0, now=T0)
    assert held is not None
    newer = kube_api.bump(NAMESPACE, NAME)  # someone else wrote it meanwhile
    before = json.loads(json.dumps(kube_api.leases[(NAMESPACE, NAME)]))
    with pytest.raises(LeaseConflict):
        renew(store, held, now=T0 + 1)
    assert kube_api.leases[(NAMESPACE, NAME)] == before
    # From the version it now has, the same write goes through.
    assert renew(store, store.read(), now=T0 + 1).version != newer
    # Creating it again (expected: no lease yet) is a conflict too (409 AlreadyExists).
    with pytest.raises(LeaseConflict):
        kube_leases().swap(LeaseRecord(), LeaseRecord("b", 1, ("b",), T0, 10.0))


def test_a_renewal_keeps_what_the_record_does_not_map(
    kube_leases: Callable[..., KubernetesLease], kube_api: FakeKubeApi
) -> None:
    kube_api.create(NAMESPACE, {
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": NAME, "labels": {"app.kubernetes.io/component": "index"},
                     "annotations": {"example.com/note": "keep me",
                                     IN_SYNC_ANNOTATION: json.dumps(["a", "b"])}},
        "spec": {"holderIdentity": "a", "leaseTransitions": 2, "leaseDurationSeconds": 5,
                 "renewTime": "2023-11-14T22:13:20.000000Z",
                 "acquireTime": "2023-11-14T22:13:19.500000Z"},
    })
    store = kube_leases()
    held = store.read()
    assert (held.holder, held.term, held.in_sync, held.renewed_at) == ("a", 2, ("a", "b"), T0)
    renew(store, held, now=T0 + 1)
    obj = kube_api.leases[(NAMESPACE, NAME)]
    assert obj["metadata"]["labels"] == {"app.kubernetes.io/component": "index"}
    assert obj["metadata"]["annotations"]["example.com/note"] == "keep me"
    assert obj["spec"]["acquireTime"] == "2023-11-14T22:13:19.500000Z"  # same holder
    taken = take_over(kube_leases(), "b", 5.0, now=T0 + 60)
    assert taken is not None and taken.extra == {"example.com/note": "keep me"}
    assert kube_api.leases[(NAMESPACE, NAME)]["spec"]["acquireTime"] == "2023-11-14T22:14:20.000000Z"


def test_an_unreadable_in_sync_annotation_is_unavailable_not_empty(
    kube_leases: Callable[..., KubernetesLease], kube_api: FakeKubeApi
) -> None:
    kube_api.create(NAMESPACE, {"metadata": {"name": NAME, "annotations": {IN_SYNC_ANNOTATION: "a,b"}},
                                "spec": {"holderIdentity": "a", "leaseDurationSeconds": 5}})
    with pytest.raises(LeaseUnavailable, match="in-sync"):
        kube_leases().read()


def test_the_fake_server_refuses_a_micro_time_without_six_digits(kube_api: FakeKubeApi) -> None:
    """Why KubernetesLease formats renewTime itself: the client writes datetimes with
    isoformat(), which drops the fraction at zero microseconds; the API server's MicroTime
    layout needs all six digits."""
    with client.ApiClient(client.Configuration(host=kube_api.url)) as api_client:
        body = client.V1Lease(metadata=client.V1ObjectMeta(name=NAME), spec=client.V1LeaseSpec(
            holder_identity="a", renew_time=datetime.datetime.fromtimestamp(T0, tz=datetime.UTC)))
        assert api_client.sanitize_for_serialization(body)["spec"]["renewTime"] == "2023-11-14T22:13:20+00:00"
        with pytest.raises(ApiException) as refused:
            client.CoordinationV1Api(api_client).create_namespaced_lease(NAMESPACE, body, _request_timeout=2)
        assert refused.value.status == 400
    assert (NAMESPACE, NAME) not in kube_api.leases


# -- KubernetesLease: failures ----------------------------------------------------------------
@pytest.mark.parametrize("status,reason", [(403, "Forbidden"), (500, "InternalError"), (429, "TooManyRequests")])
@pytest.mark.parametrize("operation", ["read", "create", "replace"])
def test_api_errors_other_than_conflict_are_unavailable(
    kube_leases: Callable[..., KubernetesLease], kube_api: FakeKubeApi,
    operation: str, status: int, reason: str
) -> None:
    store = kube_leases()
    held = take_over(store, "a", 10.0, now=T0) if operation == "replace" else None
    kube_api.fail_next(status, reason)
    with pytest.raises(LeaseUnavailable, match=str(status)):
        if operation == "read":
            store.read()
        elif operation == "create":
            store.swap(LeaseRecord(), LeaseRecord("a", 1, ("a",), T0, 10.0))
        else:
            assert held is not None
            renew(store, held, now=T0 + 1)


def attempts(store: KubernetesLease) -> dict[str, Callable[[], Any]]:
    held = LeaseRecord("a", 1, ("a",), T0, 10.0, version="1")
    return {
        "read": store.read,
        "create": lambda: store.swap(LeaseRecord(), LeaseRecord("a", 1, ("a",), T0, 10.0)),
        "replace": lambda: renew(store, held, now=T0 + 1),
    }


@pytest.mark.parametrize("configured", ["lease client", "default client"])
def test_a_stopped_api_server_is_unavailable_at_once(
    kube_leases: Callable[..., KubernetesLease], kube_api: FakeKubeApi, configured: str
) -> None:
    configuration = client.Configuration(host=kube_api.url)
    if configured == "default client":
        store = KubernetesLease(NAMESPACE, NAME, client.ApiClient(configuration))  # urllib3's retries
    else:
        store = kube_leases(configuration=configuration)
    try:
        assert take_over(store, "a", 10.0, now=T0) is not None
        kube_api.stop()
        for what, call in attempts(store).items():
            started = time.monotonic()
            with pytest.raises(LeaseUnavailable):
                call()
            assert time.monotonic() - started < 1.5, what
    finally:
        store.close()


@pytest.mark.parametrize("operation", ["read", "create", "replace"])
def test_an_api_server_that_does_not_answer_is_unavailable_after_the_request_timeout(
    kube_leases: Callable[..., KubernetesLease], kube_api: FakeKubeApi, operation: str
) -> None:
    store = kube_leases(timeout_s=0.3)
    kube_api.pause()
    started = time.monotonic()
    with pytest.raises(LeaseUnavailable):
        attempts(store)[operation]()
    elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 1.5, elapsed  # the timeout, once: no retries
    assert len(kube_api.requests) == 1
    kube_api.resume()
    assert store.read() == LeaseRecord()  # reachable again: the same client recovers


def test_a_fresh_lease_goes_to_the_bootstrap_replica_only(stores: StoreFactory) -> None:
    """Replica 0 holds the data when a single shard gets replicas: an empty newcomer that
    led first would make the others match its nothing."""
    assert take_over(stores(), "1", 10.0, now=T0, seen_term=0, may_bootstrap=False) is None
    taken = take_over(stores(), "0", 10.0, now=T0, seen_term=0, may_bootstrap=True)
    assert taken is not None and taken.holder == "0"


def test_a_replica_that_has_not_seen_the_current_term_never_leads(stores: StoreFactory) -> None:
    """A lost volume (its term back to 0) or a replica the current primary never reached:
    either may lack acknowledged writes, in the in-sync set or not, its own lease or not."""
    held_by(stores(), "a", ("a", "b"), T0, 10.0, term=3)
    assert take_over(stores(), "b", 10.0, now=T0 + 60, seen_term=2) is None
    assert take_over(stores(), "a", 10.0, now=T0 + 1, seen_term=0) is None  # the holder, wiped
    taken = take_over(stores(), "b", 10.0, now=T0 + 60, seen_term=3)
    assert taken is not None and taken.term == 4


def test_a_restarted_primary_with_followers_in_sync_waits_for_its_lease_to_expire(stores: StoreFactory) -> None:
    """Its followers have been serving reads; taking over at once would send them back
    to catching up. The lease runs out first, then any of them may lead."""
    held_by(stores(), "a", ("a", "b"), T0, 10.0, term=3)
    assert take_over(stores(), "a", 10.0, now=T0 + 1, seen_term=3) is None
    taken = take_over(stores(), "b", 10.0, now=T0 + 10, seen_term=3)
    assert taken is not None and (taken.holder, taken.term) == ("b", 4)
