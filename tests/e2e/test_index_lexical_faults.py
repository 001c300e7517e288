"""kill -9 of a real index process mid-stream of lexical writes: the lexical index is
rebuilt from the texts in the WAL and the snapshot, and answers every acknowledged write;
for a hybrid collection and for a lexical-only one (no vectors, items.json-only snapshots)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import grpc
import pytest

from contentembed.common.v1 import types_pb2
from contentembed.index.v1 import index_service_pb2 as pb
from contentembed.index.v1 import index_service_pb2_grpc as pb_grpc
from tests.e2e.test_index_faults import as_pb, start_index, vector_for

pytestmark = pytest.mark.e2e
DIM = 16


def lexical_search(stub: pb_grpc.IndexServiceStub, words: list[str]) -> dict[str, list[str]]:
    """The ids each word finds (lexical-only batches)."""
    found: dict[str, list[str]] = {}
    for start in range(0, len(words), 500):
        chunk = words[start : start + 500]
        response = stub.SearchBatch(pb.SearchBatchRequest(collection="docs", texts=chunk, top_k=5))
        for word, result in zip(chunk, response.results):
            found[word] = [hit.id for hit in result.lexical_hits]
    return found


@pytest.mark.parametrize("lexical_only", [False, True], ids=["hybrid", "lexical-only"])
@pytest.mark.parametrize("snapshots", [False, True], ids=["wal-only", "snapshot-plus-wal"])
def test_kill_9_mid_stream_loses_no_acknowledged_lexical_write(
    tmp_path: Path, snapshots: bool, lexical_only: bool
) -> None:
    data_dir = tmp_path / "data"
    index = start_index(tmp_path, data_dir, "--snapshot-every-ops", "25" if snapshots else "1000000000")
    index.wait_until_serving(time.monotonic() + 60)
    channel = grpc.insecure_channel(index.address)
    stub = pb_grpc.IndexServiceStub(channel)
    if lexical_only:
        stub.CreateCollection(pb.CreateCollectionRequest(
            name="docs", lexical=types_pb2.LexicalConfig(enabled=True, lexical_only=True)))
    else:
        stub.CreateCollection(pb.CreateCollectionRequest(
            name="docs", space_id="s@1", dim=DIM, lexical=types_pb2.LexicalConfig(enabled=True)))

    word_of: dict[str, str] = {}  # id -> the unique word of its last acknowledged text
    retired: set[str] = set()  # words an acknowledged rewrite replaced
    deleted: set[str] = set()  # ids an acknowledged delete removed
    # The request the kill interrupted was never acknowledged: it may or may not be applied.
    in_flight: dict[str, str | None] = {}  # id -> its new word (None: a delete)
    stop = threading.Event()

    def writer() -> None:
        batch = 0
        while not stop.is_set():
            # New ids, plus a new text for an earlier id: its old word must stop matching.
            words = {f"doc-{batch}-{i}": f"u{batch}n{i}" for i in range(8)}
            if batch > 2:
                words[f"doc-{batch // 2}-0"] = f"r{batch}n0"
            in_flight.clear()
            in_flight.update(words)
            try:
                stub.Upsert(pb.UpsertRequest(collection="docs", items=[
                    pb.Item(id=i, text=f"common text {w}",
                            vector=None if lexical_only else as_pb(vector_for(i, batch)))
                    for i, w in words.items()
                ]), timeout=5)
                for item_id, word in words.items():
                    if item_id in word_of:
                        retired.add(word_of[item_id])
                    word_of[item_id] = word
                if batch > 2 and batch % 3 == 0:  # and a delete (never rewritten later)
                    gone = f"doc-{batch // 2}-1"
                    in_flight.clear()
                    in_flight[gone] = None
                    stub.DeleteItems(pb.DeleteItemsRequest(collection="docs", ids=[gone]), timeout=5)
                    deleted.add(gone)
            except grpc.RpcError:
                return  # the process died under this request: it was never acknowledged
            batch += 1

    thread = threading.Thread(target=writer)
    thread.start()
    snapshots_dir = data_dir / "collections" / "docs" / "versions" / "live" / "snapshots"
    deadline = time.monotonic() + 60
    # With snapshots: kill once one exists and more writes followed it, so recovery needs
    # the snapshot's texts and the WAL's after it.
    while time.monotonic() < deadline and not (
        len(word_of) >= 1200 and (not snapshots or list(snapshots_dir.glob("[0-9]*")))
    ):
        time.sleep(0.05)
    time.sleep(0.2)
    os.kill(index.pid, signal.SIGKILL)  # mid-stream: the writer is still sending
    index.process.wait(10)
    stop.set()
    thread.join(10)
    channel.close()
    assert len(word_of) >= 1200 and deleted and retired
    assert bool(list(snapshots_dir.glob("[0-9]*"))) == snapshots
    # A lexical-only collection's snapshots hold no hnswlib file.
    assert bool(list(snapshots_dir.glob("[0-9]*/index.bin"))) == (snapshots and not lexical_only)

    restarted = start_index(tmp_path, data_dir)
    try:
        restarted.wait_until_serving(time.monotonic() + 60)
        with grpc.insecure_channel(restarted.address) as channel:
            stub = pb_grpc.IndexServiceStub(channel)
            found = lexical_search(stub, sorted(set(word_of.values()) | retired | set(
                w for w in in_flight.values() if w)))
            for item_id, word in word_of.items():
                if item_id in deleted:
                    assert found[word] == [], (item_id, word)
                elif item_id in in_flight:  # the interrupted write may or may not be applied
                    new_word = in_flight[item_id]
                    if new_word is None:  # a delete
                        assert found[word] in ([], [item_id]), (item_id, word)
                    else:  # a rewrite: the old word or the new one finds it, not both
                        assert found[word] + found[new_word] == [item_id], (item_id, word, new_word)
                else:
                    assert found[word] == [item_id], (item_id, word)
            for word in retired:
                assert found[word] == [], word
            # The texts themselves came back too.
            sample = [i for i in sorted(word_of) if i not in deleted and i not in in_flight][:500]
            items = stub.GetItems(pb.GetItemsRequest(collection="docs", ids=sample)).items
            assert {i.id: i.text for i in items} == {i: f"common text {word_of[i]}" for i in sample}
            everything = stub.Search(pb.SearchRequest(collection="docs", text="common", top_k=1000))
            assert len(everything.lexical_hits) == 1000  # the shared word matches them all
    finally:
        restarted.stop(20)
