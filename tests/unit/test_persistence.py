"""WAL and snapshot files: what survives, what is refused."""

from __future__ import annotations

import numpy as np
import pytest

from contentembed.services.common.errors import Unavailable
from contentembed.services.index.collection import HnswCollection
from contentembed.services.index.dense import HnswParams
from contentembed.services.index.persistence import (
    CorruptData,
    WalRecord,
    WriteAheadLog,
    encode_record,
    read_wal,
    verify_manifest,
)
from contentembed.services.index.store import CollectionStore
from contentembed.services.index.version_log import Durability


def upsert_record(seq: int, ids: list[str], dim: int = 4) -> WalRecord:
    vectors = np.random.default_rng(seq).normal(size=(len(ids), dim)).astype(np.float32)
    return WalRecord(seq, "upsert", ids, vectors, [{"n": seq}] * len(ids))


def test_wal_round_trip(tmp_path) -> None:
    wal = WriteAheadLog(tmp_path / "1.log")
    records = [upsert_record(1, ["a", "b"]), WalRecord(2, "delete", ["a"]), upsert_record(3, ["c"])]
    for record in records:
        wal.append(record)
    wal.close()
    read = list(read_wal(tmp_path / "1.log", last_segment=True))
    assert [(r.seq, r.op, r.ids) for r in read] == [(1, "upsert", ["a", "b"]), (2, "delete", ["a"]), (3, "upsert", ["c"])]
    np.testing.assert_array_equal(read[0].vectors, records[0].vectors)
    assert read[2].metadata == [{"n": 3}]


def test_torn_tail_is_cut_but_damage_anywhere_else_refuses(tmp_path) -> None:
    path = tmp_path / "1.log"
    wal = WriteAheadLog(path)
    for seq in (1, 2, 3):
        wal.append(upsert_record(seq, [f"id{seq}"]))
    wal.close()
    whole = path.read_bytes()

    path.write_bytes(whole[:-7])  # the process died mid-append of record 3
    with pytest.raises(CorruptData, match="older segment"):
        list(read_wal(path, last_segment=False))
    assert [r.seq for r in read_wal(path, last_segment=True)] == [1, 2]
    assert len(path.read_bytes()) < len(whole) - 7  # the torn record was cut off

    damaged = bytearray(whole)
    damaged[30] ^= 0xFF  # inside record 1's payload: CRC mismatch
    path.write_bytes(bytes(damaged))
    with pytest.raises(CorruptData, match="CRC"):
        list(read_wal(path, last_segment=True))

    # A flipped length bit makes record 2 claim to run past the end of the file: that is
    # damage in the middle, not a torn tail, and must not cut record 3 off silently.
    second = len(encode_record(upsert_record(1, ["id1"])))
    damaged = bytearray(whole)
    damaged[second] ^= 0x01  # the magic of record 2
    path.write_bytes(bytes(damaged))
    with pytest.raises(CorruptData, match="header"):
        list(read_wal(path, last_segment=True))
    assert path.read_bytes() == bytes(damaged)  # nothing was truncated


