"""Durable files for index collections: write-ahead log and checksummed snapshots.

Nothing here trusts the disk: every snapshot file carries its sha256 in the manifest and
is verified before it is loaded; every WAL record carries a CRC32. A torn record at the
very end of the log (a crash mid-append, never acknowledged) is cut off; damage anywhere
else refuses the load, so bad data is never served.

Layout of one collection directory::

    collection.json              name, space, dim, hnsw params, lexical config when the
                                 collection has one (atomic write)
    snapshots/<seq>/             index.bin (hnswlib; none for a lexical-only collection,
                                 dim 0), items.json (ids, metadata, texts),
                                 manifest.json (with bundle_digest for a version installed
                                 from a bundle, and the lexical config: the BM25 index is
                                 rebuilt from the texts at load, never stored)
    CURRENT                      the seq of the snapshot to load (atomic write)
    wal/<first-seq>.log          records after that snapshot
    PENDING                      only while a version opened by BeginVersion waits for its
                                 bundle: no CURRENT, everything is in the WAL

A collection directory is ``<data-dir>/collections/<name>/versions/<version>/``, next to
``alias.json``; uploads are staged under ``<data-dir>/uploads/`` (removed at start-up).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from contentembed.services.common.digests import sha256_file

log = logging.getLogger(__name__)

WAL_MAGIC = b"CEW1"
WAL_HEADER = struct.Struct("<4sII")  # magic, payload length, crc32(payload)
META_LENGTH = struct.Struct("<I")
SyncPolicy = Literal["always", "interval", "never"]


class CorruptData(Exception):
    """A file failed its checksum or structure check; it is never loaded."""


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Temp file, fsync, rename, fsync the directory: readers see old or new, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_file(path: Path) -> None:
    with path.open("rb+") as handle:
        os.fsync(handle.fileno())


# -- write-ahead log -------------------------------------------------------------------
@dataclass(frozen=True)
class WalRecord:
    seq: int
    op: Literal["upsert", "delete"]
    ids: list[str]
    vectors: np.ndarray | None = None
    metadata: list[dict[str, Any]] | None = None
    # One per id ("" for an item without text); None when no item of the write has text,
    # which is also how records written before texts existed decode.
    texts: list[str] | None = None
    # The term of the primary that assigned the seq (0 without replicas, and in records
    # written before replicas existed): equal (seq, term) on two replicas is the same write.
    term: int = 0

    def slice(self, start: int, stop: int) -> WalRecord:
        """The items start..stop of this record, under the same seq (for applying a large
        write in parts; the log holds the whole record)."""
        if start == 0 and stop >= len(self.ids):
            return self
        return WalRecord(
            self.seq, self.op, self.ids[start:stop],
            None if self.vectors is None else self.vectors[start:stop],
            None if self.metadata is None else self.metadata[start:stop],
            None if self.texts is None else self.texts[start:stop],
            self.term,
        )


def encode_record(record: WalRecord) -> bytes:
    meta: dict[str, Any] = {"seq": record.seq, "op": record.op, "ids": record.ids}
    if record.term:
        meta["term"] = record.term
    vector_bytes = b""
    if record.op == "upsert":
        assert record.vectors is not None
        meta["metadata"] = record.metadata
        meta["dim"] = int(record.vectors.shape[1])
        if record.texts is not None:
            meta["texts"] = record.texts
        vector_bytes = np.ascontiguousarray(record.vectors, dtype="<f4").tobytes()
    meta_bytes = json.dumps(meta, separators=(",", ":")).encode()
    payload = META_LENGTH.pack(len(meta_bytes)) + meta_bytes + vector_bytes
    return WAL_HEADER.pack(WAL_MAGIC, len(payload), zlib.crc32(payload)) + payload


def decode_payload(payload: bytes) -> WalRecord:
    (meta_length,) = META_LENGTH.unpack_from(payload)
    meta = json.loads(payload[META_LENGTH.size : META_LENGTH.size + meta_length])
    term = meta.get("term", 0)
    if not isinstance(term, int) or term < 0:
        raise ValueError("term must be a non-negative integer")
    if meta["op"] == "delete":
        return WalRecord(meta["seq"], "delete", meta["ids"], term=term)
    raw = payload[META_LENGTH.size + meta_length :]
    vectors = np.frombuffer(raw, dtype="<f4").reshape(len(meta["ids"]), meta["dim"])
    texts = meta.get("texts")
    if texts is not None and (
        not isinstance(texts, list) or len(texts) != len(meta["ids"])
        or not all(isinstance(t, str) for t in texts)
    ):
        raise ValueError("texts must be one string per id")
    return WalRecord(meta["seq"], "upsert", meta["ids"], vectors, meta["metadata"], texts, term)


def decode_record(data: bytes) -> WalRecord:
    """One whole record as ``encode_record`` wrote it (a record shipped to a replica),
    its header and CRC checked; CorruptData otherwise."""
    if len(data) < WAL_HEADER.size:
        raise CorruptData("a record shorter than its header")
    magic, length, crc = WAL_HEADER.unpack_from(data)
    payload = data[WAL_HEADER.size:]
    if magic != WAL_MAGIC or length != len(payload) or zlib.crc32(payload) != crc:
        raise CorruptData("a record that fails its header or CRC check")
    try:
        return decode_payload(payload)
    except (ValueError, KeyError, TypeError) as error:
        raise CorruptData(f"an undecodable record: {error}") from None


def read_wal(path: Path, *, last_segment: bool, cut_torn_tail: bool = True) -> Iterator[WalRecord]:
    """Records in order (``read_wal_from`` at the start, without the offsets)."""
    for record, _ in read_wal_from(path, 0, last_segment=last_segment, cut_torn_tail=cut_torn_tail):
        yield record


def read_wal_from(path: Path, start: int, *, last_segment: bool,
                  cut_torn_tail: bool = True) -> Iterator[tuple[WalRecord, int]]:
    """Records in order from byte ``start`` (a record boundary), each with the offset just
    past it (where a later read can resume).

    An append is one write of header + payload, so a crash can only leave a *prefix* of
    the last record: fewer bytes than a header, or a valid header whose payload runs past
    the end of the file. That torn tail was never acknowledged and is cut off — in the
    last segment only. Anything else (bad magic, a CRC mismatch, a tail in an older
    segment) is damage, and the load is refused.

    ``cut_torn_tail=False`` reads a live log (records shipped to a replica): its tail
    may be an append in progress, which is left alone and not read.
    """
    with path.open("rb") as handle:
        handle.seek(start)
        data = handle.read()
    offset = 0
    while offset < len(data):
        header_end = offset + WAL_HEADER.size
        if header_end > len(data):
            torn = True
        else:
            magic, length, crc = WAL_HEADER.unpack_from(data, offset)
            if magic != WAL_MAGIC:
                raise CorruptData(f"{path}: bad record header at byte {start + offset}")
            torn = header_end + length > len(data)
            if not torn and zlib.crc32(data[header_end : header_end + length]) != crc:
                raise CorruptData(f"{path}: record at byte {start + offset} fails its CRC")
        if torn:
            if not last_segment:
                raise CorruptData(f"{path}: incomplete record at byte {start + offset} in an older segment")
            if not cut_torn_tail:
                return
            log.warning("cutting a torn record off the WAL", extra={"wal": str(path), "at": start + offset})
            with path.open("rb+") as handle:
                handle.truncate(start + offset)
                os.fsync(handle.fileno())
            return
        try:
            record = decode_payload(data[header_end : header_end + length])
        except (ValueError, KeyError, TypeError) as error:
            raise CorruptData(f"{path}: undecodable record at byte {start + offset}: {error}") from None
        offset = header_end + length
        yield record, start + offset


class WalUnavailable(Exception):
    """A failed append could not be undone: the log refuses writes until a restart."""


class WriteAheadLog:
    """Append-only log; ``append`` returns once the record is as durable as the policy says:
    ``always`` fsyncs before returning, ``interval`` fsyncs at most every
    ``sync_interval_s`` (a crash of the machine may lose that window, a killed process
    loses nothing: the page cache survives it), ``never`` leaves it to the OS."""

    def __init__(self, path: Path, policy: SyncPolicy = "always", sync_interval_s: float = 0.05):
        self.path = path
        self.policy = policy
        self.sync_interval_s = sync_interval_s
        path.parent.mkdir(parents=True, exist_ok=True)
        # Unbuffered: a failed append must leave no bytes behind in a buffer. With the
        # buffered writer, a full disk (ENOSPC, EFBIG) wrote part of a record, kept the
        # rest buffered, and truncate() (which flushes first) failed again: the log broke
        # for good, and once space came back a later flush completed the refused record,
        # which the next restart replayed (and whose seq the next acknowledged write reused).
        self._handle = path.open("ab", buffering=0)
        fsync_dir(path.parent)
        self._last_sync = time.monotonic()
        self._dirty = False
        self._broken: str | None = None
        self._lock = threading.Lock()

    def append(self, record: WalRecord) -> int:
        """Appends durably (per the policy) or raises, leaving the log as it was: a half
        written record would otherwise be replayed, or its seq reused by the next write.
        Returns the bytes appended."""
        return self.append_all([record])

    def append_all(self, records: list[WalRecord]) -> int:
        """``append`` for several records in one write and one fsync (a replica applying
        a shipment: an fsync per record made catch-up cost one per record); all of them or
        none. Returns the bytes appended."""
        data = b"".join(encode_record(record) for record in records)
        with self._lock:
            if self._broken is not None:
                raise WalUnavailable(f"{self.path}: {self._broken}")
            start = self._handle.tell()
            try:
                view, written = memoryview(data), 0
                while written < len(data):  # a raw write may be short
                    written += self._handle.write(view[written:])
                now = time.monotonic()
                if self.policy == "always" or (
                    self.policy == "interval" and now - self._last_sync >= self.sync_interval_s
                ):
                    os.fsync(self._handle.fileno())
                    self._last_sync = now
                self._dirty = self.policy == "interval" and self._last_sync != now
            except OSError as error:
                try:
                    self._handle.truncate(start)
                    self._handle.seek(start)
                    os.fsync(self._handle.fileno())
                except OSError as undo_error:
                    self._broken = f"append failed ({error}) and could not be undone ({undo_error})"
                raise
        return len(data)

    def sync_if_due(self) -> None:
        """For ``interval``: fsyncs writes older than the interval even when no new write
        comes along to do it."""
        with self._lock:
            if self._dirty and not self._handle.closed and self._broken is None:
                if time.monotonic() - self._last_sync >= self.sync_interval_s:
                    os.fsync(self._handle.fileno())
                    self._last_sync = time.monotonic()
                    self._dirty = False

    def close(self) -> None:
        with self._lock:
            if not self._handle.closed:
                try:
                    os.fsync(self._handle.fileno())
                finally:
                    self._handle.close()


# -- snapshots -------------------------------------------------------------------------
SNAPSHOT_FILES = ("index.bin", "items.json")
# A lexical-only collection (dim 0) has no vectors, hence no hnswlib file: its snapshot is
# the items (texts included) alone, from which the BM25 index is rebuilt.
LEXICAL_ONLY_SNAPSHOT_FILES = ("items.json",)


def snapshot_files(dim: Any) -> tuple[str, ...]:
    """The files a snapshot of that manifest dim holds (dim 0: lexical-only)."""
    return LEXICAL_ONLY_SNAPSHOT_FILES if dim == 0 else SNAPSHOT_FILES


def write_manifest(directory: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Adds the sha256 and size of every data file, then writes manifest.json atomically."""
    manifest = dict(manifest)
    names = snapshot_files(manifest["dim"])
    manifest["files"] = {
        name: {"sha256": sha256_file(directory / name), "bytes": (directory / name).stat().st_size}
        for name in names
    }
    for name in names:
        fsync_file(directory / name)
    atomic_write(directory / "manifest.json", json.dumps(manifest, indent=1).encode())
    return manifest


