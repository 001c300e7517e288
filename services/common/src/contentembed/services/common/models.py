"""Loading models from local files only; shared by the encoder backends (no grpc).

torch is imported lazily so that services without a model (index, gateway) never load it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

import numpy as np

from contentembed.services.common.errors import FailedPrecondition
from contentembed.services.common.spaces import Space, space_of_model_dir

InputT = TypeVar("InputT")


@dataclass(frozen=True)
class Embeddings:
    vectors: np.ndarray  # (n, dim) float32, unit L2 norm
    truncated: list[bool]


class EmbeddingBackend(Generic[InputT]):
    """What an encoder service needs from a model."""

    name: str
    space: Space
    # Longer inputs are cut to this many tokens; 0 when the backend never truncates.
    max_input_tokens: int = 0

    def check(self, inputs: list[InputT]) -> None:
        """Rejects inputs this backend cannot embed (InvalidArgument naming the item),
        before they join a batch with other callers' inputs."""

    def encode(self, inputs: list[InputT]) -> Embeddings:
        raise NotImplementedError


def offline_hub() -> None:
    """A missing file must fail at load, never turn into a download attempt."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pick_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def local_dir(model: str, what: str) -> Path:
    path = Path(model).expanduser()
    if not path.is_dir():
        raise FailedPrecondition(
            f"{what} model {model!r} is not a local directory; mount the model files "
            "and pass their directory (nothing is downloaded)"
        )
    return path.resolve()


def local_file(model: str, what: str) -> Path:
    path = Path(model).expanduser()
    if not path.is_file():
        raise FailedPrecondition(
            f"{what} weights {model!r} are not a local file; mount the file and pass its path "
            "(nothing is downloaded)"
        )
    return path.resolve()


@dataclass(frozen=True)
class ClipTower:
    network: Any  # CLIPTextModelWithProjection or CLIPVisionModelWithProjection, in eval mode
    model_dir: Path
    space: Space


def load_clip_tower(model: str, tower: Literal["text", "vision"], device: str) -> ClipTower:
    """One tower + projection of a transformers CLIP directory. Both towers of one
    directory get one space, which is what lets a text query search images."""
    offline_hub()
    from transformers import CLIPConfig, CLIPTextModelWithProjection, CLIPVisionModelWithProjection

    model_dir = local_dir(model, "CLIP")
    # local_files_only: a mounted directory, never the hub (bandit cannot see that).
    config = CLIPConfig.from_pretrained(model_dir, local_files_only=True)  # nosec B615
    # The projection size lives on the joint config; a tower config alone would default to
    # 512 and reinitialise the projection of any other CLIP.
    tower_config = config.text_config if tower == "text" else config.vision_config
    tower_config.projection_dim = config.projection_dim
    tower_class = CLIPTextModelWithProjection if tower == "text" else CLIPVisionModelWithProjection
    network = tower_class.from_pretrained(model_dir, config=tower_config, local_files_only=True)
    return ClipTower(
        network.eval().to(device), model_dir, space_of_model_dir(model_dir, config.projection_dim)
    )
