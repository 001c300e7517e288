"""Backends for model-worker tests, importable by the worker's child process."""

from __future__ import annotations

import time

import numpy as np

from contentembed.services.common.errors import FailedPrecondition
from contentembed.services.common.models import EmbeddingBackend, Embeddings
from contentembed.services.common.spaces import Space

HANG = "hang"


class SleepyBackend(EmbeddingBackend[str]):
    """Embeds a text as its length; the text ``hang`` never returns (a stuck GPU call)."""

    name = "sleepy"
    space = Space("sleepy", "0" * 12, 2)

    def encode(self, inputs: list[str]) -> Embeddings:
        if HANG in inputs:
            time.sleep(3600)
        vectors = np.array([[float(len(text)), 1.0] for text in inputs], dtype=np.float32)
        return Embeddings(vectors / np.linalg.norm(vectors, axis=1, keepdims=True), [False] * len(inputs))


def failing_backend() -> EmbeddingBackend[str]:
    raise FailedPrecondition("weights /models/absent.bin are not a local file", reason="NO_WEIGHTS")


class FileSpaceBackend(SleepyBackend):
    """Its space's revision is a file's content: new files, new space."""

    def __init__(self, path: str) -> None:
        with open(path) as handle:
            self.space = Space("files", handle.read().strip().ljust(12, "0"), 2)
