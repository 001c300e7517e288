"""Snapshots whose files carry valid checksums but whose parts disagree (a buggy batch
job, an older release) are refused before they can serve: every such disagreement would
otherwise fail searches later, or answer hits without ids."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from contentembed.services.index.collection import HnswCollection
from contentembed.services.index.dense import HnswParams
from contentembed.services.index.persistence import CorruptData, verify_manifest, write_manifest
from contentembed.services.index.store import CollectionStore
from contentembed.services.index.version_log import Durability

DIM = 4


def build(directory: Path) -> HnswCollection:
    """Live a, c, d, e at labels 0, 2, 4, 5; b (label 1) deleted and its slot reused by d;
    f (label 3) deleted, its slot vacant."""
    collection = HnswCollection("c", "s@1", DIM, HnswParams())
    rng = np.random.default_rng(1)
    collection.upsert(list("abcf"), rng.normal(size=(4, DIM)).astype(np.float32),
                      [{"n": 0}, {"n": 1}, {}, {"n": 3}])
    collection.delete(["b"])
    collection.upsert(["d"], rng.normal(size=(1, DIM)).astype(np.float32), [{"n": 4}])
    collection.upsert(["e", "a"], rng.normal(size=(2, DIM)).astype(np.float32), [{}, {"n": 5}])
    collection.delete(["f"])
    collection.write_snapshot(directory)
    return collection


def rewrite(directory: Path, items_change: Callable[[dict[str, Any]], None] | None = None,
            manifest_change: Callable[[dict[str, Any]], None] | None = None,
            raw_items: bytes | None = None) -> None:
    """Changes the snapshot and re-checksums it, as a writer with a bug would have."""
    items_path = directory / "items.json"
    if raw_items is not None:
        items_path.write_bytes(raw_items)
    elif items_change is not None:
        items = json.loads(items_path.read_bytes())
        items_change(items)
        items_path.write_text(json.dumps(items))
    manifest = json.loads((directory / "manifest.json").read_bytes())
    if manifest_change is not None:
        manifest_change(manifest)
    write_manifest(directory, manifest)


def load(directory: Path) -> HnswCollection:
    return HnswCollection.from_snapshot(directory, verify_manifest(directory), "c")


def test_a_consistent_snapshot_with_deletions_and_reused_slots_loads_whole(tmp_path) -> None:
    original = build(tmp_path / "s")
    loaded = load(tmp_path / "s")
    assert loaded.item_count == 4 and loaded.list_ids("", 10) == (list("acde"), False)
    for item in original.get(list("acde")):
        hit = loaded.search(item.vector, 1)[0]
        assert (hit.id, hit.metadata) == (item.id, item.metadata)
    loaded.upsert(["g"], np.ones((1, DIM), np.float32), [{}])  # reuses the vacant slot
    assert loaded.search(np.ones(DIM, np.float32), 1)[0].id == "g"


def shorten_ids(items: dict[str, Any]) -> None:
    items["ids"].pop()
    items["next_label"] -= 1
    items["metadata"] = [p for p in items["metadata"] if p[0] < len(items["ids"])]


def set_item(label: int, item_id: str | None, vacant_change: int):
    def change(items: dict[str, Any]) -> None:
        items["ids"][label] = item_id
        items["vacant"] += vacant_change
        items["metadata"] = [p for p in items["metadata"] if p[0] != label]
    return change


def count_change(delta: int):
    def change(manifest: dict[str, Any]) -> None:
        manifest["count"] += delta
    return change


CASES = {
    # The probed defect: a shorter ids list (and a count to match) loaded and then failed
    # every search that reached the missing labels.
    "ids shorter than the index": (dict(items_change=shorten_ids, manifest_change=count_change(-1)), "elements for 3 items"),
    "ids shorter, counts fudged": (dict(items_change=lambda i: (shorten_ids(i), i.update(vacant=i["vacant"] + 1)),
                                        manifest_change=count_change(-1)), "label 5"),
    "id without a vector": (dict(items_change=lambda i: (i["ids"].append("zz"), i.update(next_label=i["next_label"] + 1)),
                                 manifest_change=count_change(1)), "elements|without a vector"),
    "next_label off": (dict(items_change=lambda i: i.update(next_label=i["next_label"] + 3)), "next_label"),
    "vacant off": (dict(items_change=lambda i: i.update(vacant=i["vacant"] + 1)), "vacant"),
    "negative vacant": (dict(items_change=lambda i: i.update(vacant=-1)), "non-negative"),
    "metadata label out of range": (dict(items_change=lambda i: i["metadata"].append([99, {"x": 1}])), "label 99"),
    "metadata of a deleted label": (dict(items_change=lambda i: i["metadata"].append([1, {"x": 1}])), "label 1"),
    "metadata not an object": (dict(items_change=lambda i: i["metadata"].append([0, "text"])), r"\[label, object\]"),
    "metadata label twice": (dict(items_change=lambda i: i["metadata"].append(list(i["metadata"][0]))), "twice"),
    "duplicate id": (dict(items_change=lambda i: i["ids"].__setitem__(2, "a")), "twice"),
    "id not a string": (dict(items_change=lambda i: i["ids"].__setitem__(0, 7)), "invalid id"),
    "ids not a list": (dict(items_change=lambda i: i.update(ids="abc")), "lists"),
    "not an object": (dict(raw_items=b"[1, 2]"), "not an object"),
    "NaN in metadata": (dict(raw_items=None, items_change=lambda i: i["metadata"][0][1].update(x=float("nan"))), "NaN"),
    "count differs": (dict(manifest_change=count_change(1)), "manifest says"),
    "element count differs": (dict(manifest_change=lambda m: m.update(elements=m["elements"] + 1)), "elements"),
    # A live item whose vector the index marks deleted: invisible to search, GetItems fails.
    "live item marked deleted": (dict(items_change=set_item(3, "f", -1), manifest_change=count_change(1)), "marks deleted"),
    # A deleted item whose vector still answers: a hit without an id.
    "deleted item still searchable": (dict(items_change=set_item(0, None, 1), manifest_change=count_change(-1)), "searchable"),
}


@pytest.mark.parametrize("case", CASES)
def test_inconsistent_snapshots_are_refused(tmp_path, case: str) -> None:
    changes, message = CASES[case]
    build(tmp_path / "s")
    rewrite(tmp_path / "s", **changes)
    with pytest.raises(CorruptData, match=message):
        load(tmp_path / "s")


def test_recovery_refuses_an_inconsistent_snapshot(tmp_path) -> None:
    store = CollectionStore(HnswParams(), 8, Durability(tmp_path))
    store.load()
    collection, _ = store.create("c", "s@1", DIM)
    collection.upsert(list("ab"), np.eye(DIM, dtype=np.float32)[:2], [{}, {}])
    store.close()  # writes a snapshot
    snapshot = next((tmp_path / "collections" / "c" / "versions" / "live" / "snapshots").iterdir())
    rewrite(snapshot, shorten_ids, count_change(-1))
    reopened = CollectionStore(HnswParams(), 8, Durability(tmp_path))
    with pytest.raises(CorruptData, match="collections/c/versions/live"):
        reopened.load()
