"""Bundles on a real index server: verified load, alias flips under load, rollback,
confinement to the bundle root, and all of it surviving a restart."""

from __future__ import annotations

import threading

import grpc
import numpy as np
import pytest

from contentembed.common.v1 import types_pb2
from contentembed.index.v1 import index_service_pb2 as pb
from contentembed.index.v1 import index_service_pb2_grpc as pb_grpc
from contentembed.services.index.collection import HnswCollection
from contentembed.services.index.dense import HnswParams
from contentembed.services.index.service import IndexService, IndexSettings
from tests.conftest import error_reason, running_service, settings_for_test

DIM = 8
BASIS = np.eye(DIM, dtype=np.float32)


def vec(values: np.ndarray) -> types_pb2.Vector:
    return types_pb2.Vector(data=np.asarray(values, "<f4").tobytes(), dim=DIM)


def write_bundle(directory, space_id: str, ids: list[str]) -> None:
    """What the offline batch job writes: a verified snapshot with model details."""
    collection = HnswCollection("products", space_id, DIM, HnswParams())
    collection.upsert(ids, BASIS[: len(ids)], [{"from": "bundle"}] * len(ids))
    collection.write_snapshot(directory, {"model": {"id": "m2", "weights_sha256": "ab" * 32}})


def top_id(stub, query: np.ndarray, version: str = "") -> tuple[str, str]:
    response = stub.Search(pb.SearchRequest(collection="products", query=vec(query), top_k=1, version=version))
    return response.hits[0].id, response.version


def refused_load(stub, path: str, version: str = "v9", collection: str = "products") -> grpc.RpcError:
    """LoadBundle must refuse this bundle with FAILED_PRECONDITION; returns the error."""
    with pytest.raises(grpc.RpcError) as caught:
        stub.LoadBundle(pb.LoadBundleRequest(collection=collection, version=version, path=path))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION, caught.value.details()
    return caught.value


def assert_only_v2_serves(stub) -> None:
    info = stub.GetCollection(pb.GetCollectionRequest(name="products")).collection
    assert (info.version, list(info.versions)) == ("v2", ["v2"])


@pytest.fixture
def dirs(tmp_path):
    bundles = tmp_path / "bundles"
    bundles.mkdir()
    write_bundle(bundles / "v2", "space@2", [f"new-{i}" for i in range(DIM)])
    return tmp_path / "data", bundles


def settings(dirs) -> IndexSettings:
    data, bundles = dirs
    return settings_for_test(IndexSettings, data_dir=data, bundle_root=bundles)


def test_load_activate_rollback_while_searching_and_after_restart(dirs, channel_to) -> None:
    with running_service(IndexService, settings(dirs)) as runtime:
        stub = pb_grpc.IndexServiceStub(channel_to(runtime.address))
        stub.CreateCollection(pb.CreateCollectionRequest(name="products", space_id="space@1", dim=DIM))
        stub.Upsert(pb.UpsertRequest(collection="products", items=[
            pb.Item(id=f"old-{i}", vector=vec(BASIS[i])) for i in range(DIM)]))

        loaded = stub.LoadBundle(pb.LoadBundleRequest(collection="products", version="v2", path="v2"))
        assert loaded.item_count == DIM and loaded.space_id == "space@2"
        assert list(loaded.collection.versions) == ["live", "v2"] and loaded.collection.version == "live"
        assert top_id(stub, BASIS[3]) == ("old-3", "live")
        assert top_id(stub, BASIS[3], version="v2") == ("new-3", "v2")

        errors: list[Exception] = []
        seen: set[str] = set()
        stop = threading.Event()

        def search_forever() -> None:
            while not stop.is_set():
                try:
                    hit, version = top_id(stub, BASIS[5])
                    assert hit == {"live": "old-5", "v2": "new-5"}[version]
                    seen.add(version)
                except Exception as error:  # noqa: BLE001
                    errors.append(error)

        searchers = [threading.Thread(target=search_forever) for _ in range(4)]
        for thread in searchers:
            thread.start()
        activated = stub.ActivateVersion(pb.ActivateVersionRequest(collection="products", version="v2"))
        assert activated.previous_version == "live" and activated.collection.space_id == "space@2"
        rolled = stub.RollbackVersion(pb.RollbackVersionRequest(collection="products"))
        assert rolled.rolled_back_version == "v2" and rolled.collection.version == "live"
        stub.ActivateVersion(pb.ActivateVersionRequest(collection="products", version="v2"))
        stop.set()
        for thread in searchers:
            thread.join()
        assert errors == [] and seen == {"live", "v2"}

        # Online writes after activation land in the active version, durably.
        stub.Upsert(pb.UpsertRequest(collection="products", items=[
            pb.Item(id="new-extra", vector=vec(BASIS[0] + BASIS[1]))]))

    with running_service(IndexService, settings(dirs)) as runtime:
        assert runtime.load_error is None, runtime.load_error
        stub = pb_grpc.IndexServiceStub(channel_to(runtime.address))
        info = stub.GetCollection(pb.GetCollectionRequest(name="products")).collection
        assert (info.version, list(info.versions), info.item_count) == ("v2", ["live", "v2"], DIM + 1)
        assert top_id(stub, BASIS[0] + BASIS[1]) == ("new-extra", "v2")
        assert top_id(stub, BASIS[2], version="live") == ("old-2", "live")


