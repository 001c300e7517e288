"""The gRPC edge of replication: the servicer a follower answers with, and the client a
primary reaches each follower through (a ``ReplicaPeer``). Conversion only: what is done
with the messages is replication.py's and primary.py's."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import grpc

from contentembed.index.v1 import index_service_pb2 as pb
from contentembed.index.v1 import replication_service_pb2 as rpb
from contentembed.index.v1 import replication_service_pb2_grpc as rpb_grpc
from contentembed.services.common.config import ServiceSettings
from contentembed.services.common.downstream import error_from_rpc, open_channel
from contentembed.services.common.errors import FailedPrecondition, InvalidArgument
from contentembed.services.common.validation import shown
from contentembed.services.index.bundles import MAX_CHUNK_BYTES, Upload, manifest_sizes
from contentembed.services.index.persistence import (
    CorruptData,
    WalRecord,
    atomic_write,
    decode_record,
    encode_record,
)
from contentembed.services.index.primary import PeerUnreachable, Shipment
from contentembed.services.index.replica_group import ReplicaGroup
from contentembed.services.index.replication import (
    AliasSpec,
    CatalogState,
    ReplicaGap,
    StaleTerm,
    VersionSpec,
)
from contentembed.services.index.store import CollectionStore
from contentembed.services.index.wire import (
    candidate_from_pb,
    candidate_to_pb,
    lexical_from_pb,
    lexical_to_pb,
    params_from_pb,
    split_header,
    write_chunks,
)

ROLE_PB = {"primary": rpb.REPLICA_ROLE_PRIMARY, "follower": rpb.REPLICA_ROLE_FOLLOWER}


def version_to_pb(spec: VersionSpec, item_count: int = 0, content_sha256: str = "") -> rpb.ReplicaVersion:
    return rpb.ReplicaVersion(
        collection=spec.collection, version=spec.version, space_id=spec.space_id, dim=spec.dim,
        hnsw=pb.HnswParams(m=spec.params.m, ef_construction=spec.params.ef_construction,
                           ef_search=spec.params.ef_search),
        lexical=lexical_to_pb(spec.lexical), pending=spec.pending,
        bundle_digest=spec.bundle_digest, seq=spec.seq, term=spec.term,
        item_count=item_count, content_sha256=content_sha256,
    )


def version_from_pb(message: rpb.ReplicaVersion, defaults: CollectionStore) -> VersionSpec:
    return VersionSpec(
        message.collection, message.version, message.space_id, message.dim,
        params_from_pb(message.hnsw, defaults.default_params), lexical_from_pb(message.lexical),
        message.pending, message.bundle_digest, message.seq, message.term,
    )


def catalog_to_pb(catalog: CatalogState) -> tuple[list[rpb.ReplicaAlias], list[rpb.ReplicaVersion]]:
    return (
        [rpb.ReplicaAlias(collection=a.collection, active=a.active, previous=a.previous or "",
                          candidate=candidate_to_pb(a.candidate))
         for a in catalog.aliases],
        [version_to_pb(v) for v in catalog.versions],
    )


def catalog_from_pb(stamp: tuple[int, int], aliases: Iterable[rpb.ReplicaAlias],
                    versions: Iterable[rpb.ReplicaVersion], store: CollectionStore) -> CatalogState:
    return CatalogState(
        stamp,
        tuple(AliasSpec(a.collection, a.active, a.previous or None, candidate_from_pb(a.candidate))
              for a in aliases),
        tuple(version_from_pb(v, store) for v in versions),
    )


def decode_shipped(message: rpb.ShippedRecord) -> WalRecord:
    try:
        return decode_record(message.record)
    except CorruptData as error:
        raise InvalidArgument(
            f"shipped record for {shown(message.collection)}/{shown(message.version)}: {error}",
            reason="BAD_RECORD") from None


class ReplicationServicer(rpb_grpc.ReplicationServiceServicer):
    def __init__(self, group: ReplicaGroup) -> None:
        self.group = group
        self.follower = group.follower

    def _state_pb(self, catalog: CatalogState, digests: bool = False) -> rpb.ReplicaState:
        aliases, _ = catalog_to_pb(catalog)
        store = self.follower.store
        versions = []
        for spec in catalog.versions:
            if digests and not spec.pending:
                digest = store.get(spec.collection, spec.version).digest()
                versions.append(version_to_pb(spec, digest.count, digest.sha256))
            else:
                versions.append(version_to_pb(spec))
        role = self.group.role
        return rpb.ReplicaState(
            replica_id=self.follower.replica_id, term=self.follower.term,
            catalog_seq=catalog.stamp[1], aliases=aliases, versions=versions,
            in_sync=role == "primary" or self.follower.in_sync, role=ROLE_PB[role],
        )

    def GetReplicaState(self, request: rpb.GetReplicaStateRequest, context: grpc.ServicerContext):
        return rpb.GetReplicaStateResponse(
            state=self._state_pb(self.follower.state(request.term), request.digests))

    def SyncCatalog(self, request: rpb.SyncCatalogRequest, context: grpc.ServicerContext):
        catalog = catalog_from_pb((request.term, request.catalog_seq), request.aliases,
                                  request.versions, self.follower.store)
        state = self.follower.sync_catalog(request.term, request.primary_id, catalog)
        return rpb.SyncCatalogResponse(state=self._state_pb(state))

    def Replicate(self, request: rpb.ReplicateRequest, context: grpc.ServicerContext):
        records = [(r.collection, r.version, decode_shipped(r)) for r in request.records]
        self.follower.replicate(request.term, request.primary_id, records, request.in_sync)
        return rpb.ReplicateResponse(term=self.follower.term)

    def InstallSnapshot(self, request_iterator: Iterator[rpb.InstallSnapshotRequest],
                        context: grpc.ServicerContext):
        header, chunks = split_header(request_iterator, "a snapshot")
        spec = version_from_pb(header.version, self.follower.store)
        if not header.manifest:
            seq = self.follower.install_snapshot(header.term, header.primary_id, spec, None)
            return rpb.InstallSnapshotResponse(seq=seq)
        staging = Path(tempfile.mkdtemp(prefix="contentembed-snapshot-"))
        try:
            sizes = manifest_sizes(header.manifest)
            with Upload(spec.collection, spec.version, header.manifest, sizes, staging) as upload:
                write_chunks(upload, chunks)
                upload.require_complete()
            atomic_write(staging / "manifest.json", header.manifest)
            try:
                seq = self.follower.install_snapshot(header.term, header.primary_id, spec, staging)
            except CorruptData as error:
                raise FailedPrecondition(f"snapshot failed verification: {error}",
                                         reason="BUNDLE_CORRUPT") from None
            return rpb.InstallSnapshotResponse(seq=seq)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def TransferPrimary(self, request: rpb.TransferPrimaryRequest, context: grpc.ServicerContext):
        return rpb.TransferPrimaryResponse(term=self.group.transfer(request.successor_id))


class GrpcReplicaPeer:
    """A follower reached over gRPC, as primary.ReplicaPeer."""

    def __init__(self, replica_id: str, endpoint: str, settings: ServiceSettings,
                 store: CollectionStore, timeout_s: float) -> None:
        self.replica_id = replica_id
        self.endpoint = endpoint
        self._store = store
        self._timeout_s = timeout_s
        self._channel = open_channel(endpoint, settings)
        self._stub = rpb_grpc.ReplicationServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: str, request, timeout: float | None = None):  # type: ignore[no-untyped-def]
        try:
            return getattr(self._stub, method)(request, timeout=timeout or self._timeout_s)
        except grpc.RpcError as error:
            raise self._translated(error) from None

    def _translated(self, error: grpc.RpcError) -> Exception:
        domain = error_from_rpc(error, f"replica {self.replica_id}")
        if domain.reason == "STALE_TERM":
            return StaleTerm(0, int(dict(domain.metadata or {}).get("term", 0)))
        if domain.reason == "REPLICA_GAP":
            return ReplicaGap(domain.message)
        return PeerUnreachable(f"{domain.code} {domain.message}")

    def sync_catalog(self, term: int, primary_id: str, catalog: CatalogState) -> CatalogState:
        aliases, versions = catalog_to_pb(catalog)
        state = self._call("SyncCatalog", rpb.SyncCatalogRequest(
            term=term, primary_id=primary_id, catalog_seq=catalog.stamp[1], aliases=aliases,
            versions=versions)).state
        return catalog_from_pb((state.term, state.catalog_seq), state.aliases, state.versions,
                               self._store)

    def replicate(self, term: int, primary_id: str, records: Shipment, in_sync: bool,
                  timeout_s: float | None = None) -> None:
        self._call("Replicate", rpb.ReplicateRequest(
            term=term, primary_id=primary_id, in_sync=in_sync,
            records=[rpb.ShippedRecord(collection=name, version=version, record=encode_record(record))
                     for name, version, record in records]), timeout=timeout_s)

    def install_snapshot(self, term: int, primary_id: str, spec: VersionSpec,
                         directory: Path | None) -> int:
        manifest = b"" if directory is None else (directory / "manifest.json").read_bytes()

        def messages() -> Iterator[rpb.InstallSnapshotRequest]:
            yield rpb.InstallSnapshotRequest(header=rpb.SnapshotHeader(
                term=term, primary_id=primary_id, version=version_to_pb(spec), manifest=manifest))
            if directory is None:
                return
            for name in manifest_sizes(manifest):
                with (directory / name).open("rb") as handle:
                    offset = 0
                    while chunk := handle.read(MAX_CHUNK_BYTES):
                        yield rpb.InstallSnapshotRequest(
                            chunk=pb.FileChunk(file=name, offset=offset, data=chunk))
                        offset += len(chunk)

        # A large snapshot takes as long as its bytes do: no short deadline for the stream.
        return self._call("InstallSnapshot", messages(), timeout=3600.0).seq
