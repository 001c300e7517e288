"""Shipping a bundle to the index shards: every part to its shard over gRPC, then installed.

Two phases, so that a failure leaves nothing half-published:

1. **Upload** every part (client-streaming ``UploadBundle``, in parallel). Each shard stages
   its part and verifies every file against the part's manifest; nothing is visible yet.
   A failed upload stops here and no shard changed.
2. **Install** with ``LoadBundle(upload_id)`` on every shard. Into a new collection the
   version serves at once; if a shard fails, the collection is deleted again from the
   shards that created it. Into an existing collection the version is loaded without
   serving; if a shard fails, the others keep it loaded but nothing serves it, and
   publishing again completes it (a shard that has the same digest answers OK).

A bundle on a volume every shard mounts (``--mounted``) skips phase 1: each shard loads its
part from below its ``--bundle-root``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from contentembed.client import ApiError
from contentembed.client.client import channel_from_env
from contentembed.index.v1 import index_service_pb2 as index_pb
from contentembed.index.v1 import index_service_pb2_grpc as index_grpc
from contentembed.services.common.digests import sha256_file

BUNDLE_FORMAT = "contentembed-bundle/v1"
PART_FILES = ("index.bin", "items.json")
CHUNK_BYTES = 1 << 20
UPLOAD_TIMEOUT_S = 3600.0
CALL_TIMEOUT_S = 120.0


class BundleError(Exception):
    """The bundle directory is not a complete, intact bundle."""


class PublishError(Exception):
    """Publishing stopped; the message says what each shard holds now."""


@dataclass(frozen=True)
class BundlePart:
    shard: int
    directory: Path
    manifest: bytes  # the part's manifest.json, verbatim
    items: int

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.manifest).hexdigest()

    @property
    def size(self) -> int:
        files = json.loads(self.manifest)["files"]
        return sum(int(files[name]["bytes"]) for name in PART_FILES)


@dataclass(frozen=True)
class Bundle:
    directory: Path
    manifest: dict[str, Any]
    digest: str
    parts: list[BundlePart]

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def space_id(self) -> str:
        return str(self.manifest["space"]["space_id"])


def read_bundle(directory: Path) -> Bundle:
    """The bundle, after every file its manifest lists matched its sha256."""
    try:
        raw = (directory / "manifest.json").read_bytes()
        manifest = json.loads(raw)
    except (OSError, ValueError) as error:
        raise BundleError(f"{directory}: no readable manifest.json ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{directory}: manifest.json is not a {BUNDLE_FORMAT} manifest")
    try:
        files: dict[str, str] = manifest["files"]
        parts_listed = manifest["parts"]
        shard_count = int(manifest["shard_count"])
        manifest["space"]["space_id"], manifest["version"]  # noqa: B018 - presence check
    except (KeyError, TypeError, ValueError) as error:
        raise BundleError(f"{directory}: manifest.json lacks {error}") from None
    for name, expected in sorted(files.items()):
        path = directory / name
        if ".." in Path(name).parts or not path.is_file():
            raise BundleError(f"{directory}: {name} is missing")
        if sha256_file(path) != expected:
            raise BundleError(f"{directory}: {name} does not match its sha256 in manifest.json")
    parts = []
    for listed in parts_listed:
        part_dir = directory / listed["dir"]
        part_manifest = (part_dir / "manifest.json").read_bytes()
        part = BundlePart(int(listed["shard"]), part_dir, part_manifest, int(listed["items"]))
        if part.digest != listed["manifest_sha256"]:
            raise BundleError(f"{part_dir}: manifest.json does not match the bundle manifest")
        parts.append(part)
    if sorted(p.shard for p in parts) != list(range(shard_count)):
        raise BundleError(f"{directory}: parts do not cover shards 0..{shard_count - 1}")
    return Bundle(directory, manifest, hashlib.sha256(raw).hexdigest(), sorted(parts, key=lambda p: p.shard))


@dataclass(frozen=True)
class ShardPublished:
    shard: int
    address: str
    items: int
    digest: str


def upload_messages(
    collection: str, version: str, part: BundlePart, progress: Callable[[int], None]
) -> Iterator[index_pb.UploadBundleRequest]:
    yield index_pb.UploadBundleRequest(
        header=index_pb.UploadHeader(collection=collection, version=version, manifest=part.manifest)
    )
    for name in PART_FILES:
        offset = 0
        with (part.directory / name).open("rb") as handle:
            while chunk := handle.read(CHUNK_BYTES):
                yield index_pb.UploadBundleRequest(
                    chunk=index_pb.FileChunk(file=name, offset=offset, data=chunk)
                )
                offset += len(chunk)
                progress(len(chunk))


def _failure(shard: int, address: str, error: Exception) -> str:
    if isinstance(error, grpc.RpcError):
        error = ApiError.from_rpc_error(error)
    return f"shard {shard} ({address}): {error}"


class Publisher:
    """Publishes one bundle to the shards at ``addresses`` (index = shard number)."""

    def __init__(self, addresses: Sequence[str]) -> None:
        self.addresses = list(addresses)
        self._channels = [channel_from_env(address) for address in self.addresses]
        self._stubs = [index_grpc.IndexServiceStub(channel) for channel, _ in self._channels]

    def close(self) -> None:
        for channel, _ in self._channels:
            channel.close()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _metadata(self, shard: int) -> tuple[tuple[str, str], ...]:
        return self._channels[shard][1]

    def _on_every_shard(self, work: Callable[[int], Any]) -> list[Any | Exception]:
        with ThreadPoolExecutor(max_workers=max(1, len(self.addresses))) as pool:
            futures = [pool.submit(work, shard) for shard in range(len(self.addresses))]
        outcomes: list[Any | Exception] = []
        for future in futures:
            try:
                outcomes.append(future.result())
            except (grpc.RpcError, PublishError) as error:
                outcomes.append(error)
        return outcomes

    def collection_exists(self, collection: str) -> bool:
        try:
            self._stubs[0].GetCollection(
                index_pb.GetCollectionRequest(name=collection),
                timeout=CALL_TIMEOUT_S, metadata=self._metadata(0),
            )
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:  # type: ignore[attr-defined]
                return False
            raise PublishError(_failure(0, self.addresses[0], error)) from None
        return True

    def upload(
        self, bundle: Bundle, collection: str, progress: Callable[[int], None]
    ) -> list[str]:
        """Phase 1: every part staged and verified on its shard; returns the upload ids."""

        def send(shard: int) -> str:
            part = bundle.parts[shard]
            response = self._stubs[shard].UploadBundle(
                upload_messages(collection, bundle.version, part, progress),
                timeout=UPLOAD_TIMEOUT_S, metadata=self._metadata(shard),
            )
            if response.digest != part.digest:
                raise PublishError(
                    f"shard {shard} staged a part with digest {response.digest}, "
                    f"expected {part.digest}"
                )
            return response.upload_id

        outcomes = self._on_every_shard(send)
        failures = [
            _failure(shard, self.addresses[shard], outcome)
            for shard, outcome in enumerate(outcomes)
            if isinstance(outcome, Exception)
        ]
        if failures:
            raise PublishError(
                "upload failed, no shard changed (staged parts expire): " + "; ".join(failures)
            )
        return [str(upload_id) for upload_id in outcomes]

    def install(
        self, bundle: Bundle, collection: str, new_collection: bool,
        upload_ids: Sequence[str] | None = None, mounted: str | None = None,
    ) -> list[ShardPublished]:
        """Phase 2: LoadBundle on every shard, undone for a new collection if one fails."""

        def load(shard: int) -> ShardPublished:
            part = bundle.parts[shard]
            request = index_pb.LoadBundleRequest(collection=collection, version=bundle.version)
            if upload_ids is not None:
                request.upload_id = upload_ids[shard]
            else:
                assert mounted is not None
                request.path = f"{mounted.rstrip('/')}/{part.directory.name}"
            response = self._stubs[shard].LoadBundle(
                request, timeout=UPLOAD_TIMEOUT_S, metadata=self._metadata(shard)
            )
            return ShardPublished(shard, self.addresses[shard], int(response.item_count), part.digest)

        outcomes = self._on_every_shard(load)
        failures = [
            _failure(shard, self.addresses[shard], outcome)
            for shard, outcome in enumerate(outcomes)
            if isinstance(outcome, Exception)
        ]
        if not failures:
            return outcomes  # type: ignore[return-value]
        if new_collection:
            undone = [s for s, o in enumerate(outcomes) if not isinstance(o, Exception)]
            for shard in undone:
                self._stubs[shard].DeleteCollection(
                    index_pb.DeleteCollectionRequest(name=collection),
                    timeout=CALL_TIMEOUT_S, metadata=self._metadata(shard),
                )
            raise PublishError(
                f"install failed, collection {collection!r} was removed again from shards "
                f"{undone or 'none'}: " + "; ".join(failures)
            )
        loaded = [s for s, o in enumerate(outcomes) if not isinstance(o, Exception)]
        raise PublishError(
            f"install failed on {len(failures)} shard(s); version {bundle.version} is loaded "
            f"but not serving on shards {loaded or 'none'}, nothing changed what serves; "
            f"publish again to complete it: " + "; ".join(failures)
        )
