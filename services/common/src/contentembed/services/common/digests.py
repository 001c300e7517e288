"""File digests shared by the index (snapshots, bundles) and the batch pipeline (pure:
hashlib only, so the SDK's base install can use it)."""

from __future__ import annotations

import hashlib
from pathlib import Path

READ_BYTES = 1 << 20


def sha256_file(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(READ_BYTES), b""):
            sha.update(chunk)
    return sha.hexdigest()
