"""WAL and snapshot files: what survives, what is refused."""

from __future__ import annotations

import numpy as np
import pytest

from contentembed.services.index.collection import HnswCollection, HnswParams
from contentembed.services.index.persistence import (
    CorruptData,
    WalRecord,
    WriteAheadLog,
    read_wal,
    verify_manifest,
)
from contentembed.services.index.store import CollectionStore, Durability


def upsert_record(seq: int, ids: list[str], dim: int = 4) -> WalRecord:
    vectors = np.random.default_rng(seq).normal(size=(len(ids), dim)).astype(np.float32)
    return WalRecord(seq, "upsert", ids, vectors, [{"n": seq}] * len(ids))


def test_wal_round_trip(tmp_path) -> None:
    wal = WriteAheadLog(tmp_path / "1.log")
    records = [upsert_record(1, ["a", "b"]), WalRecord(2, "delete", ["a"]), upsert_record(3, ["c"])]
    for record in records:
        wal.append(record)
    wal.close()
    read = list(read_wal(tmp_path / "1.log", truncate_torn_tail=False))
    assert [(r.seq, r.op, r.ids) for r in read] == [(1, "upsert", ["a", "b"]), (2, "delete", ["a"]), (3, "upsert", ["c"])]
    np.testing.assert_array_equal(read[0].vectors, records[0].vectors)
    assert read[2].metadata == [{"n": 3}]


def test_torn_tail_is_cut_but_damage_in_the_middle_refuses(tmp_path) -> None:
    path = tmp_path / "1.log"
    wal = WriteAheadLog(path)
    for seq in (1, 2, 3):
        wal.append(upsert_record(seq, [f"id{seq}"]))
    wal.close()
    whole = path.read_bytes()

    path.write_bytes(whole[:-7])  # the process died mid-append of record 3
    assert [r.seq for r in read_wal(path, truncate_torn_tail=True)] == [1, 2]
    assert [r.seq for r in read_wal(path, truncate_torn_tail=False)] == [1, 2]  # file was cut

    damaged = bytearray(whole)
    damaged[30] ^= 0xFF  # inside record 1, records 2 and 3 follow
    path.write_bytes(bytes(damaged))
    with pytest.raises(CorruptData):
        list(read_wal(path, truncate_torn_tail=True))


def test_snapshot_verification_catches_changed_and_truncated_files(tmp_path) -> None:
    collection = HnswCollection("c", "s@1", 4, HnswParams())
    collection.upsert(["a", "b"], np.eye(4, dtype=np.float32)[:2], [{}, {}])
    collection.write_snapshot(tmp_path / "snap")
    assert verify_manifest(tmp_path / "snap")["count"] == 2

    items = tmp_path / "snap" / "items.json"
    original = items.read_bytes()
    items.write_bytes(original.replace(b'"a"', b'"z"'))
    with pytest.raises(CorruptData, match="sha256"):
        verify_manifest(tmp_path / "snap")
    items.write_bytes(original)
    index = tmp_path / "snap" / "index.bin"
    index.write_bytes(index.read_bytes()[:-100])
    with pytest.raises(CorruptData, match="truncated"):
        verify_manifest(tmp_path / "snap")


def durable_store(path, every: int = 1000) -> CollectionStore:
    store = CollectionStore(HnswParams(), 8, Durability(path, snapshot_every_ops=every))
    store.load()
    return store


def contents(store: CollectionStore, name: str = "c") -> dict[str, tuple[list[float], dict]]:
    collection = store.get(name)
    ids, _ = collection.list_ids("", 10_000)
    return {i.id: (np.round(i.vector, 5).tolist(), i.metadata) for i in collection.get(ids)}


@pytest.mark.parametrize("graceful", [True, False])
def test_store_recovers_snapshot_plus_wal(tmp_path, graceful: bool) -> None:
    rng = np.random.default_rng(0)
    store = durable_store(tmp_path, every=10**9)
    collection, _ = store.create("c", "s@1", 8)
    for batch in range(5):
        ids = [f"b{batch}-{i}" for i in range(20)]
        collection.upsert(ids, rng.normal(size=(20, 8)).astype(np.float32), [{"batch": batch}] * 20)
    store.snapshot_due(force=True)  # snapshot in the middle of the history
    collection.delete(["b0-0", "b1-1"])
    collection.upsert(["b0-5", "new"], rng.normal(size=(2, 8)).astype(np.float32), [{"x": 1}, {"x": 2}])
    expected = contents(store)
    if graceful:
        store.close()
    # else: the process "dies": nothing closed, only what was written to the files counts
    reopened = durable_store(tmp_path)
    assert contents(reopened) == expected
    assert reopened.get("c").item_count == 100 - 2 + 1
    reopened.get("c").upsert(["after"], np.ones((1, 8), np.float32), [{}])
    reopened.close()
    assert "after" in contents(durable_store(tmp_path))


def test_corrupt_snapshot_refuses_the_load(tmp_path) -> None:
    store = durable_store(tmp_path)
    collection, _ = store.create("c", "s@1", 4)
    collection.upsert(["a"], np.ones((1, 4), np.float32), [{}])
    store.close()
    snapshot = next((tmp_path / "collections" / "c" / "versions" / "live" / "snapshots").iterdir())
    (snapshot / "index.bin").write_bytes(b"\x00" * 64)
    with pytest.raises(CorruptData, match="collections/c/versions/live"):
        durable_store(tmp_path)


def test_deleted_collection_stays_deleted(tmp_path) -> None:
    store = durable_store(tmp_path)
    store.create("gone", "s@1", 4)
    store.create("kept", "s@1", 4)
    store.delete("gone")
    store.close()
    reopened = durable_store(tmp_path)
    assert [c.name for c in reopened.list_page(0, "")[0]] == ["kept"]
