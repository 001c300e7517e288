"""Lexical-only collections (LexicalParams.lexical_only: no hnswlib index, dim 0): writes,
searches, refusals, snapshots and WAL recovery through the store."""

from __future__ import annotations

import json

import numpy as np
import pytest

from contentembed.services.common.errors import FailedPrecondition, InvalidArgument
from contentembed.services.index.collection import HnswCollection
from contentembed.services.index.dense import HnswParams
from contentembed.services.index.lexical import LexicalParams
from contentembed.services.index.persistence import (
    CorruptData,
    decode_payload,
    encode_record,
    verify_manifest,
    write_manifest,
)
from contentembed.services.index.store import CollectionStore
from contentembed.services.index.version_log import Durability

ONLY = LexicalParams("english", lexical_only=True)
DOCS = {
    "fox": ("the quick brown fox jumps", {"kind": "animal"}),
    "dog": ("a lazy dog sleeps all day", {"kind": "animal"}),
    "runner": ("she runs marathons", {"kind": "person"}),
}


def lexical_only(name: str = "c") -> HnswCollection:
    collection = HnswCollection(name, "", 0, HnswParams(), lexical=ONLY)
    collection.upsert(list(DOCS), None, [m for _, m in DOCS.values()], [t for t, _ in DOCS.values()])
    return collection


def ids_for(collection: HnswCollection, text: str, **kwargs) -> list[str]:
    return [h.id for h in collection.search_lexical_batch([text], 10, **kwargs)[0]]


def test_writes_replaces_deletes_and_searches_by_text() -> None:
    collection = lexical_only()
    assert not collection.dense and collection.item_count == 3
    assert ids_for(collection, "foxes") == ["fox"]  # stemmed like a hybrid collection
    assert ids_for(collection, "running") == ["runner"]
    assert sorted(ids_for(collection, "dog fox", metadata_filter={"kind": "animal"})) == ["dog", "fox"]
    assert ids_for(collection, "fox", metadata_filter={"kind": "person"}) == []
    # A replace re-indexes the new text: the old words no longer find it.
    collection.upsert(["fox"], np.empty((1, 0), np.float32), [{"kind": "animal"}], ["a red panda"])
    assert ids_for(collection, "fox") == [] and ids_for(collection, "panda") == ["fox"]
    assert collection.delete(["dog", "unknown"]) == 1
    assert ids_for(collection, "dog") == [] and collection.item_count == 2
    # A deleted id written again gets a new label and is found again.
    collection.upsert(["dog"], None, [{}], ["the dog is back"])
    assert ids_for(collection, "dog") == ["dog"]
    assert collection.list_ids("", 10) == (["dog", "fox", "runner"], False)


def test_get_returns_text_and_metadata_without_a_vector() -> None:
    items = lexical_only().get(["runner", "nope", "fox"])
    assert [i.id for i in items] == ["runner", "fox"]
    assert items[0].text == "she runs marathons" and items[0].metadata == {"kind": "person"}
    assert all(i.vector.shape == (0,) for i in items)


def test_refusals() -> None:
    collection = lexical_only()
    with pytest.raises(InvalidArgument) as refused:
        collection.upsert(["x"], np.ones((1, 4), np.float32), [{}], ["some text"])
    assert refused.value.reason == "VECTOR_NOT_EXPECTED"
    for texts in (None, ["words", ""]):
        with pytest.raises(InvalidArgument) as refused:
            collection.upsert(["x", "y"][: len(texts or [1])], None, [{}] * len(texts or [1]), texts)
        assert refused.value.reason == "TEXT_REQUIRED"
    assert collection.item_count == 3  # nothing of a refused write was applied
    with pytest.raises(FailedPrecondition) as refused:
        collection.search(np.ones(4, np.float32), 5)
    assert refused.value.reason == "DENSE_NOT_ENABLED"
    with pytest.raises(FailedPrecondition) as refused:
        collection.search_batch(np.ones((2, 0), np.float32), 5)
    assert refused.value.reason == "DENSE_NOT_ENABLED"
    # dim 0 and lexical_only go together.
    with pytest.raises(ValueError):
        HnswCollection("d", "s@1", 4, HnswParams(), lexical=ONLY)
    with pytest.raises(ValueError):
        HnswCollection("d", "", 0, HnswParams(), lexical=LexicalParams("english"))


def test_wal_records_carry_no_vector_bytes() -> None:
    collection = lexical_only()
    records = []
    collection.journal = lambda record: records.append(record) or record
    collection.upsert(["new"], None, [{"a": 1}], ["brand new text"])
    encoded = encode_record(records[0])
    decoded = decode_payload(encoded[12:])
    assert decoded.vectors is not None and decoded.vectors.shape == (1, 0)
    assert decoded.texts == ["brand new text"] and decoded.metadata == [{"a": 1}]
    replayed = HnswCollection("c", "", 0, HnswParams(), lexical=ONLY)
    replayed.seq = records[0].seq - 1
    replayed.replay(decoded)
    assert ids_for(replayed, "brand") == ["new"]


