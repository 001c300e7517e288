"""Pending versions and uploads in the store itself: an install interrupted before or after
CURRENT recovers to the right state, and staged uploads are cleaned up."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from contentembed.services.common.errors import FailedPrecondition, InvalidArgument
from contentembed.services.index.bundles import UploadLimits
from contentembed.services.index.collection import HnswCollection
from contentembed.services.index.dense import HnswParams
from contentembed.services.index.store import CollectionStore
from contentembed.services.index.version_log import PENDING_MARKER, Durability

DIM = 4
BASIS = np.eye(DIM, dtype=np.float32)


def write_part(directory: Path, ids: list[str]) -> Path:
    collection = HnswCollection("c", "s@2", DIM, HnswParams())
    collection.upsert(ids, BASIS[: len(ids)], [{}] * len(ids))
    collection.write_snapshot(directory)
    return directory


def open_store(tmp_path: Path, **kwargs) -> CollectionStore:
    store = CollectionStore(HnswParams(), durability=Durability(tmp_path / "data"),
                            bundle_root=tmp_path / "bundles", **kwargs)
    store.load()
    return store


def ids(collection: HnswCollection) -> set[str]:
    return {hit.id for hit in collection.search(np.ones(DIM, np.float32), 100, exact=True)}


def pending_store(tmp_path: Path) -> CollectionStore:
    """A live collection and a pending version v2 with one write and two tombstones."""
    write_part(tmp_path / "bundles" / "v2", ["a", "b", "c"])
    store = open_store(tmp_path)
    store.create("c", "s@1", DIM)
    store.begin_version("c", "v2", "s@2", DIM)
    store.upsert("c", ["a"], BASIS[3:4], [{"online": True}], space_id="s@2")
    store.delete_items("c", ["b", "zz"])
    return store


def test_an_install_failing_before_current_leaves_the_version_pending(tmp_path, monkeypatch) -> None:
    store = pending_store(tmp_path)

    def disk_full(self, directory, extra=None):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(HnswCollection, "write_snapshot", disk_full)
        with pytest.raises(OSError):
            store.load_bundle("c", "v2", path="v2")
    alias = store.alias("c")
    assert sorted(alias.pending) == ["v2"] and sorted(alias.versions) == ["live"]
    store.delete_items("c", ["c"])  # the pending version still takes writes
    store.close()

    directory = tmp_path / "data" / "collections" / "c" / "versions" / "v2"
    assert (directory / PENDING_MARKER).exists() and not (directory / "CURRENT").exists()
    store = open_store(tmp_path)
    pending = store.alias("c").pending["v2"]
    assert pending.tombstones == {"b", "zz", "c"} and ids(pending) == {"a"}
    collection, _ = store.load_bundle("c", "v2", path="v2")  # the retried publish
    assert ids(collection) == {"a"} and collection.get(["a"])[0].metadata == {"online": True}
    store.close()

    store = open_store(tmp_path)
    installed = store.alias("c").versions["v2"]
    assert ids(installed) == {"a"} and installed.bundle_digest and not installed.pending
    assert not (directory / PENDING_MARKER).exists()
    store.close()


def test_an_install_interrupted_after_current_recovers_as_installed(tmp_path) -> None:
    store = pending_store(tmp_path)
    collection, _ = store.load_bundle("c", "v2", path="v2")
    digest = collection.bundle_digest
    store.close()
    directory = tmp_path / "data" / "collections" / "c" / "versions" / "v2"
    (directory / PENDING_MARKER).write_bytes(b"")  # as if killed before the marker went

    store = open_store(tmp_path)
    alias = store.alias("c")
    assert sorted(alias.versions) == ["live", "v2"] and alias.pending == {}
    assert alias.versions["v2"].bundle_digest == digest
    assert ids(alias.versions["v2"]) == {"a", "c"}
    assert not (directory / PENDING_MARKER).exists()
    # The same part again is a no-op; the version stays as installed.
    again, manifest = store.load_bundle("c", "v2", path="v2")
    assert again is alias.versions["v2"] and manifest["count"] == 2
    store.close()


def test_uploads_are_swept_after_their_ttl_and_in_memory_ones_at_close(tmp_path) -> None:
    part = write_part(tmp_path / "part", ["a"])
    store = CollectionStore(HnswParams(), upload_limits=UploadLimits(max_bytes=1 << 20, ttl_s=60))

    def upload(version: str):
        with store.begin_upload("c", version, (part / "manifest.json").read_bytes()) as staged:
            for name in ("index.bin", "items.json"):
                staged.write(name, 0, (part / name).read_bytes())
            return store.finish_upload(staged)

    first = upload("v1")
    root = store.bundles._uploads
    assert root is not None and (root / first.upload_id).is_dir()
    old = time.time() - 120
    for path in [root / first.upload_id, *(root / first.upload_id).iterdir()]:
        os.utime(path, (old, old))
    second = upload("v2")
    assert sorted(p.name for p in root.iterdir()) == [second.upload_id]
    with pytest.raises(FailedPrecondition) as caught:
        store.load_bundle("c", "v9", upload_id=second.upload_id)
    assert caught.value.reason == "UPLOAD_MISMATCH"
    with pytest.raises(InvalidArgument) as refused:
        store.begin_upload("c", "v3", b"[]")
    assert refused.value.reason == "BAD_MANIFEST"
    collection, _ = store.load_bundle("c", "v2", upload_id=second.upload_id)
    assert ids(collection) == {"a"} and list(root.iterdir()) == []
    store.close()
    assert not root.exists()


def test_in_memory_pending_versions_merge_at_install(tmp_path) -> None:
    write_part(tmp_path / "bundles" / "v2", ["a", "b", "c"])
    store = CollectionStore(HnswParams(), bundle_root=tmp_path / "bundles")
    store.create("c", "s@1", DIM)
    store.upsert("c", ["x"], BASIS[:1], [{}])
    _, created = store.begin_version("c", "v2", "s@2", DIM)
    assert created and store.begin_version("c", "v2", "s@2", DIM)[1] is False
    store.upsert("c", ["new"], BASIS[1:2], [{}], space_id="s@2")
    store.upsert("c", ["b"], BASIS[1:2], [{}], space_id="s@2")
    store.delete_items("c", ["b"])  # upserted then deleted: a tombstone, not an item
    store.upsert("c", ["c"], BASIS[2:3], [{}], space_id="s@2")
    store.upsert("c", ["c"], BASIS[3:4], [{"v": 2}], space_id="s@2")  # the last write wins
    assert store.delete_items("c", ["x", "zz"]) == 1
    collection, _ = store.load_bundle("c", "v2", path="v2")
    assert ids(collection) == {"a", "c", "new"}
    item = collection.get(["c"])[0]
    assert item.metadata == {"v": 2} and np.allclose(item.vector, BASIS[3], atol=1e-6)
    assert ids(store.get("c")) == set()  # live lost x, never had the space@2 writes
    store.close()
