"""A version's log read back as a replica reads it: the records after a seq, in order,
never past what is durable, and a clear refusal once a snapshot has taken them."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from contentembed.services.index.collection import HnswParams
from contentembed.services.index.persistence import WalRecord, WriteAheadLog, read_wal
from contentembed.services.index.version_log import LogTruncated
from tests.support.local_replicas import durable_store

DIM = 4


def write(collection, batch: int, count: int = 3) -> list[str]:
    ids = [f"{batch}-{n}" for n in range(count)]
    rng = np.random.default_rng(batch)
    collection.upsert(ids, rng.normal(size=(count, DIM)).astype(np.float32), [{"b": batch}] * count)
    return ids


def test_records_after_a_seq_come_in_order_across_segments(tmp_path) -> None:
    store = durable_store(tmp_path)
    collection, _ = store.create("c", "s@1", DIM)
    for batch in range(3):
        write(collection, batch)
    log = store.logs.of("c", "live")
    log.open_segment(collection.seq + 1)  # a rotation without a snapshot: two segments
    collection.delete(["0-0"])
    write(collection, 3)
    assert [r.seq for r in log.records_after(0)] == [1, 2, 3, 4, 5]
    assert [r.seq for r in log.records_after(2)] == [3, 4, 5]
    assert [(r.op, r.ids) for r in log.records_after(3)][0] == ("delete", ["0-0"])
    assert log.records_after(5) == [] and log.records_after(99) == []
    # The budget is in vector bytes; at least one record comes however small it is.
    assert [r.seq for r in log.records_after(0, max_bytes=1)] == [1]
    store.close()


def test_records_a_snapshot_took_are_refused_with_where_the_log_starts(tmp_path) -> None:
    store = durable_store(tmp_path)
    collection, _ = store.create("c", "s@1", DIM)
    for batch in range(4):
        write(collection, batch)
    assert store.snapshot_due(force=True) == 1
    write(collection, 4)
    log = store.logs.of("c", "live")
    with pytest.raises(LogTruncated) as caught:
        log.records_after(2)
    assert caught.value.snapshot_seq == 4
    assert [r.seq for r in log.records_after(4)] == [5]
    store.close()


def test_a_reader_leaves_an_append_in_progress_alone(tmp_path) -> None:
    """A torn tail of the live segment is a write under way when a replica reads: the
    reader stops before it and does not cut it off (recovery would)."""
    path = tmp_path / "1.log"
    wal = WriteAheadLog(path)
    wal.append(WalRecord(1, "delete", ["a"]))
    wal.close()
    whole = path.read_bytes()
    with path.open("ab") as handle:
        handle.write(whole[: len(whole) // 2])  # half of a second record
    assert [r.seq for r in read_wal(path, last_segment=True, cut_torn_tail=False)] == [1]
    assert path.stat().st_size > len(whole)  # still there for the writer to finish


def test_records_after_never_runs_ahead_of_the_writers(tmp_path) -> None:
    """Read while writes go on: every answer is a gap-free run starting at seq + 1."""
    store = durable_store(tmp_path)
    collection, _ = store.create("c", "s@1", DIM)
    log = store.logs.of("c", "live")
    done = threading.Event()

    def writer() -> None:
        for batch in range(200):
            write(collection, batch, count=1)
        done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    seen = 0
    while not done.is_set() or seen < collection.seq:
        records = log.records_after(seen)
        assert [r.seq for r in records] == list(range(seen + 1, seen + 1 + len(records)))
        seen += len(records)
    thread.join()
    assert seen == 200
    store.close()


def test_a_version_replaced_in_one_swap_survives_a_crash_on_either_side(tmp_path) -> None:
    """A replica given its primary's copy of a version swaps directories: killed with the
    old one moved aside and the new one not yet in place, the old one comes back."""
    from contentembed.services.index.collection import HnswCollection

    store = durable_store(tmp_path)
    collection, _ = store.create("c", "s@1", DIM)
    write(collection, 1)
    store.close()
    versions = tmp_path / "collections" / "c" / "versions"
    (versions / "live").rename(versions / ".replaced-live")  # the crash: moved aside only
    reopened = durable_store(tmp_path)
    assert reopened.get("c").item_count == 3 and not (versions / ".replaced-live").exists()

    copy = HnswCollection("c", "s@1", DIM, HnswParams())
    copy.upsert(["x"], np.ones((1, DIM), np.float32), [{}])
    reopened.logs.create(copy, snapshot=True, replace=True)
    reopened.close()
    assert durable_store(tmp_path).get("c").get(["x"])[0].id == "x"
