"""A collection's candidate (version, shadow and canary shares) kept on the shard with
its alias: durable, validated, cleared by promotion or deletion of its version, and
replicated to followers with the catalog."""

from __future__ import annotations

from pathlib import Path

import pytest

from contentembed.services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from contentembed.services.index.catalog import CandidateSpec
from tests.support.local_replicas import durable_store, group
from tests.unit.test_index_pending import write_part
from tests.unit.test_replication import aliases, in_sync, wait_until

DIM = 4


def with_bundle(store, root: Path, version: str = "b1") -> None:
    write_part(root / "bundles" / version, ["a", "b"])
    store.bundles.bundle_root = root / "bundles"
    store.load_bundle("c", version, path=version)


def test_a_candidate_is_kept_with_the_alias_and_survives_a_restart(tmp_path: Path) -> None:
    store = durable_store(tmp_path / "data")
    store.create("c", "s@1", DIM)
    with_bundle(store, tmp_path)
    candidate = CandidateSpec("b1", 0.25, 0.05)
    store.set_candidate("c", candidate)
    assert store.alias("c").candidate == candidate
    store.close()
    reopened = durable_store(tmp_path / "data")
    assert reopened.alias("c").candidate == candidate
    reopened.set_candidate("c", None)
    assert reopened.alias("c").candidate is None
    reopened.close()
    assert durable_store(tmp_path / "data").alias("c").candidate is None


def test_a_candidate_must_be_a_loaded_version_that_does_not_serve(tmp_path: Path) -> None:
    store = durable_store(tmp_path / "data")
    store.create("c", "s@1", DIM)
    store.begin_version("c", "v2", "s@2", DIM)
    for candidate, error, reason in [
        (CandidateSpec("nope"), NotFound, "VERSION_NOT_FOUND"),
        (CandidateSpec("v2"), FailedPrecondition, "VERSION_PENDING"),
        (CandidateSpec("live"), FailedPrecondition, "ALREADY_SERVING"),
        (CandidateSpec("live", 1.5), InvalidArgument, "BAD_SHARE"),
    ]:
        with pytest.raises(error) as refused:
            store.set_candidate("c", candidate)
        assert refused.value.reason == reason
    assert store.alias("c").candidate is None


@pytest.mark.parametrize("how", ["promoted", "deleted"])
def test_a_candidate_goes_when_its_version_serves_or_is_dropped(tmp_path: Path, how: str) -> None:
    store = durable_store(tmp_path / "data")
    store.create("c", "s@1", DIM)
    with_bundle(store, tmp_path)
    store.set_candidate("c", CandidateSpec("b1", 0.5, 0.1))
    if how == "promoted":
        store.activate("c", "b1")
    else:
        store.delete_version("c", "b1")
    assert store.alias("c").candidate is None
    store.close()
    assert durable_store(tmp_path / "data").alias("c").candidate is None


def test_a_candidate_reaches_every_follower(tmp_path: Path) -> None:
    primary, replicator, peers, _ = group(tmp_path, 2)
    replicator.start()
    try:
        with replicator.write():
            primary.create("c", "s@1", DIM)
        wait_until(lambda: in_sync(replicator, "f0", "f1"))
        with replicator.write():
            with_bundle(primary, tmp_path)
        with replicator.write():
            primary.set_candidate("c", CandidateSpec("b1", 0.5, 0.1))
        for peer in peers:
            assert aliases(peer.follower.store) == aliases(primary)
            assert peer.follower.store.alias("c").candidate == CandidateSpec("b1", 0.5, 0.1)
    finally:
        replicator.stop()
