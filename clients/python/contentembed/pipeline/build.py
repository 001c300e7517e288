"""``contentembed build``: a catalog embedded into a bundle (docs/bundles.md).

Work directory ``DIR.work/`` (resumable)::

    slice-I-of-N/
      chunk-000000/        rows of this slice in catalog order, --chunk-size per chunk
        vectors.npy          float32 (items, dim)
        rows.json            ids, metadata, content digests, rejects, embedded/reused counts;
                             with --hybrid also the texts, for the shards' lexical index
        done.json            the chunk's input digest and the sha256 of the two files above
      complete.json        the slice is done: catalog sha256, space, params, version, chunks
    rejects.jsonl          written when a run stops over --max-rejects

A chunk whose done record and checksums verify is never embedded again; the bundle is
assembled from the chunks of every slice into a private ``DIR.staging-<random>`` and
renamed to ``DIR``. Merging is deterministic: two merges of the same slices at once (the
last pods of an Indexed Job) write the same bundle; the first rename wins and the other
reports it as already built. A merge that finds slices missing raises ``SlicesMissing``
(the CLI exits with ``EXIT_SLICES_MISSING``) and changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from contentembed.pipeline.catalog import (
    Catalog,
    CatalogError,
    CatalogRow,
    Reject,
    TooManyRejects,
    check_single_modality,
    read_catalog_rows,
    sha256_file,
    write_rejects,
)
from contentembed.pipeline.embedders import (
    Embedder,
    SpaceInfo,
    embed_rows,
)

# Pure (hashlib only): importable with the base install, and the shards' own routing.
from contentembed.services.common.sharding import shard_for_id

BUNDLE_FORMAT = "contentembed-bundle/v1"
SLICE_FORMAT = "contentembed-build-slice/v1"
Progress = Callable[[int], None]


class BuildError(RuntimeError):
    pass


class VersionExists(BuildError):
    """The collection already has the version this build would make: nothing new."""


class SlicesMissing(BuildError):
    """A merge found slices not (yet) complete; ``missing`` are their numbers."""

    def __init__(self, message: str, missing: list[int], count: int) -> None:
        super().__init__(message)
        self.missing = missing
        self.count = count


@dataclass(frozen=True)
class Hnsw:
    m: int = 16
    ef_construction: int = 200
    ef_search: int = 100

    def to_json(self) -> dict[str, int]:
        return {"m": self.m, "ef_construction": self.ef_construction, "ef_search": self.ef_search}


@dataclass(frozen=True)
class BuildParams:
    collection: str
    out: Path
    shard_count: int
    hnsw: Hnsw = Hnsw()
    chunk_size: int = 1024
    max_rejects: int = 1000
    version: str | None = None
    previous: Path | None = None
    # --hybrid: the lexical index's language (normalized); None: a dense-only bundle.
    lexical: str | None = None

    @property
    def work(self) -> Path:
        return self.out.with_name(self.out.name + ".work")

    @property
    def staging(self) -> Path:
        return self.out.with_name(self.out.name + ".staging")


def default_version(
    catalog_sha256: str, space_id: str, hnsw: Hnsw, shard_count: int, lexical: str | None = None
) -> str:
    """b- + 12 hex of sha256 over (catalog sha256, space id, hnsw params, shard count), and
    the lexical language for a hybrid bundle: a hybrid build of a catalog is another
    version than its dense build (dense versions are named as before)."""
    parts: list[Any] = [catalog_sha256, space_id, hnsw.to_json(), shard_count]
    if lexical is not None:
        parts.append({"lexical": lexical})
    key = json.dumps(parts, sort_keys=True)
    return "b-" + hashlib.sha256(key.encode()).hexdigest()[:12]


def lexical_language(language: str) -> str:
    """The normalized language of a hybrid build (BuildError when the index does not know
    it): the same one the shards will analyse the texts with."""
    from contentembed.services.common.errors import InvalidArgument
    from contentembed.services.index.lexical import check_language

    try:
        return check_language(language)
    except InvalidArgument as error:
        raise BuildError(f"--language {language!r}: {error.message}") from None


def slice_dir(work: Path, index: int, count: int) -> Path:
    return work / f"slice-{index}-of-{count}"


def parse_slice(text: str) -> tuple[int, int]:
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise BuildError(f"--slice must be I/N (e.g. 0/4), got {text!r}") from None
    if not 0 <= index < count:
        raise BuildError(f"--slice {text}: need 0 <= I < N")
    return index, count


def atomic_json(path: Path, value: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    with tmp.open("rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# -- reuse of a previous bundle ------------------------------------------------------
class PreviousBundle:
    """Vectors of a previous bundle by id, for rows whose content digest is unchanged."""

    def __init__(self, directory: Path, space: SpaceInfo) -> None:
        manifest = read_json(directory / "manifest.json")
        if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
            raise BuildError(f"--from {directory}: not a bundle (no {BUNDLE_FORMAT} manifest.json)")
        self.directory = directory
        self.manifest = manifest
        self.same_model = space.same_model(manifest.get("space", {}))
        self.content: dict[str, str] = read_json(directory / "content.json") or {}
        self._parts: dict[int, Any] = {}

    def reusable(self, row: CatalogRow) -> bool:
        return self.same_model and self.content.get(row.id) == row.digest

    def vectors(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        from contentembed.services.index.collection import HnswCollection
        from contentembed.services.index.persistence import CorruptData, verify_manifest

        found: dict[str, np.ndarray] = {}
        count = int(self.manifest["shard_count"])
        by_part: dict[int, list[str]] = {}
        for item_id in ids:
            by_part.setdefault(shard_for_id(item_id, count), []).append(item_id)
        for part, wanted in by_part.items():
            if part not in self._parts:
                directory = self.directory / f"shard-{part:04d}"
                try:
                    manifest = verify_manifest(directory)
                    self._parts[part] = HnswCollection.from_snapshot(
                        directory, manifest, str(self.manifest.get("collection", ""))
                    )
                except CorruptData as error:
                    raise BuildError(f"--from: {error}") from None
            for item in self._parts[part].get(wanted):
                found[item.id] = np.asarray(item.vector, dtype=np.float32)
        return found


# -- embedding one slice -------------------------------------------------------------
@dataclass
class SliceStats:
    rows: int = 0
    embedded: int = 0
    reused: int = 0
    resumed_chunks: int = 0
    chunks: int = 0
    embed_rejects: list[Reject] = field(default_factory=list)


def chunk_input_digest(space_id: str, rows: Sequence[CatalogRow], texts: bool = False) -> str:
    # A hybrid chunk also keeps the texts: a dense chunk of the same rows is not one.
    sha = hashlib.sha256(space_id.encode() + b"\0" + (b"texts\0" if texts else b""))
    for row in rows:
        sha.update(f"{row.line}\0{row.id}\0{row.digest}\n".encode())
    return sha.hexdigest()


def verified_chunk(directory: Path, input_digest: str) -> dict[str, Any] | None:
    """rows.json of a finished chunk whose record and checksums hold, else None."""
    done = read_json(directory / "done.json")
    if not isinstance(done, dict) or done.get("input_digest") != input_digest:
        return None
    files = done.get("files")
    if not isinstance(files, dict) or set(files) != {"vectors.npy", "rows.json"}:
        return None
    for name, digest in files.items():
        path = directory / name
        if not path.is_file() or sha256_file(path) != digest:
            return None
    return read_json(directory / "rows.json")


def write_chunk(directory: Path, input_digest: str, vectors: np.ndarray, rows: dict[str, Any]) -> dict[str, Any]:
    """Into a temporary directory, then renamed: a chunk is there whole or not at all."""
    tmp = directory.with_name(f".{directory.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    np.save(tmp / "vectors.npy", np.ascontiguousarray(vectors, dtype=np.float32))
    (tmp / "rows.json").write_text(json.dumps(rows, sort_keys=True), encoding="utf-8")
    done = {
        "input_digest": input_digest,
        "files": {name: sha256_file(tmp / name) for name in ("vectors.npy", "rows.json")},
    }
    atomic_json(tmp / "done.json", done)
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(tmp, directory)
    return done


def rows_of_slice(rows: Sequence[CatalogRow], index: int, count: int) -> list[CatalogRow]:
    return [row for row in rows if count == 1 or shard_for_id(row.id, count) == index]


def rejects_of_slice(rejects: Sequence[Reject], index: int, count: int) -> list[Reject]:
    """Catalog rejects by the slice of their id; those without an id go to slice 0."""
    return [
        r for r in rejects
        if (index == 0 if r.id is None else shard_for_id(r.id, count) == index)
    ]


def embed_slice(
    catalog: Catalog,
    embedders: dict[str, Embedder],
    space: SpaceInfo,
    params: BuildParams,
    version: str,
    index: int,
    count: int,
    progress: Progress | None = None,
    on_total: Callable[[int], None] | None = None,
) -> SliceStats:
    """Embeds the rows of slice ``index`` of ``count`` into the work dir, chunk by chunk,
    skipping chunks already done; records the slice as complete."""
    directory = slice_dir(params.work, index, count)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "complete.json").unlink(missing_ok=True)
    rows = rows_of_slice(catalog.rows, index, count)
    if on_total is not None:
        on_total(len(rows))
    previous = PreviousBundle(params.previous, space) if params.previous else None
    stats = SliceStats(rows=len(rows))
    records = []
    for number, start in enumerate(range(0, len(rows), params.chunk_size)):
        chunk = rows[start : start + params.chunk_size]
        chunk_dir = directory / f"chunk-{number:06d}"
        input_digest = chunk_input_digest(space.space_id, chunk, params.lexical is not None)
        done_rows = verified_chunk(chunk_dir, input_digest)
        if done_rows is not None:
            stats.resumed_chunks += 1
            done = read_json(chunk_dir / "done.json")
            if progress is not None:
                progress(len(chunk))
        else:
            done_rows, vectors = embed_chunk(chunk, embedders, space, previous, stats, progress,
                                             texts=params.lexical is not None)
            done = write_chunk(chunk_dir, input_digest, vectors, done_rows)
        stats.chunks += 1
        stats.embed_rejects += [Reject(**r) for r in done_rows["rejects"]]
        records.append({"dir": chunk_dir.name, **done})
        total_rejects = len(catalog.rejects) + len(stats.embed_rejects)
        if total_rejects > params.max_rejects:
            rejects = list(catalog.rejects) + stats.embed_rejects
            raise TooManyRejects(total_rejects, params.max_rejects, rejects)
    record = {
        "format": SLICE_FORMAT,
        "slice": index,
        "of": count,
        "catalog": catalog.info(),
        "modalities": catalog.modalities,
        "space": space.to_json(),
        "hnsw": params.hnsw.to_json(),
        "shard_count": params.shard_count,
        "version": version,
        "chunk_size": params.chunk_size,
        "lexical": params.lexical,
        "chunks": records,
        "rejects": [r.__dict__ for r in rejects_of_slice(catalog.rejects, index, count)],
    }
    atomic_json(directory / "complete.json", record)
    return stats


def over_long_texts(rows: Sequence[CatalogRow]) -> dict[str, str]:
    """Reject reasons of the rows whose text the shards' lexical index would refuse (a
    hybrid build): rejected before embedding, like a row the encoder refuses, instead of
    failing the merge."""
    from contentembed.services.common.errors import InvalidArgument
    from contentembed.services.index.lexical import check_text

    refused = {}
    for row in rows:
        if row.text is None:
            continue
        try:
            check_text(row.text, what="text")
        except InvalidArgument as error:
            refused[row.id] = f"the lexical index refuses it: {error.message}"
    return refused


def embed_chunk(
    chunk: Sequence[CatalogRow],
    embedders: dict[str, Embedder],
    space: SpaceInfo,
    previous: PreviousBundle | None,
    stats: SliceStats,
    progress: Progress | None,
    texts: bool = False,
) -> tuple[dict[str, Any], np.ndarray]:
    reused: dict[str, np.ndarray] = {}
    if previous is not None:
        candidates = [row.id for row in chunk if previous.reusable(row)]
        if candidates:
            reused = previous.vectors(candidates)
    by_id: dict[str, np.ndarray | str] = dict(reused)
    if texts:
        by_id.update(over_long_texts(chunk))
    fresh = [row for row in chunk if row.id not in by_id]
    if progress is not None and len(by_id):
        progress(len(by_id))
    results = embed_rows(embedders, fresh, progress) if fresh else []
    by_id.update({row.id: result for row, result in zip(fresh, results)})
    ids, metadata, digests, vectors, rejects, row_texts = [], [], [], [], [], []
    for row in chunk:
        result = by_id[row.id]
        if isinstance(result, str):
            rejects.append({"line": row.line, "id": row.id, "reason": result})
            continue
        ids.append(row.id)
        metadata.append(row.metadata)
        digests.append(row.digest)
        vectors.append(result)
        row_texts.append(row.text or "")  # an image row has no words to index
    stats.embedded += len(fresh)
    stats.reused += len(reused)
    matrix = np.stack(vectors) if vectors else np.zeros((0, space.dim), np.float32)
    rows: dict[str, Any] = {
        "ids": ids, "metadata": metadata, "digests": digests, "rejects": rejects,
        "embedded": len(fresh), "reused": len(reused),
    }
    if texts:
        rows["texts"] = row_texts
    return rows, matrix


# -- assembly ------------------------------------------------------------------------
@dataclass
class BundleResult:
    version: str
    bundle: Path
    items: int
    rejects: int
    digest: str
    already_built: bool = False
    parts: list[int] = field(default_factory=list)


def load_slices(
    params: BuildParams, count: int, catalog_sha256: str, expect_version: str | None = None
) -> list[dict[str, Any]]:
    """Every slice's complete record, checked against each other and the catalog."""
    records = []
    problems = []
    missing = []
    for index in range(count):
        directory = slice_dir(params.work, index, count)
        record = read_json(directory / "complete.json")
        if not isinstance(record, dict) or record.get("format") != SLICE_FORMAT:
            problems.append(f"slice {index}/{count} is missing or not complete ({directory})")
            missing.append(index)
            continue
        records.append(record)
    if problems:
        raise SlicesMissing("cannot merge: " + "; ".join(problems), missing, count)
    first = records[0]
    for record in records:
        where = f"slice {record['slice']}/{count}"
        if record["catalog"]["sha256"] != catalog_sha256:
            raise BuildError(f"cannot merge: {where} was embedded from another catalog "
                             f"(sha256 {record['catalog']['sha256'][:12]}…)")
        for key in ("space", "hnsw", "shard_count", "version", "chunk_size", "catalog",
                    "lexical"):
            # .get: slices recorded before hybrid builds have no "lexical" (dense).
            if record.get(key) != first.get(key):
                raise BuildError(f"cannot merge: {where} has {key} {record.get(key)!r}, "
                                 f"slice 0/{count} has {first.get(key)!r}")
        if params.lexical is not None and record.get("lexical") != params.lexical:
            built = f"--language {record.get('lexical')}" if record.get("lexical") else "dense"
            raise BuildError(f"cannot merge: {where} was built {built}, not --hybrid "
                             f"--language {params.lexical}")
        if expect_version and record["version"] != expect_version:
            raise BuildError(f"cannot merge: {where} is version {record['version']}, "
                             f"expected {expect_version}")
        if params.shard_count and record["shard_count"] != params.shard_count:
            raise BuildError(f"cannot merge: {where} was built for {record['shard_count']} "
                             f"shards, not {params.shard_count}")
        for chunk in record["chunks"]:
            chunk_dir = slice_dir(params.work, record["slice"], count) / chunk["dir"]
            for name, digest in chunk["files"].items():
                path = chunk_dir / name
                if not path.is_file() or sha256_file(path) != digest:
                    raise BuildError(f"cannot merge: {path} is missing or does not match its "
                                     "checksum; re-run that slice")
    return records