def test_failed_append_leaves_the_log_as_it_was(tmp_path, monkeypatch) -> None:
    import os as os_module

    path = tmp_path / "1.log"
    wal = WriteAheadLog(path)
    wal.append(upsert_record(1, ["a"]))
    real_fsync = os_module.fsync
    calls = {"n": 0}

    def failing_fsync(fd: int) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(5, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr("contentembed.services.index.persistence.os.fsync", failing_fsync)
    with pytest.raises(OSError):
        wal.append(upsert_record(2, ["ghost"]))  # not acknowledged
    wal.append(upsert_record(2, ["acked"]))  # the same seq, now for the acknowledged write
    wal.close()
    assert [(r.seq, r.ids) for r in read_wal(path, last_segment=True)] == [(1, ["a"]), (2, ["acked"])]


FULL_DISK_SCRIPT = """
import resource, signal, sys
from pathlib import Path
import numpy as np
from contentembed.services.index.persistence import WalRecord, WriteAheadLog, read_wal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
path = Path(sys.argv[1])
wal = WriteAheadLog(path)
def record(seq, item_id):
    return WalRecord(seq, "upsert", [item_id], np.ones((1, 16), np.float32), [{}])
seq = 0
while True:
    try:
        wal.append(record(seq + 1, f"acked-{seq + 1}"))
    except OSError as error:
        print("refused", seq + 1, error.errno, path.stat().st_size)
        break
    seq += 1
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
wal.append(record(seq + 1, "after-space"))
wal.close()
print("log", [(r.seq, r.ids[0]) for r in read_wal(path, last_segment=True)][-2:], seq)
"""


def test_a_full_disk_mid_append_leaves_no_part_of_the_record(tmp_path) -> None:
    """RLIMIT_FSIZE in a child process: a write past it fails with EFBIG after writing part
    of the record, as on a full disk. The record must be gone (not completed by a later
    flush once space is back), and the log must take the next write at the same seq."""
    import subprocess
    import sys

    path = tmp_path / "1.log"
    result = subprocess.run([sys.executable, "-c", FULL_DISK_SCRIPT, str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    refused, log = result.stdout.splitlines()
    _, seq, errno_value, size = refused.split()
    acked = int(seq) - 1
    assert int(errno_value) == 27  # EFBIG
    assert int(size) == sum(
        len(encode_record(WalRecord(n, "upsert", [f"acked-{n}"], np.ones((1, 16), np.float32), [{}])))
        for n in range(1, acked + 1)
    )
    assert log == f"log {[(acked, f'acked-{acked}'), (acked + 1, 'after-space')]} {acked}"


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


def test_a_snapshot_removes_what_a_kill_mid_snapshot_left(tmp_path) -> None:
    store = durable_store(tmp_path, every=10**9)
    collection, _ = store.create("c", "s@1", 4)
    collection.upsert(["a"], np.ones((1, 4), np.float32), [{}])
    snapshots = tmp_path / "collections" / "c" / "versions" / "live" / "snapshots"
    snapshots.mkdir()
    (snapshots / ".staging-1").mkdir()  # a process killed while writing a snapshot
    (snapshots / ".staging-1" / "index.bin").write_bytes(b"\0" * 4096)
    store.snapshot_due(force=True)
    assert [p.name for p in snapshots.iterdir()] == ["1"]
    store.close()


def test_corrupt_snapshot_refuses_the_load(tmp_path) -> None:
    store = durable_store(tmp_path)
    collection, _ = store.create("c", "s@1", 4)
    collection.upsert(["a"], np.ones((1, 4), np.float32), [{}])
    store.close()
    snapshot = next((tmp_path / "collections" / "c" / "versions" / "live" / "snapshots").iterdir())
    (snapshot / "index.bin").write_bytes(b"\x00" * 64)
    with pytest.raises(CorruptData, match="collections/c/versions/live"):
        durable_store(tmp_path)


def test_bundle_version_name_survives_a_restart(tmp_path) -> None:
    bundles = tmp_path / "bundles"
    built = HnswCollection("c", "s@2", 4, HnswParams())  # built as "live" by the batch job
    built.upsert(["b"], np.ones((1, 4), np.float32), [{}])
    built.write_snapshot(bundles / "v2")
    store = CollectionStore(HnswParams(), 8, Durability(tmp_path / "data"), bundles)
    store.load()
    store.load_bundle("c", "v2", "v2")
    store.close()
    reopened = CollectionStore(HnswParams(), 8, Durability(tmp_path / "data"), bundles)
    reopened.load()
    assert reopened.get("c").version == "v2"


def test_snapshot_racing_a_delete_leaves_nothing_behind(tmp_path) -> None:
    store = durable_store(tmp_path, every=10**9)
    collection, _ = store.create("c", "s@1", 4)
    collection.upsert(["a"], np.ones((1, 4), np.float32), [{}])
    files = store.logs.of("c", "live")
    store.delete("c")
    files.snapshot(collection)  # the snapshot thread had picked the collection up before
    assert not (tmp_path / "collections" / "c").exists()
    store.close()
    assert durable_store(tmp_path).list_page(100, "")[0] == []


def test_replay_that_cannot_apply_is_reported_as_corruption(tmp_path) -> None:
    store = durable_store(tmp_path)
    collection, _ = store.create("c", "s@1", 4)
    collection.upsert(["a"], np.ones((1, 4), np.float32), [{}])
    segment = store.logs.of("c", "live").segments()[-1]
    store.logs.of("c", "live").close()
    wal = WriteAheadLog(segment)
    wal.append(WalRecord(3, "delete", ["a"]))  # seq 2 is missing: writes were lost
    wal.close()
    with pytest.raises(CorruptData, match="writes missing"):
        durable_store(tmp_path)


def test_deleted_collection_stays_deleted(tmp_path) -> None:
    store = durable_store(tmp_path)
    store.create("gone", "s@1", 4)
    store.create("kept", "s@1", 4)
    store.delete("gone")
    store.close()
    reopened = durable_store(tmp_path)
    assert [c.name for c in reopened.list_page(100, "")[0]] == ["kept"]


def test_a_create_during_recovery_never_deletes_acknowledged_items(tmp_path) -> None:
    """The review's reproduction: before the fix, create(exist_ok=True) before load()
    found no alias, removed the directory and answered created=True; load() then found 0."""
    store = durable_store(tmp_path)
    collection, _ = store.create("products", "s@1", 4)
    collection.upsert(["a", "b"], np.eye(2, 4, dtype=np.float32), [{}, {}])
    store.close()

    restarted = CollectionStore(HnswParams(), 8, Durability(tmp_path))  # not loaded yet
    with pytest.raises(Unavailable) as caught:
        restarted.create("products", "s@1", 4, exist_ok=True)
    assert caught.value.reason == "NOT_READY"
    with pytest.raises(Unavailable):
        restarted.create("brand-new", "s@1", 4)  # nothing is created before the load either
    restarted.load()
    assert restarted.get("products").item_count == 2
    _, created = restarted.create("products", "s@1", 4, exist_ok=True)
    assert not created
    restarted.close()
    assert durable_store(tmp_path).get("products").item_count == 2


def test_a_directory_with_an_alias_is_never_removed_by_create(tmp_path) -> None:
    store = durable_store(tmp_path)
    store.create("c", "s@1", 4)[0].upsert(["a"], np.ones((1, 4), np.float32), [{}])
    store.catalog.remove("c")  # as if load() had skipped it: an inconsistency, not a new name
    with pytest.raises(Unavailable):
        store.create("c", "s@1", 4)
    assert (tmp_path / "collections" / "c" / "alias.json").exists()


def test_snapshots_are_due_by_items_written_not_by_requests(tmp_path) -> None:
    """23 requests of 200 items: requests alone (every_ops) would never make a snapshot
    due, items do, so a crash replays at most the threshold plus one request."""
    rng = np.random.default_rng(0)
    durability = Durability(tmp_path, snapshot_every_ops=10**9, snapshot_every_items=1000)
    store = CollectionStore(HnswParams(), 8, durability)
    store.load()
    collection, _ = store.create("c", "s@1", 8)
    for request in range(23):
        ids = [f"r{request}-{i}" for i in range(200)]
        collection.upsert(ids, rng.normal(size=(200, 8)).astype(np.float32), [{}] * 200)
        store.snapshot_due()  # what the background loop does between writes
    expected = contents(store)
    # The process "dies": nothing closed.
    reopened = durable_store(tmp_path)
    assert contents(reopened) == expected
    replayed = reopened.logs.of("c", "live").since_snapshot
    assert 0 < replayed.items <= 1000 + 200 and replayed.records <= 6
    reopened.close()


def test_wal_bytes_time_and_the_collections_size_make_a_snapshot_due(tmp_path) -> None:
    from contentembed.services.index.persistence import WalRecord
    from contentembed.services.index.version_log import VersionLog, WrittenSince

    durability = Durability(tmp_path, snapshot_every_items=1000, snapshot_share=0.1,
                            snapshot_wal_bytes=1 << 20, snapshot_interval_s=60)
    files = VersionLog(tmp_path, durability)
    now = files.since_snapshot.started
    assert not durability.due(files, 0, now + 3600)  # nothing written: never due
    files.since_snapshot.add(WalRecord(1, "delete", ["a"] * 999), 100)
    assert not durability.due(files, 5000, now)
    assert durability.due(files, 5000, files.since_snapshot.started + 61)  # old enough
    files.since_snapshot.add(WalRecord(2, "delete", ["b"]), 100)
    assert durability.due(files, 5000, files.since_snapshot.started)  # 1,000 items
    # A collection of 50,000: 10% of it, 5,000 items, before a snapshot is due.
    assert not durability.due(files, 50_000, files.since_snapshot.started)
    files.since_snapshot = WrittenSince()
    files.since_snapshot.add(WalRecord(3, "delete", ["c"]), 1 << 20)  # 1 MiB of log
    assert durability.due(files, 50_000, files.since_snapshot.started)