def test_snapshot_round_trip_holds_items_json_only(tmp_path) -> None:
    collection = lexical_only()
    collection.delete(["dog"])
    manifest = collection.write_snapshot(tmp_path / "snap")
    assert sorted(p.name for p in (tmp_path / "snap").iterdir()) == ["items.json", "manifest.json"]
    assert set(manifest["files"]) == {"items.json"} and manifest["dim"] == 0
    assert manifest["lexical"] == {"language": "english", "lexical_only": True}
    loaded = HnswCollection.from_snapshot(tmp_path / "snap", verify_manifest(tmp_path / "snap"), "c")
    assert not loaded.dense and loaded.lexical_params == ONLY and loaded.item_count == 2
    assert ids_for(loaded, "fox") == ["fox"] and ids_for(loaded, "dog") == []
    assert loaded.get(["runner"])[0].metadata == {"kind": "person"}
    loaded.upsert(["dog"], None, [{}], ["dog again"])  # labels continue after the snapshot's
    assert ids_for(loaded, "dog") == ["dog"] and ids_for(loaded, "fox") == ["fox"]


def test_snapshot_checks_refuse_inconsistent_lexical_only_parts(tmp_path) -> None:
    manifest = lexical_only().write_snapshot(tmp_path / "snap")
    # A dense manifest must list index.bin: dim 4 with items.json alone is damage.
    (tmp_path / "snap" / "manifest.json").write_text(json.dumps(dict(manifest, dim=4)))
    with pytest.raises(CorruptData, match="exactly"):
        verify_manifest(tmp_path / "snap")
    # Files verified but an item without its text: nothing could find it.
    items = json.loads((tmp_path / "snap" / "items.json").read_text())
    items["texts"] = items["texts"][1:]
    (tmp_path / "snap" / "items.json").write_text(json.dumps(items))
    fixed = dict(manifest)
    del fixed["files"]
    write_manifest(tmp_path / "snap", fixed)
    with pytest.raises(CorruptData, match="without text"):
        HnswCollection.from_snapshot(tmp_path / "snap", verify_manifest(tmp_path / "snap"), "c")


def durable_store(path, every: int = 10**9) -> CollectionStore:
    store = CollectionStore(HnswParams(), 8, Durability(path, snapshot_every_ops=every))
    store.load()
    return store


def everything(store: CollectionStore, name: str = "c") -> dict[str, tuple[str, dict]]:
    collection = store.get(name)
    ids, _ = collection.list_ids("", 10_000)
    return {i.id: (i.text, dict(i.metadata)) for i in collection.get(ids)}


@pytest.mark.parametrize("graceful", [True, False])
def test_store_recovers_snapshot_plus_wal(tmp_path, graceful: bool) -> None:
    store = durable_store(tmp_path)
    collection, created = store.create("c", "", 0, lexical=ONLY)
    assert created and not collection.dense
    spec = json.loads((tmp_path / "collections/c/versions/live/collection.json").read_text())
    assert spec["dim"] == 0 and spec["lexical"] == {"language": "english", "lexical_only": True}
    for batch in range(4):
        ids = [f"b{batch}-{i}" for i in range(25)]
        store.upsert("c", ids, None, [{"batch": batch}] * 25, texts=[f"word{i} batch{batch}" for i in range(25)])
    store.snapshot_due(force=True)  # a snapshot in the middle of the history
    store.delete_items("c", ["b0-0", "b1-1"])
    store.upsert("c", ["b0-5", "new"], None, [{"x": 1}, {}], texts=["rewritten", "fresh words"])
    expected = everything(store)
    assert len(expected) == 100 - 2 + 1
    if graceful:
        store.close()
    reopened = durable_store(tmp_path)
    assert everything(reopened) == expected
    recovered = reopened.get("c")
    assert recovered.lexical_params == ONLY and recovered.dim == 0 and recovered.space_id == ""
    assert ids_for(recovered, "rewritten") == ["b0-5"] and ids_for(recovered, "fresh") == ["new"]
    assert "b0-0" not in ids_for(recovered, "word0 batch0")
    assert ids_for(recovered, "word0 batch1")[0] == "b1-0"
    reopened.close()


def test_store_create_and_version_refusals(tmp_path) -> None:
    store = durable_store(tmp_path)
    for space_id, dim in (("s@1", 0), ("", 8), ("s@1", 8)):
        with pytest.raises(InvalidArgument) as refused:
            store.create("c", space_id, dim, lexical=ONLY)
        assert refused.value.reason == "BAD_LEXICAL_CONFIG"
    store.create("c", "", 0, lexical=ONLY)
    assert store.create("c", "", 0, lexical=ONLY, exist_ok=True)[1] is False
    with pytest.raises(FailedPrecondition) as refused:
        store.create("c", "", 0, lexical=LexicalParams("french", lexical_only=True), exist_ok=True)
    assert refused.value.reason == "LEXICAL_MISMATCH"
    with pytest.raises(InvalidArgument) as refused:
        store.upsert("c", ["a"], np.ones((1, 8), np.float32), [{}], texts=["text"])
    assert refused.value.reason == "VECTOR_NOT_EXPECTED"
    for refusal in (
        lambda: store.begin_version("c", "v2", "s@2", 8),
        lambda: store.load_bundle("c", "v2", upload_id="x"),
        lambda: store.begin_upload("c", "v2", b"{}"),
    ):
        with pytest.raises(FailedPrecondition) as refused:
            refusal()
        assert refused.value.reason == "LEXICAL_ONLY"
    store.close()