@dataclass(frozen=True)
class BundleContents:
    """Everything a bundle holds, in catalog order (ids unique)."""

    collection: str
    version: str
    space: dict[str, Any]  # space_id, model_id, model_revision, dim
    modalities: list[str]
    hnsw: dict[str, int]
    catalog: dict[str, Any]  # name, sha256, rows
    ids: Sequence[str]
    vectors: np.ndarray
    metadata: Sequence[dict[str, Any]]
    digests: Sequence[str]  # content digest per id, for build --from
    rejects: Sequence[Reject] = ()
    # A hybrid bundle: the lexical index's language and each id's text; None: dense only.
    lexical: str | None = None
    texts: Sequence[str] | None = None


def write_bundle(directory: Path, contents: BundleContents, shard_count: int) -> tuple[str, list[int]]:
    """Writes the bundle (docs/bundles.md) into an empty directory; returns its digest and
    the item count of each part. Parts are filled in id order on one thread, so the same
    contents give the same bytes."""
    from contentembed.services.index.collection import HnswCollection
    from contentembed.services.index.dense import HnswParams

    lexical = None
    if contents.lexical is not None:
        from contentembed.services.index.lexical import LexicalParams

        lexical = LexicalParams(contents.lexical)
        if contents.texts is None or len(contents.texts) != len(contents.ids):
            raise BuildError("a hybrid bundle needs one text per item")
    position = {item_id: n for n, item_id in enumerate(contents.ids)}
    parts = []
    files: dict[str, str] = {}
    part_counts = []
    for shard in range(shard_count):
        mine = sorted(i for i in contents.ids if shard_for_id(i, shard_count) == shard)
        rows_at = [position[i] for i in mine]
        collection = HnswCollection(
            contents.collection, contents.space["space_id"], int(contents.space["dim"]),
            HnswParams(**contents.hnsw), initial_capacity=max(1, len(mine)),
            version=contents.version, lexical=lexical,
        )
        # Without texts (a dense bundle) the part is byte for byte what it was before
        # hybrid retrieval: items.json has no texts, the part manifest no lexical config.
        texts = [contents.texts[p] for p in rows_at] if contents.texts is not None else None
        collection.bulk_insert(mine, contents.vectors[rows_at],
                               [contents.metadata[p] for p in rows_at], texts=texts)
        name = f"shard-{shard:04d}"
        collection.write_snapshot(directory / name)
        for file in ("index.bin", "items.json", "manifest.json"):
            files[f"{name}/{file}"] = sha256_file(directory / name / file)
        parts.append({"shard": shard, "dir": name, "items": len(mine),
                      "manifest_sha256": files[f"{name}/manifest.json"]})
        part_counts.append(len(mine))
    write_rejects(directory / "rejects.jsonl", list(contents.rejects))
    content = {item_id: contents.digests[position[item_id]] for item_id in sorted(contents.ids)}
    (directory / "content.json").write_text(
        json.dumps(content, sort_keys=True, separators=(",", ":")), encoding="utf-8"
    )
    files["rejects.jsonl"] = sha256_file(directory / "rejects.jsonl")
    files["content.json"] = sha256_file(directory / "content.json")
    manifest = {
        "format": BUNDLE_FORMAT,
        "version": contents.version,
        "collection": contents.collection,
        "space": contents.space,
        "modalities": contents.modalities,
        "metric": "cosine",
        "hnsw": contents.hnsw,
        # Only in hybrid bundles, so dense bundles keep their bytes (and digests).
        **({"lexical": {"enabled": True, "language": contents.lexical}}
           if contents.lexical is not None else {}),
        "shard_count": shard_count,
        "items": len(contents.ids),
        "rejects": len(contents.rejects),
        "catalog": contents.catalog,
        "parts": parts,
        "files": dict(sorted(files.items())),
    }
    data = (json.dumps(manifest, indent=1) + "\n").encode()
    (directory / "manifest.json").write_bytes(data)
    return hashlib.sha256(data).hexdigest(), part_counts


