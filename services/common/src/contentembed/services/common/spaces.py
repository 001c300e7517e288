"""Embedding-space identity: which model (and exactly which weights) made a vector."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".json", ".txt")
DIGEST_PREFIX_LEN = 12


@dataclass(frozen=True)
class Space:
    """(model id, model revision, dim, normalization) with a stable string id."""

    model_id: str
    model_revision: str
    dim: int
    l2_normalized: bool = True

    @property
    def space_id(self) -> str:
        return f"{self.model_id}@{self.model_revision[:DIGEST_PREFIX_LEN]}"


def digest_files(root: Path, suffixes: tuple[str, ...] = WEIGHT_SUFFIXES) -> str:
    """sha256 over every weight/config/vocabulary file under root (or root itself),
    names included, so a renamed or swapped file changes the space id."""
    files = [root] if root.is_file() else sorted(
        p for p in root.rglob("*") if p.is_file() and p.suffix in suffixes
    )
    if not files:
        raise FileNotFoundError(f"no model files under {root}")
    sha = hashlib.sha256()
    for path in files:
        sha.update(str(path.relative_to(root) if root.is_dir() else path.name).encode())
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                sha.update(chunk)
    return sha.hexdigest()


def space_of_model_dir(model_dir: Path, dim: int, model_id: str | None = None) -> Space:
    """The space of a model loaded from a directory. Both CLIP towers loaded from one
    directory get the same space, which is what lets a text query search images."""
    return Space(model_id=model_id or model_dir.name, model_revision=digest_files(model_dir), dim=dim)
