"""Image embedding backends behind the shared backend interface. Pure model code: no grpc.

- ``pixels``: the original prototype's minimal embedding (features of the image at 32x32 grey);
  no weights, the zero-setup default.
- ``torchvision``: any torchvision classification model (``vit_b_16`` ...) with its
  classifier removed, weights from a local state-dict file, the weights' own transforms.
- ``clip``: the vision tower + projection of a transformers CLIP directory, in the space
  the text-encoder's ``clip`` backend shares, so text can find images.
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np
from PIL import Image

from contentembed.services.common.errors import FailedPrecondition
from contentembed.services.common.models import (
    EmbeddingBackend,
    Embeddings,
    load_clip_tower,
    local_file,
    pick_device,
)
from contentembed.services.common.spaces import Space, digest_files
from contentembed.services.common.vectors import l2_normalize

log = logging.getLogger(__name__)

ImageBackend = EmbeddingBackend[Image.Image]
BACKENDS = ("pixels", "torchvision", "clip")

# The pixel embedding's definition; its digest is the space's revision, so changing the
# recipe changes the space id and old vectors are never mixed with new ones.
PIXELS_RECIPE = "pixels-v1: L 32x32 bilinear, 2x2 mean to 16x16, x/y differences, L2"


def pixel_features(gray: np.ndarray) -> np.ndarray:
    """The seed's features of one 32x32 grayscale image in [0, 1]: 768 values."""
    x = gray.reshape(16, 2, 16, 2).mean(axis=(1, 3))
    gx = np.diff(x, axis=1, append=x[:, -1:])
    gy = np.diff(x, axis=0, append=x[-1:, :])
    return np.concatenate([x.ravel(), gx.ravel(), gy.ravel()]).astype(np.float32)


class PixelsBackend(ImageBackend):
    name = "pixels"

    def __init__(self) -> None:
        revision = hashlib.sha256(PIXELS_RECIPE.encode()).hexdigest()
        self.space = Space(model_id="pixels", model_revision=revision, dim=768)

    def encode(self, inputs: list[Image.Image]) -> Embeddings:
        features = np.stack(
            [
                pixel_features(
                    np.asarray(image.convert("L").resize((32, 32), Image.BILINEAR), np.float32)
                    / 255.0
                )
                for image in inputs
            ]
        )
        # A flat image has no gradient and could be all zeros: keep it a valid direction.
        features[np.linalg.norm(features, axis=1) == 0, 0] = 1.0
        return Embeddings(l2_normalize(features), [False] * len(inputs))


def strip_classifier(model: object, name: str) -> None:
    """Replaces the classification head with identity, leaving the pooled features."""
    import torch

    identity = torch.nn.Identity()
    for attribute in ("heads", "fc", "head"):  # ViT, ResNet/RegNet/Inception, Swin
        if isinstance(getattr(model, attribute, None), torch.nn.Module):
            setattr(model, attribute, identity)
            return
    classifier = getattr(model, "classifier", None)
    if isinstance(classifier, torch.nn.Linear):  # DenseNet
        model.classifier = identity  # type: ignore[attr-defined]
        return
    if isinstance(classifier, torch.nn.Sequential):  # EfficientNet, MobileNet, ConvNeXt, VGG
        for index in range(len(classifier) - 1, -1, -1):
            if isinstance(classifier[index], torch.nn.Linear):
                classifier[index] = identity
                return
    raise FailedPrecondition(f"cannot find the classification head of torchvision model {name!r}")


class TorchvisionBackend(ImageBackend):
    name = "torchvision"

    def __init__(self, model: str, weights: str, device: str = "auto") -> None:
        import torch
        import torchvision
        from torchvision.models import get_model, get_model_weights, list_models

        if model not in list_models(module=torchvision.models):
            raise FailedPrecondition(
                f"{model!r} is not a torchvision classification model (e.g. vit_b_16, resnet50)"
            )
        if not weights:
            raise FailedPrecondition(
                f"torchvision model {model!r} needs --weights: a local state-dict file; "
                "random weights are never used in place of missing ones"
            )
        weights_path = local_file(weights, "torchvision")
        self.device = pick_device(device)
        self._torch = torch
        network = get_model(model, weights=None)
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        try:
            network.load_state_dict(state)
        except RuntimeError as error:
            raise FailedPrecondition(f"{weights_path} does not fit {model}: {error}") from None
        strip_classifier(network, model)
        self._network = network.eval().to(self.device)
        # The preprocessing the weights were trained with: resize, center crop, mean/std.
        self._transform = get_model_weights(model).DEFAULT.transforms()
        probe = self._forward([Image.new("RGB", (64, 64))])
        self.space = Space(
            model_id=model, model_revision=digest_files(weights_path), dim=probe.shape[1]
        )

    def _forward(self, images: list[Image.Image]) -> np.ndarray:
        batch = self._torch.stack([self._transform(image) for image in images]).to(self.device)
        with self._torch.inference_mode():
            output = self._network(batch)
        return output.flatten(1).float().cpu().numpy()

    def encode(self, inputs: list[Image.Image]) -> Embeddings:
        return Embeddings(l2_normalize(self._forward(inputs)), [False] * len(inputs))


class ClipVisionBackend(ImageBackend):
    name = "clip"

    def __init__(self, model: str, device: str = "auto") -> None:
        import torch
        from transformers import AutoImageProcessor

        self.device = pick_device(device)
        self._torch = torch
        tower = load_clip_tower(model, "vision", self.device)
        self._model = tower.network
        # local_files_only: a mounted directory, never the hub (bandit cannot see that).
        self._processor = AutoImageProcessor.from_pretrained(  # nosec B615
            tower.model_dir, local_files_only=True
        )
        self.space = tower.space

    def encode(self, inputs: list[Image.Image]) -> Embeddings:
        pixels = self._processor(images=inputs, return_tensors="pt")["pixel_values"]
        with self._torch.inference_mode():
            vectors = self._model(pixel_values=pixels.to(self.device)).image_embeds
        return Embeddings(l2_normalize(vectors.float().cpu().numpy()), [False] * len(inputs))


def load_backend(backend: str, model: str, weights: str, device: str = "auto") -> ImageBackend:
    if backend == "pixels":
        return PixelsBackend()
    if backend == "torchvision":
        return TorchvisionBackend(model, weights, device)
    if backend == "clip":
        return ClipVisionBackend(model, device)
    raise FailedPrecondition(f"unknown image backend {backend!r}; choose one of {BACKENDS}")