def test_bundle_with_a_wrong_digest_is_refused_and_the_old_version_keeps_serving(dirs, channel_to) -> None:
    data, bundles = dirs
    write_bundle(bundles / "v3", "space@3", ["x", "y"])
    items = bundles / "v3" / "items.json"
    items.write_bytes(items.read_bytes().replace(b'"x"', b'"z"'))  # tampered after the manifest
    with running_service(IndexService, settings(dirs)) as runtime:
        stub = pb_grpc.IndexServiceStub(channel_to(runtime.address))
        stub.LoadBundle(pb.LoadBundleRequest(collection="products", version="v2", path="v2"))
        error = refused_load(stub, "v3", version="v3")
        assert error_reason(error) == "BUNDLE_CORRUPT" and "sha256" in error.details()
        assert_only_v2_serves(stub)
        assert top_id(stub, BASIS[4]) == ("new-4", "v2")


def test_bundle_paths_are_confined_to_the_root(dirs, channel_to, tmp_path) -> None:
    data, bundles = dirs
    write_bundle(tmp_path / "outside", "space@9", ["evil"])
    (bundles / "sneaky").symlink_to(tmp_path / "outside")
    cases = [
        ("../outside", grpc.StatusCode.INVALID_ARGUMENT),
        (str(tmp_path / "outside"), grpc.StatusCode.INVALID_ARGUMENT),
        ("sneaky", grpc.StatusCode.INVALID_ARGUMENT),
        ("missing", grpc.StatusCode.NOT_FOUND),
    ]
    with running_service(IndexService, settings(dirs)) as runtime:
        stub = pb_grpc.IndexServiceStub(channel_to(runtime.address))
        for path, code in cases:
            with pytest.raises(grpc.RpcError) as caught:
                stub.LoadBundle(pb.LoadBundleRequest(collection="products", version="v9", path=path))
            assert caught.value.code() == code, path
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetCollection(pb.GetCollectionRequest(name="products"))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_version_errors(dirs, channel_to) -> None:
    data, bundles = dirs
    write_bundle(bundles / "other", "space@2", ["o-1", "o-2"])
    with running_service(IndexService, settings(dirs)) as runtime:
        stub = pb_grpc.IndexServiceStub(channel_to(runtime.address))
        stub.LoadBundle(pb.LoadBundleRequest(collection="products", version="v2", path="v2"))
        # The same part again is a no-op (a retried publish); another part is a conflict.
        again = stub.LoadBundle(pb.LoadBundleRequest(collection="products", version="v2", path="v2"))
        assert list(again.collection.versions) == ["v2"] and again.item_count == DIM
        cases = [
            (stub.LoadBundle, pb.LoadBundleRequest(collection="products", version="v2", path="other"), grpc.StatusCode.ALREADY_EXISTS),
            (stub.LoadBundle, pb.LoadBundleRequest(collection="products", version="bad/name", path="v2"), grpc.StatusCode.INVALID_ARGUMENT),
            (stub.ActivateVersion, pb.ActivateVersionRequest(collection="products", version="v7"), grpc.StatusCode.NOT_FOUND),
            (stub.RollbackVersion, pb.RollbackVersionRequest(collection="products"), grpc.StatusCode.FAILED_PRECONDITION),
            (stub.Search, pb.SearchRequest(collection="products", query=vec(BASIS[0]), top_k=1, version="v7"), grpc.StatusCode.NOT_FOUND),
        ]
        for method, request, code in cases:
            with pytest.raises(grpc.RpcError) as caught:
                method(request)
            assert caught.value.code() == code, (request, caught.value.details())