def merge(params: BuildParams, count: int, catalog_path: Path, catalog_rows: int | None = None) -> BundleResult:
    catalog_sha256 = sha256_file(catalog_path)
    records = load_slices(params, count, catalog_sha256, params.version)
    first = records[0]
    space, version, shard_count = first["space"], first["version"], first["shard_count"]
    lexical = first.get("lexical")
    texts: list[str] = []
    ids: list[str] = []
    metadata: list[dict[str, Any]] = []
    digests: list[str] = []
    blocks: list[np.ndarray] = []
    rejects: list[Reject] = []
    for record in records:
        rejects += [Reject(**r) for r in record["rejects"]]
        for chunk in record["chunks"]:
            chunk_dir = slice_dir(params.work, record["slice"], count) / chunk["dir"]
            rows = json.loads((chunk_dir / "rows.json").read_text(encoding="utf-8"))
            vectors = np.load(chunk_dir / "vectors.npy")
            if vectors.shape != (len(rows["ids"]), space["dim"]):
                raise BuildError(f"{chunk_dir}: vectors do not match its rows")
            if lexical is not None:
                if len(rows.get("texts", ())) != len(rows["ids"]):
                    raise BuildError(f"{chunk_dir}: a hybrid chunk without its texts")
                texts += rows["texts"]
            ids += rows["ids"]
            metadata += rows["metadata"]
            digests += rows["digests"]
            blocks.append(vectors)
            rejects += [Reject(**r) for r in rows["rejects"]]
    if len(set(ids)) != len(ids):
        raise BuildError("cannot merge: an id appears in more than one slice")
    if len(rejects) > params.max_rejects:
        write_rejects(params.work / "rejects.jsonl", rejects)
        raise TooManyRejects(len(rejects), params.max_rejects, rejects)
    matrix = np.concatenate(blocks) if blocks else np.zeros((0, space["dim"]), np.float32)

    # Private to this merge: another merge of the same slices may run at the same time.
    staging = params.staging.with_name(f"{params.staging.name}-{uuid.uuid4().hex[:12]}")
    staging.mkdir(parents=True)
    contents = BundleContents(
        collection=params.collection, version=version, space=space,
        modalities=first["modalities"], hnsw=first["hnsw"], catalog=first["catalog"],
        ids=ids, vectors=matrix, metadata=metadata, digests=digests, rejects=rejects,
        lexical=lexical, texts=texts if lexical is not None else None,
    )
    digest, part_counts = write_bundle(staging, contents, shard_count)
    result = BundleResult(version, params.out, len(ids), len(rejects), digest, parts=part_counts)
    out = params.out
    if not out.exists():
        try:
            os.replace(staging, out)
            return result
        except OSError:
            if not out.exists():
                shutil.rmtree(staging, ignore_errors=True)
                raise
            # Another merge renamed its bundle into place first: compare below.
    existing = out / "manifest.json"
    shutil.rmtree(staging, ignore_errors=True)
    if existing.is_file() and sha256_file(existing) == digest:
        result.already_built = True
        return result
    raise BuildError(
        f"{out} already holds a different bundle; remove it or choose another --out"
    )


