"""Bundles for tests of publishing and versions, written in the documented format
(docs/bundles.md) straight from vectors, without running a build."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from contentembed.services.common.sharding import shard_for_id
from contentembed.services.index.collection import HnswCollection, HnswParams


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_bundle(
    directory: Path,
    collection: str,
    version: str,
    space_id: str,
    ids: Sequence[str],
    vectors: np.ndarray,
    shard_count: int,
    metadata: Sequence[dict[str, Any]] | None = None,
) -> Path:
    metadata = metadata or [{} for _ in ids]
    files: dict[str, str] = {}
    parts = []
    for shard in range(shard_count):
        mine = [n for n, item_id in enumerate(ids) if shard_for_id(item_id, shard_count) == shard]
        part = HnswCollection(collection, space_id, vectors.shape[1], HnswParams(), version=version)
        if mine:
            part.upsert([ids[n] for n in mine], vectors[mine], [metadata[n] for n in mine])
        name = f"shard-{shard:04d}"
        part.write_snapshot(directory / name)
        for file in ("index.bin", "items.json", "manifest.json"):
            files[f"{name}/{file}"] = sha256(directory / name / file)
        parts.append({"shard": shard, "dir": name, "items": len(mine),
                      "manifest_sha256": files[f"{name}/manifest.json"]})
    (directory / "rejects.jsonl").write_text("")
    files["rejects.jsonl"] = sha256(directory / "rejects.jsonl")
    manifest = {
        "format": "contentembed-bundle/v1", "version": version, "collection": collection,
        "space": {"space_id": space_id, "model_id": space_id.split("@")[0], "model_revision": "",
                  "dim": int(vectors.shape[1])},
        "modalities": ["text"], "metric": "cosine",
        "hnsw": {"m": 16, "ef_construction": 200, "ef_search": 100},
        "shard_count": shard_count, "items": len(ids), "rejects": 0,
        "catalog": {"name": "test", "sha256": "", "rows": len(ids)},
        "parts": parts, "files": files,
    }
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return directory
