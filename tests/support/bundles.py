"""Bundles for tests of publishing and versions, written by the build's own bundle writer
straight from vectors, without embedding a catalog."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from contentembed.pipeline.build import BundleContents
from contentembed.pipeline.build import write_bundle as write_contents


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
    contents = BundleContents(
        collection=collection, version=version,
        space={"space_id": space_id, "model_id": space_id.split("@")[0], "model_revision": "",
               "dim": int(vectors.shape[1])},
        modalities=["text"], hnsw={"m": 16, "ef_construction": 200, "ef_search": 100},
        catalog={"name": "test", "sha256": "", "rows": len(ids)},
        ids=list(ids), vectors=np.asarray(vectors, dtype=np.float32),
        metadata=list(metadata or [{} for _ in ids]), digests=["" for _ in ids],
    )
    directory.mkdir(parents=True)
    write_contents(directory, contents, shard_count)
    return directory