def verify_bundle(directory: Path) -> dict[str, Any]:
    """The manifest after every file it names matched its sha256 (BuildError if not)."""
    manifest = read_json(directory / "manifest.json")
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise BuildError(f"{directory}: no {BUNDLE_FORMAT} manifest")
    for name, digest in manifest["files"].items():
        path = directory / name
        if not path.is_file() or sha256_file(path) != digest:
            raise BuildError(f"{path}: missing or sha256 does not match the manifest")
    return manifest


def scan_catalog(path: Path, max_rejects: int, work: Path) -> Catalog:
    """The catalog's rows; over --max-rejects the rejects go to ``work/rejects.jsonl``."""
    try:
        return read_catalog_rows(path, max_rejects)
    except TooManyRejects as error:
        write_rejects(work / "rejects.jsonl", error.rejects)
        raise


# -- the command ---------------------------------------------------------------------
@dataclass
class BuildOptions:
    catalog: Path
    collection: str
    out: Path
    shards: int | None = None
    hnsw: Hnsw = Hnsw()
    chunk_size: int = 1024
    max_rejects: int = 1000
    version: str | None = None
    previous: Path | None = None
    space_id: str | None = None
    local: Any = None  # LocalOptions, or None for remote encoders
    encoders: Sequence[str] = ()
    offline: bool = False
    target: str = "127.0.0.1:50051"
    slice: tuple[int, int] | None = None
    merge_only: bool = False
    workers: int = 1
    concurrency: int = 4
    progress: bool = True
    # --hybrid: the lexical index's language ("" = english); None: a dense-only bundle.
    lexical: str | None = None