def test_bundles_lying_about_their_contents_are_refused(dirs, channel_to) -> None:
    import json

    data, bundles = dirs
    write_bundle(bundles / "wrong-dim", "space@4", ["a"])
    manifest_path = bundles / "wrong-dim" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["dim"] = 64  # index.bin holds 8-d vectors: hnswlib would read past them
    manifest_path.write_text(json.dumps(manifest))
    write_bundle(bundles / "linked", "space@5", ["b"])
    (bundles / "linked" / "items.json").rename(bundles / "linked" / "real-items.json")
    (bundles / "linked" / "items.json").symlink_to(bundles / "linked" / "real-items.json")
    with running_service(IndexService, settings(dirs)) as runtime:
        stub = pb_grpc.IndexServiceStub(channel_to(runtime.address))
        for path, code, reason in [
            ("wrong-dim", grpc.StatusCode.FAILED_PRECONDITION, "BUNDLE_CORRUPT"),
            ("linked", grpc.StatusCode.INVALID_ARGUMENT, "PATH_OUTSIDE_ROOT"),
        ]:
            with pytest.raises(grpc.RpcError) as caught:
                stub.LoadBundle(pb.LoadBundleRequest(collection="products", version="vx", path=path))
            assert (caught.value.code(), error_reason(caught.value)) == (code, reason)


def test_unusable_bundle_paths_get_a_clear_short_error(dirs, channel_to) -> None:
    cases = [
        ("p" * 8000, "BAD_BUNDLE_PATH"),  # longer than a file name may be
        ("d/" * 3000, "BAD_BUNDLE_PATH"),  # longer than a path may be
        ("nul\x00byte", "BAD_BUNDLE_PATH"),
        ("../" * 3000 + "etc", "PATH_OUTSIDE_ROOT"),
    ]
    with running_service(IndexService, settings(dirs)) as runtime:
        stub = pb_grpc.IndexServiceStub(channel_to(runtime.address))
        for path, reason in cases:
            with pytest.raises(grpc.RpcError) as caught:
                stub.LoadBundle(pb.LoadBundleRequest(collection="products", version="v9", path=path))
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()[:200]
            assert error_reason(caught.value) == reason and len(caught.value.details()) < 300


def test_bundle_whose_parts_disagree_is_refused_and_the_old_version_keeps_serving(dirs, channel_to) -> None:
    """Checksums only prove the files are the ones the batch job wrote. This bundle's
    items list is one short of its index (and its manifest count agrees with the list):
    loaded, every search reaching the last vector failed INTERNAL."""
    import json

    from contentembed.services.index.persistence import write_manifest

    data, bundles = dirs
    for version in ("short", "first"):
        directory = bundles / version
        write_bundle(directory, "space@6", [f"s-{i}" for i in range(DIM)])
        items = json.loads((directory / "items.json").read_bytes())
        items["ids"].pop()
        items["next_label"] -= 1
        items["metadata"] = [pair for pair in items["metadata"] if pair[0] < DIM - 1]
        (directory / "items.json").write_text(json.dumps(items))
        manifest = json.loads((directory / "manifest.json").read_bytes())
        manifest["count"] -= 1
        write_manifest(directory, manifest)  # checksums that match the bad files
    with running_service(IndexService, settings(dirs)) as runtime:
        stub = pb_grpc.IndexServiceStub(channel_to(runtime.address))
        stub.LoadBundle(pb.LoadBundleRequest(collection="products", version="v2", path="v2"))
        for collection, path in (("products", "short"), ("fresh", "first")):
            error = refused_load(stub, path, version="v4", collection=collection)
            assert error_reason(error) == "BUNDLE_CORRUPT", error.details()
        assert_only_v2_serves(stub)
        assert top_id(stub, BASIS[DIM - 1]) == (f"new-{DIM - 1}", "v2")
        with pytest.raises(grpc.RpcError) as caught:  # the first version of a new name
            stub.GetCollection(pb.GetCollectionRequest(name="fresh"))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_bundle_metadata_gets_the_bounds_of_upsert(dirs, channel_to) -> None:
    data, bundles = dirs
    built = HnswCollection("products", "space@7", DIM, HnswParams())
    built.upsert(["fat", "thin"], BASIS[:2], [{"blob": "x" * 10_000}, {}])  # written without Upsert
    built.write_snapshot(bundles / "fat")
    with running_service(IndexService, settings(dirs)) as runtime:
        stub = pb_grpc.IndexServiceStub(channel_to(runtime.address))
        stub.LoadBundle(pb.LoadBundleRequest(collection="products", version="v2", path="v2"))
        error = refused_load(stub, "fat", version="v5")
        assert error_reason(error) == "METADATA_TOO_LARGE" and "'fat'" in error.details()
        assert_only_v2_serves(stub)
