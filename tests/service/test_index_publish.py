"""The shard side of a release: parts uploaded over the wire and staged, loaded by
upload_id (idempotently), pending versions that take the writes made while a bundle is
built and are merged into it at install, writes to every version of a space guarded by a
versions fingerprint, and DeleteVersion. Real servers on port 0, durable, restarted on the
same data directory."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

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
FILES = ("index.bin", "items.json")


def vec(values: np.ndarray) -> types_pb2.Vector:
    return types_pb2.Vector(data=np.asarray(values, "<f4").tobytes(), dim=DIM)


def write_part(directory: Path, space_id: str, ids: list[str]) -> Path:
    """A bundle part as `contentembed build` writes it: item i at basis vector i."""
    collection = HnswCollection("products", space_id, DIM, HnswParams())
    collection.upsert(ids, BASIS[: len(ids)], [{"from": "bundle"}] * len(ids))
    collection.write_snapshot(directory)
    return directory


def messages(part: Path, version: str = "v2", chunk: int = 512, manifest: bytes | None = None):
    """The messages of one upload: header, then every file in order, in chunks."""
    header = pb.UploadHeader(collection="products", version=version,
                             manifest=(part / "manifest.json").read_bytes() if manifest is None else manifest)
    out = [pb.UploadBundleRequest(header=header)]
    for name in FILES:
        data = (part / name).read_bytes()
        for offset in range(0, len(data), chunk):
            out.append(pb.UploadBundleRequest(
                chunk=pb.FileChunk(file=name, offset=offset, data=data[offset : offset + chunk])))
    return out


def refused(call, *args, code: grpc.StatusCode, reason: str | None = None) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(*args)
    assert caught.value.code() == code, caught.value.details()
    if reason is not None:
        assert error_reason(caught.value) == reason, caught.value.details()
    return caught.value


def info(stub) -> pb.Collection:
    return stub.GetCollection(pb.GetCollectionRequest(name="products")).collection


def ids_of(stub, version: str = "") -> set[str]:
    """Every id of a version, by an exact search wide enough to return them all."""
    response = stub.Search(pb.SearchRequest(collection="products", query=vec(np.ones(DIM)),
                                            top_k=100, exact=True, version=version))
    return {hit.id for hit in response.hits}


def top(stub, query: np.ndarray, version: str = "") -> tuple[str, float]:
    hit = stub.Search(pb.SearchRequest(collection="products", query=vec(query), top_k=1,
                                       exact=True, version=version)).hits[0]
    return hit.id, hit.score


def upsert(stub, items: dict[str, np.ndarray], space_id: str = "", fingerprint: str = ""):
    return stub.Upsert(pb.UpsertRequest(
        collection="products", space_id=space_id, versions_fingerprint=fingerprint,
        items=[pb.Item(id=i, vector=vec(v)) for i, v in items.items()]))


@pytest.fixture
def dirs(tmp_path):
    bundles = tmp_path / "bundles"
    write_part(bundles / "v2", "space@2", [f"new-{i}" for i in range(DIM)])
    write_part(bundles / "other", "space@2", ["o-1", "o-2"])
    return tmp_path / "data", bundles


def settings(dirs, **overrides) -> IndexSettings:
    data, bundles = dirs
    return settings_for_test(IndexSettings, data_dir=data, bundle_root=bundles, **overrides)


def with_live_collection(stub) -> None:
    stub.CreateCollection(pb.CreateCollectionRequest(name="products", space_id="space@1", dim=DIM))
    upsert(stub, {f"old-{i}": BASIS[i] for i in range(DIM)})


def test_upload_then_load_by_upload_id(dirs, channel_to) -> None:
    data, bundles = dirs
    part = bundles / "v2"
    digest = hashlib.sha256((part / "manifest.json").read_bytes()).hexdigest()
    with running_service(IndexService, settings(dirs)) as runtime:
        stub = pb_grpc.IndexServiceStub(channel_to(runtime.address))
        with_live_collection(stub)
        uploaded = stub.UploadBundle(iter(messages(part)))
        assert (uploaded.item_count, uploaded.space_id, uploaded.digest) == (DIM, "space@2", digest)
        assert len(uploaded.upload_id) == 32 and uploaded.shard.shard_count == 1
        # Staged, not visible: no version yet, and the same part gets the same id.
        assert list(info(stub).versions) == ["live"]
        again = stub.UploadBundle(iter(messages(part, chunk=100)))
        assert again.upload_id == uploaded.upload_id
        assert [p.name for p in (data / "uploads").iterdir()] == [uploaded.upload_id]

        loaded = stub.LoadBundle(pb.LoadBundleRequest(collection="products", version="v2",
                                                      upload_id=uploaded.upload_id))
        assert loaded.item_count == DIM and loaded.space_id == "space@2"
        assert list(loaded.collection.versions) == ["live", "v2"]
        assert loaded.collection.version == "live"  # serving untouched
        assert dict(loaded.collection.version_digests) == {"live": "", "v2": digest}
        assert top(stub, BASIS[3], version="v2")[0] == "new-3"
        assert top(stub, BASIS[3])[0] == "old-3"
        assert list((data / "uploads").iterdir()) == []  # installed: staging gone

        # A retried publish: the same part again, by upload_id (staging gone) or path, is OK.
        for request in (pb.LoadBundleRequest(collection="products", version="v2", upload_id=uploaded.upload_id),
                        pb.LoadBundleRequest(collection="products", version="v2", path="v2")):
            same = stub.LoadBundle(request)
            assert list(same.collection.versions) == ["live", "v2"] and same.item_count == DIM
        refused(stub.LoadBundle, pb.LoadBundleRequest(collection="products", version="v2", path="other"),
                code=grpc.StatusCode.ALREADY_EXISTS)
        other = stub.UploadBundle(iter(messages(bundles / "other")))
        refused(stub.LoadBundle, pb.LoadBundleRequest(collection="products", version="v2", upload_id=other.upload_id),
                code=grpc.StatusCode.ALREADY_EXISTS)
        # Staged for v2: not loadable as another version.
        refused(stub.LoadBundle, pb.LoadBundleRequest(collection="products", version="v3", upload_id=other.upload_id),
                code=grpc.StatusCode.FAILED_PRECONDITION, reason="UPLOAD_MISMATCH")
        refused(stub.LoadBundle, pb.LoadBundleRequest(collection="products", version="v3", upload_id="0" * 32),
                code=grpc.StatusCode.NOT_FOUND, reason="UPLOAD_NOT_FOUND")
        for request in (pb.LoadBundleRequest(collection="products", version="v3"),
                        pb.LoadBundleRequest(collection="products", version="v3", path="v2", upload_id=other.upload_id),
                        pb.LoadBundleRequest(collection="products", version="v3", upload_id="../../x")):
            refused(stub.LoadBundle, request, code=grpc.StatusCode.INVALID_ARGUMENT)
        assert list(info(stub).versions) == ["live", "v2"]

    with running_service(IndexService, settings(dirs)) as runtime:
        stub = pb_grpc.IndexServiceStub(channel_to(runtime.address))
        restored = info(stub)
        assert dict(restored.version_digests) == {"live": "", "v2": digest}
        assert top(stub, BASIS[5], version="v2")[0] == "new-5"
        assert not (data / "uploads").exists()  # staged uploads do not survive a restart


def flipped(part: Path) -> list:
    out = messages(part)
    chunk = out[3].chunk
    data = bytearray(chunk.data)
    data[7] ^= 0xFF
    out[3] = pb.UploadBundleRequest(chunk=pb.FileChunk(file=chunk.file, offset=chunk.offset, data=bytes(data)))
    return out


def renamed(part: Path) -> list:
    out = messages(part)
    out[1].chunk.file = "evil.bin"
    return out


def reordered(part: Path) -> list:
    out = messages(part)
    out[1], out[2] = out[2], out[1]
    return out


def overlong(part: Path) -> list:
    out = messages(part)
    size = len((part / "items.json").read_bytes())
    return out + [pb.UploadBundleRequest(chunk=pb.FileChunk(file="items.json", offset=size, data=b"x"))]


def without_files(part: Path) -> list:
    manifest = json.loads((part / "manifest.json").read_bytes())
    del manifest["files"]["items.json"]
    return messages(part, manifest=json.dumps(manifest).encode())


def huge(part: Path) -> list:
    manifest = json.loads((part / "manifest.json").read_bytes())
    manifest["files"]["index.bin"]["bytes"] = 1 << 40
    return messages(part, manifest=json.dumps(manifest).encode())[:1]


REFUSED_UPLOADS = {
    "flipped byte": (flipped, grpc.StatusCode.FAILED_PRECONDITION, "BUNDLE_CORRUPT"),
    "unknown file": (renamed, grpc.StatusCode.INVALID_ARGUMENT, "UNKNOWN_FILE"),
    "out of order": (reordered, grpc.StatusCode.INVALID_ARGUMENT, "CHUNK_OUT_OF_ORDER"),
    "beyond size": (overlong, grpc.StatusCode.INVALID_ARGUMENT, "CHUNK_BEYOND_SIZE"),
    "chunk over 4 MiB": (lambda part: messages(part)[:1] + [pb.UploadBundleRequest(chunk=pb.FileChunk(
        file="index.bin", data=b"x" * ((4 << 20) + 1)))], grpc.StatusCode.INVALID_ARGUMENT, "CHUNK_TOO_LARGE"),
    "no header": (lambda part: messages(part)[1:], grpc.StatusCode.INVALID_ARGUMENT, "UPLOAD_HEADER_MISSING"),
    "two headers": (lambda part: messages(part)[:1] * 2, grpc.StatusCode.INVALID_ARGUMENT, "UPLOAD_HEADER_REPEATED"),
    "ends early": (lambda part: messages(part)[:-1], grpc.StatusCode.FAILED_PRECONDITION, "UPLOAD_INCOMPLETE"),
    "header only": (lambda part: messages(part)[:1], grpc.StatusCode.FAILED_PRECONDITION, "UPLOAD_INCOMPLETE"),
    "manifest lacks a file": (without_files, grpc.StatusCode.INVALID_ARGUMENT, "BAD_MANIFEST"),
    # 10,000 nested objects: a RecursionError that answered INTERNAL.
    "manifest nested 10,000 deep": (lambda part: messages(part, manifest=b'{"a":' * 10_000 + b"1"
                                                          + b"}" * 10_000)[:1],
                                    grpc.StatusCode.INVALID_ARGUMENT, "BAD_MANIFEST"),
    "bigger than the bound": (huge, grpc.StatusCode.INVALID_ARGUMENT, "UPLOAD_TOO_LARGE"),
    "version live": (lambda part: messages(part, version="live"), grpc.StatusCode.INVALID_ARGUMENT, "BAD_VERSION"),
}


def test_refused_uploads_leave_nothing_behind(dirs, channel_to) -> None:
    data, bundles = dirs
    with running_service(IndexService, settings(dirs, max_upload_bytes=1 << 30)) as runtime:
        stub = pb_grpc.IndexServiceStub(channel_to(runtime.address))
        with_live_collection(stub)
        before = info(stub)
        for case, (build, code, reason) in REFUSED_UPLOADS.items():
            error = refused(stub.UploadBundle, iter(build(bundles / "v2")), code=code, reason=reason)
            assert error.details(), case
            leftovers = list((data / "uploads").iterdir()) if (data / "uploads").exists() else []
            assert leftovers == [], case
            assert info(stub) == before, case
        assert ids_of(stub) == {f"old-{i}" for i in range(DIM)}


def test_pending_version_takes_writes_and_the_install_merges_them(dirs, channel_to) -> None:
    data, bundles = dirs
    online = (BASIS[3] + BASIS[4]) / np.sqrt(2)  # new-3 rewritten while the bundle was built
    with running_service(IndexService, settings(dirs)) as runtime:
        stub = pb_grpc.IndexServiceStub(channel_to(runtime.address))
        with_live_collection(stub)
        fingerprint = info(stub).versions_fingerprint
        begun = stub.BeginVersion(pb.BeginVersionRequest(collection="products", version="v2",
                                                         space_id="space@2", dim=DIM))
        assert begun.created and list(begun.collection.pending_versions) == ["v2"]
        assert list(begun.collection.versions) == ["live"]
        assert dict(begun.collection.version_spaces) == {"live": "space@1", "v2": "space@2"}
        assert begun.collection.versions_fingerprint != fingerprint
        fingerprint = begun.collection.versions_fingerprint
        again = stub.BeginVersion(pb.BeginVersionRequest(collection="products", version="v2",
                                                         space_id="space@2", dim=DIM))
        assert not again.created and again.collection.versions_fingerprint == fingerprint
        refused(stub.BeginVersion, pb.BeginVersionRequest(collection="products", version="v2", space_id="space@3", dim=DIM),
                code=grpc.StatusCode.FAILED_PRECONDITION, reason="SPACE_MISMATCH")
        refused(stub.BeginVersion, pb.BeginVersionRequest(collection="nope", version="v2", space_id="space@2", dim=DIM),
                code=grpc.StatusCode.NOT_FOUND)
        refused(stub.Search, pb.SearchRequest(collection="products", query=vec(BASIS[0]), top_k=1, version="v2"),
                code=grpc.StatusCode.FAILED_PRECONDITION, reason="VERSION_PENDING")
        refused(stub.ActivateVersion, pb.ActivateVersionRequest(collection="products", version="v2"),
                code=grpc.StatusCode.FAILED_PRECONDITION, reason="VERSION_PENDING")

        # Writes of space@2 go to the pending version only; of space@1 (default) to live.
        assert upsert(stub, {"new-3": online, "fresh": BASIS[0] + BASIS[1], "gone": BASIS[2]},
                      space_id="space@2", fingerprint=fingerprint).upserted_count == 3
        assert upsert(stub, {"old-9": BASIS[6] + BASIS[7]}).upserted_count == 1
        deleted = stub.DeleteItems(pb.DeleteItemsRequest(collection="products", ids=["gone", "new-6", "old-1"]))
        assert deleted.deleted_count == 1  # only old-1 existed in the serving version
        assert ids_of(stub) == {f"old-{i}" for i in range(DIM)} - {"old-1"} | {"old-9"}
        refused(upsert, stub, {"x": BASIS[0]}, "space@9", code=grpc.StatusCode.FAILED_PRECONDITION,
                reason="SPACE_MISMATCH")
        refused(upsert, stub, {"stale": BASIS[0]}, "", "0123456789abcdef", code=grpc.StatusCode.ABORTED,
                reason="VERSIONS_CHANGED")
        assert "stale" not in ids_of(stub)

    with running_service(IndexService, settings(dirs)) as runtime:  # the pending version is durable
        assert runtime.load_error is None, runtime.load_error
        stub = pb_grpc.IndexServiceStub(channel_to(runtime.address))
        restored = info(stub)
        assert list(restored.pending_versions) == ["v2"] and list(restored.versions) == ["live"]
        assert restored.versions_fingerprint == fingerprint
        uploaded = stub.UploadBundle(iter(messages(bundles / "v2")))
        installed = stub.LoadBundle(pb.LoadBundleRequest(collection="products", version="v2",
                                                         upload_id=uploaded.upload_id))
        assert list(installed.collection.versions) == ["live", "v2"]
        assert list(installed.collection.pending_versions) == []
        assert installed.collection.version_digests["v2"] == uploaded.digest
        assert installed.collection.versions_fingerprint != fingerprint
        expected = {f"new-{i}" for i in range(DIM)} - {"new-6"} | {"fresh"}
        assert ids_of(stub, "v2") == expected
        hit, score = top(stub, online, version="v2")
        assert hit == "new-3" and score == pytest.approx(1.0, abs=1e-5)  # the online write won
        # Installed versions take writes like any loaded version.
        upsert(stub, {"later": BASIS[2] + BASIS[3]}, space_id="space@2")
        stub.ActivateVersion(pb.ActivateVersionRequest(collection="products", version="v2"))

    with running_service(IndexService, settings(dirs)) as runtime:
        assert runtime.load_error is None, runtime.load_error
        stub = pb_grpc.IndexServiceStub(channel_to(runtime.address))
        restored = info(stub)
        assert (restored.version, list(restored.versions), list(restored.pending_versions)) == ("v2", ["live", "v2"], [])
        assert restored.version_digests["v2"] == uploaded.digest
        assert ids_of(stub) == expected | {"later"}
        assert top(stub, online)[0] == "new-3"
        assert not (data / "collections" / "products" / "versions" / "v2" / "PENDING").exists()


def test_install_into_pending_by_path_refuses_another_space(dirs, channel_to) -> None:
    data, bundles = dirs
    with running_service(IndexService, settings(dirs)) as runtime:
        stub = pb_grpc.IndexServiceStub(channel_to(runtime.address))
        with_live_collection(stub)
        stub.BeginVersion(pb.BeginVersionRequest(collection="products", version="v3", space_id="space@3", dim=DIM))
        upsert(stub, {"kept": BASIS[1]}, space_id="space@3")
        refused(stub.LoadBundle, pb.LoadBundleRequest(collection="products", version="v3", path="v2"),
                code=grpc.StatusCode.FAILED_PRECONDITION, reason="SPACE_MISMATCH")
        assert list(info(stub).pending_versions) == ["v3"]
        # Another loaded version in the same space as the pending one gets its writes too.
        stub.LoadBundle(pb.LoadBundleRequest(collection="products", version="v2", path="v2"))
        stub.BeginVersion(pb.BeginVersionRequest(collection="products", version="v4", space_id="space@2", dim=DIM))
        upsert(stub, {"both": BASIS[4]}, space_id="space@2")
        assert "both" in ids_of(stub, "v2")
        stub.LoadBundle(pb.LoadBundleRequest(collection="products", version="v4", path="other"))
        assert ids_of(stub, "v4") == {"o-1", "o-2", "both"}


def test_delete_version_rules(dirs, channel_to) -> None:
    data, bundles = dirs
    versions_dir = data / "collections" / "products" / "versions"
    with running_service(IndexService, settings(dirs)) as runtime:
        stub = pb_grpc.IndexServiceStub(channel_to(runtime.address))
        with_live_collection(stub)
        stub.LoadBundle(pb.LoadBundleRequest(collection="products", version="v2", path="v2"))
        stub.ActivateVersion(pb.ActivateVersionRequest(collection="products", version="v2"))
        stub.BeginVersion(pb.BeginVersionRequest(collection="products", version="v3", space_id="space@2", dim=DIM))
        fingerprint = info(stub).versions_fingerprint

        refused(stub.DeleteVersion, pb.DeleteVersionRequest(collection="products", version="v2"),
                code=grpc.StatusCode.FAILED_PRECONDITION, reason="VERSION_SERVING")
        refused(stub.DeleteVersion, pb.DeleteVersionRequest(collection="products", version="v9"),
                code=grpc.StatusCode.NOT_FOUND, reason="VERSION_NOT_FOUND")
        refused(stub.DeleteVersion, pb.DeleteVersionRequest(collection="nope", version="v2"),
                code=grpc.StatusCode.NOT_FOUND, reason="COLLECTION_NOT_FOUND")

        dropped = stub.DeleteVersion(pb.DeleteVersionRequest(collection="products", version="live")).collection
        assert (dropped.version, list(dropped.versions)) == ("v2", ["v2"])
        assert dropped.versions_fingerprint != fingerprint
        assert json.loads((data / "collections" / "products" / "alias.json").read_text())["previous"] is None
        refused(stub.RollbackVersion, pb.RollbackVersionRequest(collection="products"),
                code=grpc.StatusCode.FAILED_PRECONDITION, reason="NO_PREVIOUS_VERSION")
        dropped = stub.DeleteVersion(pb.DeleteVersionRequest(collection="products", version="v3")).collection
        assert list(dropped.pending_versions) == [] and "v3" not in dropped.version_spaces
        assert sorted(p.name for p in versions_dir.iterdir()) == ["v2"]
        # Writes stop reaching a dropped version; the fingerprint of the old view is stale.
        refused(upsert, stub, {"x": BASIS[0]}, "", fingerprint, code=grpc.StatusCode.ABORTED,
                reason="VERSIONS_CHANGED")

    with running_service(IndexService, settings(dirs)) as runtime:
        stub = pb_grpc.IndexServiceStub(channel_to(runtime.address))
        restored = info(stub)
        assert (restored.version, list(restored.versions), list(restored.pending_versions)) == ("v2", ["v2"], [])