@dataclass
class BuildOutcome:
    result: BundleResult | None  # None when only a slice was embedded
    version: str
    embedded: int = 0
    reused: int = 0
    resumed_chunks: int = 0
    notes: list[str] = field(default_factory=list)


def params_of(options: BuildOptions, shard_count: int) -> BuildParams:
    return BuildParams(
        collection=options.collection, out=options.out, shard_count=shard_count,
        hnsw=options.hnsw, chunk_size=options.chunk_size, max_rejects=options.max_rejects,
        version=options.version, previous=options.previous,
        lexical=lexical_language(options.lexical) if options.lexical is not None else None,
    )


def open_embedders(
    options: BuildOptions, modalities: Sequence[str], listed: Sequence[Any] = ()
) -> dict[str, Embedder]:
    """Local backends, the --encoder addresses, or the encoders the gateway lists."""
    from contentembed.pipeline.embedders import (
        EmbedError,
        RemoteEmbedder,
        SpaceError,
        choose,
        local_embedders,
    )

    try:
        if options.local is not None:
            candidates = local_embedders(options.local, modalities)
        elif options.encoders:
            candidates = [RemoteEmbedder(a, concurrency=options.concurrency) for a in options.encoders]
        else:
            candidates = [
                RemoteEmbedder(e.address, concurrency=options.concurrency)
                for e in listed
                if e.modality in modalities and (not options.space_id or e.space_id == options.space_id)
            ]
        chosen = choose(candidates, modalities, options.space_id)
    except (EmbedError, SpaceError) as error:
        raise BuildError(str(error)) from None
    for candidate in candidates:
        if candidate not in chosen.values():
            candidate.close()
    return chosen