def verify_manifest(directory: Path) -> dict[str, Any]:
    """The manifest, after every file it lists matched its size and sha256."""
    try:
        manifest = json.loads((directory / "manifest.json").read_bytes())
    except (OSError, ValueError, RecursionError) as error:
        raise CorruptData(f"{directory}: unreadable manifest.json ({error})") from None
    if not isinstance(manifest, dict):
        raise CorruptData(f"{directory}: manifest.json is not an object")
    files = manifest.get("files")
    # Exactly the files its dim implies: a lexical-only manifest listing index.bin, or a
    # dense one without it, is damage (or a mix of two snapshots), not a choice.
    expected = snapshot_files(manifest.get("dim"))
    if not isinstance(files, dict) or set(files) != set(expected):
        raise CorruptData(f"{directory}: manifest must list exactly {expected}")
    for name, expected in files.items():
        path = directory / name
        if not path.is_file():
            raise CorruptData(f"{path}: missing")
        if path.stat().st_size != expected["bytes"]:
            raise CorruptData(
                f"{path}: {path.stat().st_size} bytes, manifest says {expected['bytes']} (truncated?)"
            )
        if sha256_file(path) != expected["sha256"]:
            raise CorruptData(f"{path}: sha256 does not match the manifest")
    return manifest


def remove_tree(path: Path) -> None:
    """Rename first, so a crash mid-delete never leaves a half directory under the real name."""
    if not path.exists():
        return
    trash = path.with_name(f".deleted-{path.name}-{time.monotonic_ns()}")
    os.replace(path, trash)
    fsync_dir(path.parent)
    shutil.rmtree(trash, ignore_errors=True)