def slice_directories(work: Path) -> dict[int, list[Path]]:
    found: dict[int, list[Path]] = {}
    for path in sorted(work.glob("slice-*-of-*")):
        try:
            found.setdefault(int(path.name.rsplit("-", 1)[1]), []).append(path)
        except ValueError:
            continue
    return found


def run_build(options: BuildOptions, say: Callable[[str], None], bar: Any = None) -> BuildOutcome:
    """The whole command; ``bar`` is a tqdm-like progress bar (total set here)."""
    if options.offline and not options.merge_only:
        if options.shards is None:
            raise BuildError("--offline needs --shards")
        if options.local is None and not options.encoders:
            raise BuildError("--offline needs --local or --encoder")
    if options.merge_only and options.slice is None:
        return merge_only(options, say)
    work = params_of(options, 1).work
    work.mkdir(parents=True, exist_ok=True)
    catalog = scan_catalog(options.catalog, options.max_rejects, work)
    modalities = catalog.modalities
    if not modalities:
        raise BuildError(f"{options.catalog}: no usable rows")
    listed: list[Any] = []
    client = None
    if not options.offline:
        from contentembed.client import client_from_env

        client = client_from_env(options.target)
    try:
        shard_count = options.shards
        if client is not None:
            from contentembed.client import ApiError

            try:
                if options.local is None and not options.encoders:
                    listed = client.list_spaces()
                if shard_count is None:
                    shard_count = len(client.list_shards())
            except ApiError as error:
                raise BuildError(f"gateway {options.target}: {error} (or build with --offline "
                                 "and --shards with --local/--encoder)") from None
        assert shard_count is not None
        if shard_count < 1:
            raise BuildError("the shard count must be at least 1")
        try:
            embedders = open_embedders(options, modalities, listed)
        except BuildError as error:
            if len(modalities) > 1:
                try:
                    check_single_modality(catalog)
                except CatalogError as mixed:
                    raise BuildError(f"{mixed} ({error})") from None
            raise
        space = next(iter(embedders.values())).space
        params = params_of(options, shard_count)
        version = options.version or default_version(catalog.sha256, space.space_id,
                                                      options.hnsw, shard_count, params.lexical)
        outcome = BuildOutcome(None, version)
        say(f"{catalog.path.name}: {len(catalog.rows)} rows, {len(catalog.rejects)} rejected; "
            f"{'+'.join(modalities)} into {space.space_id} ({'; '.join(e.description for e in embedders.values())}); "
            f"version {version}, {shard_count} shards"
            + (f", hybrid (lexical index in {params.lexical})" if params.lexical else ""))
        if client is not None:
            outcome.notes.append(capture_online_writes(client, options.collection, version,
                                                       space.space_id, params.lexical))
            say(outcome.notes[-1])
    finally:
        if client is not None:
            client.close()
    if options.previous is not None:
        previous = PreviousBundle(options.previous, space)
        if not previous.same_model:
            note = (f"--from {options.previous}: built with another model "
                    f"({previous.manifest.get('space', {}).get('space_id')}); re-embedding everything")
            outcome.notes.append(note)
            say(note)
    try:
        if options.slice is not None or options.workers <= 1:
            index, count = options.slice or (0, 1)
            stats = embed_slice(
                catalog, embedders, space, params, version, index, count,
                progress=bar.update if bar is not None else None,
                on_total=(lambda n: setattr(bar, "total", n)) if bar is not None else None,
            )
            outcome.embedded, outcome.reused = stats.embedded, stats.reused
            outcome.resumed_chunks = stats.resumed_chunks
        else:
            count = options.workers
            for embedder in embedders.values():
                embedder.close()
            encoder_addresses = [getattr(e, "address", "") for e in embedders.values()]
            if bar is not None:
                bar.total = len(catalog.rows)
            totals = run_workers(options, params, space.space_id, version, count,
                                 encoder_addresses, bar)
            outcome.embedded, outcome.reused, outcome.resumed_chunks = totals
    except TooManyRejects as error:
        write_rejects(work / "rejects.jsonl", error.rejects)
        raise
    finally:
        for embedder in embedders.values():
            embedder.close()
    if options.slice is not None and not options.merge_only:
        return outcome
    outcome.result = merge(params, count, options.catalog)
    return outcome


def merge_only(options: BuildOptions, say: Callable[[str], None]) -> BuildOutcome:
    work = params_of(options, 1).work
    slicings = slice_directories(work)
    if not slicings:
        raise BuildError(f"cannot merge: no slices in {work} (run build --slice I/N first)")
    if len(slicings) > 1:
        raise BuildError(f"cannot merge: {work} holds slices of several counts "
                         f"{sorted(slicings)}; remove the stale ones")
    (count,) = slicings
    records = load_slices(params_of(options, 0), count, sha256_file(options.catalog)) \
        if options.shards is None else None
    shard_count = options.shards or (records[0]["shard_count"] if records else 1)
    result = merge(params_of(options, shard_count), count, options.catalog)
    say(f"merged {count} slices")
    return BuildOutcome(result, result.version)


def capture_online_writes(
    client: Any, collection: str, version: str, space_id: str, lexical: str | None = None
) -> str:
    """Opens the pending version on every shard before any row is embedded, so online
    writes made during the build reach it. A hybrid build (``lexical``) of an existing
    collection needs it hybrid in that language (BuildError before anything is embedded)."""
    from contentembed.client import ApiError
    from contentembed.pipeline.hybrid import NotHybrid, check_hybrid

    try:
        info = client.get_collection(collection)
    except ApiError as error:
        if error.code == "NOT_FOUND":
            kind = " (publishing the bundle creates it hybrid)" if lexical else ""
            return (f"collection {collection} does not exist yet{kind}: no online writes "
                    "to capture")
        raise BuildError(f"cannot open version {version}: {error}; build with --offline to "
                         "skip capturing online writes") from None
    if version in info.versions:
        # The default version names (catalog, model, params, shards): the same build.
        raise VersionExists(
            f"{collection} already has version {version} loaded (this catalog, model and "
            f"parameters); nothing new to build. Give --version to build it under another name."
        )
    if lexical is not None:
        try:
            check_hybrid(info, lexical)
        except NotHybrid as error:
            raise BuildError(str(error)) from None
    elif info.lexical:
        # The shards refuse a dense bundle for a hybrid collection (LEXICAL_MISMATCH):
        # said now, before anything is embedded or a pending version opened.
        raise BuildError(
            f"collection {collection} is hybrid (lexical index in {info.lexical_language}): "
            f"build with --hybrid --language {info.lexical_language}"
        )
    try:
        created = client.begin_version(collection, version, space_id).created
    except ApiError as error:
        raise BuildError(f"cannot open version {version} of {collection}: {error}; build with "
                         "--offline to skip capturing online writes (then writes made during "
                         "the build are not in the bundle)") from None
    state = "opened" if created else "already open"
    return f"pending version {version} of {collection} {state}: online writes during the build reach it"


# -- local worker processes ----------------------------------------------------------
def _die_with_parent() -> None:
    try:
        import ctypes
        import signal

        from contentembed.cli.stack import PR_SET_PDEATHSIG

        prctl = ctypes.CDLL(None, use_errno=True).prctl
        prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError, ImportError):
        pass


def _worker(options: BuildOptions, params: BuildParams, space_id: str, version: str,
            index: int, count: int, addresses: list[str], queue: Any) -> None:
    _die_with_parent()
    try:
        from dataclasses import replace

        catalog = read_catalog_rows(options.catalog, None)
        opts = replace(options, space_id=space_id,
                       encoders=[] if options.local is not None else addresses)
        embedders = open_embedders(opts, catalog.modalities)
        space = next(iter(embedders.values())).space
        stats = embed_slice(catalog, embedders, space, params, version, index, count,
                            progress=lambda n: queue.put(("progress", n)))
        queue.put(("done", (stats.embedded, stats.reused, stats.resumed_chunks)))
    except TooManyRejects as error:
        queue.put(("rejects", [r.__dict__ for r in error.rejects]))
    except Exception as error:  # noqa: BLE001 - reported to the parent, which stops
        queue.put(("error", f"slice {index}/{count}: {error}"))


def run_workers(options: BuildOptions, params: BuildParams, space_id: str, version: str,
                count: int, addresses: list[str], bar: Any) -> tuple[int, int, int]:
    """Slices 0..count-1 in as many processes; they stop (SIGTERM) when this one is told
    to stop or dies."""
    import multiprocessing
    import queue as queue_module
    import signal

    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    processes = [
        context.Process(target=_worker, args=(options, params, space_id, version, i, count,
                                              addresses, queue), daemon=True)
        for i in range(count)
    ]

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, stop)
    totals = [0, 0, 0]
    finished = 0
    try:
        for process in processes:
            process.start()
        while finished < count:
            try:
                kind, value = queue.get(timeout=0.5)
            except queue_module.Empty:
                dead = [p for p in processes if p.exitcode not in (None, 0)]
                if dead:
                    raise BuildError(f"a worker exited with code {dead[0].exitcode}") from None
                continue
            if kind == "progress" and bar is not None:
                bar.update(value)
            elif kind == "done":
                finished += 1
                totals = [a + b for a, b in zip(totals, value)]
            elif kind == "rejects":
                rejects = [Reject(**r) for r in value]
                raise TooManyRejects(len(rejects), params.max_rejects, rejects)
            elif kind == "error":
                raise BuildError(value)
    finally:
        signal.signal(signal.SIGTERM, previous)
        for process in processes:
            if process.is_alive():
                process.terminate()
        for process in processes:
            process.join(10)
    return totals[0], totals[1], totals[2]
