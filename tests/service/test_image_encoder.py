"""The image-encoder over real gRPC: pixels, torchvision ViT and CLIP vision backends."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from contentembed.common.v1 import types_pb2
from contentembed.encoder.v1 import encoder_service_pb2 as pb
from contentembed.encoder.v1 import encoder_service_pb2_grpc as pb_grpc
from contentembed.services.common.spaces import digest_files
from contentembed.services.image_encoder.service import ImageEncoderService, ImageEncoderSettings
from contentembed.services.text_encoder.service import TextEncoderService, TextEncoderSettings
from tests.conftest import error_reason, running_service, settings_for_test
from tests.support.images import encoded, gray_image, photo_like, seed_pattern, striped_png16
from tests.support.tiny_models import save_tiny_clip
from tests.unit.test_image_decoding import PROBE, WIDE, png_claiming_size
from tests.unit.test_tfidf import recall_at_k


def embed_images(address: str, images: list[bytes]) -> tuple[np.ndarray, pb.EmbedResponse]:
    with grpc.insecure_channel(address) as channel:
        response = pb_grpc.EncoderServiceStub(channel).Embed(
            pb.EmbedRequest(inputs=[pb.EmbedInput(image=types_pb2.Image(data=d)) for d in images])
        )
    vectors = np.frombuffer(response.vectors.data, "<f4").reshape(response.vectors.count, -1)
    return vectors, response


def encoder_info(address: str) -> pb.GetEncoderInfoResponse:
    with grpc.insecure_channel(address) as channel:
        return pb_grpc.EncoderServiceStub(channel).GetEncoderInfo(pb.GetEncoderInfoRequest())


@pytest.fixture(scope="module")
def pixels_encoder():
    settings = settings_for_test(ImageEncoderSettings, max_input_bytes=500_000, max_pixels=1_000_000)
    with running_service(ImageEncoderService, settings) as runtime:
        assert runtime.load_error is None, runtime.load_error
        yield runtime


def test_seed_notebook_check_with_the_pixels_backend(pixels_encoder) -> None:
    images = [encoded(gray_image(seed_pattern(kind, seed=i))) for i, kind in
              enumerate(["vertical", "horizontal", "center"])]
    vectors, response = embed_images(pixels_encoder.address, images)
    assert vectors.shape == (3, 768)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert recall_at_k(vectors, vectors, 1) == 1.0
    # The notebook's 1-pixel stripes average to flat grey in the 2x2 mean, so only its
    # self-retrieval holds; 2-pixel stripes survive it, and fresh noisy copies of them
    # land nearest their own kind.
    def wide(kind: str, seed: int) -> bytes:
        pattern = np.zeros((32, 32), np.float32)
        if kind == "vertical":
            pattern[:, (np.arange(32) // 2) % 2 == 0] = 1.0
        else:
            pattern[(np.arange(32) // 2) % 2 == 0, :] = 1.0
        noise = 0.05 * np.random.default_rng(seed).normal(size=(32, 32))
        return encoded(gray_image(np.clip(pattern + noise, 0, 1)))

    references = embed_images(pixels_encoder.address, [wide("vertical", 1), wide("horizontal", 2)])[0]
    fresh = embed_images(pixels_encoder.address, [wide("vertical", 3), wide("horizontal", 4)])[0]
    assert recall_at_k(fresh, references, 1) == 1.0
    info = encoder_info(pixels_encoder.address)
    assert info.modality == types_pb2.MODALITY_IMAGE and info.backend == "pixels"
    assert response.space_id == info.space.space_id and info.space.space_id.startswith("pixels@")


BAD_IMAGES = [
    (b"", "EMPTY_IMAGE"),
    (b"GIF89a garbage", "UNSUPPORTED_IMAGE"),
    (encoded(photo_like(1))[:200], "CORRUPT_IMAGE"),
    (encoded(photo_like(1), "TIFF"), "UNSUPPORTED_IMAGE"),
    (png_claiming_size(50_000, 50_000), "IMAGE_TOO_MANY_PIXELS"),
    (encoded(photo_like(1, size=(600, 600)), "BMP"), "IMAGE_TOO_LARGE"),
]


@pytest.mark.parametrize(("data", "reason"), BAD_IMAGES)
def test_every_bad_image_is_invalid_argument_and_the_service_stays_up(pixels_encoder, data, reason) -> None:
    good = encoded(photo_like(7))
    with pytest.raises(grpc.RpcError) as caught:
        embed_images(pixels_encoder.address, [good, data])
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_reason(caught.value) == reason
    assert caught.value.details().startswith("inputs[1]: ")
    assert embed_images(pixels_encoder.address, [good])[0].shape == (1, 768)


def test_text_sent_to_the_image_encoder_is_refused(pixels_encoder) -> None:
    with grpc.insecure_channel(pixels_encoder.address) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            pb_grpc.EncoderServiceStub(channel).Embed(pb.EmbedRequest(inputs=[pb.EmbedInput(text="a cat")]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_reason(caught.value) == "WRONG_MODALITY"


def test_torchvision_vit_b_16_from_a_state_dict_file(tmp_path) -> None:
    import torch
    import torchvision
    from torchvision.models import ViT_B_16_Weights

    torch.manual_seed(0)
    reference = torchvision.models.vit_b_16(weights=None).eval()
    weights = tmp_path / "vit_b_16.pth"
    torch.save(reference.state_dict(), weights)
    images = [photo_like(seed, size=(160, 120)) for seed in range(3)]

    settings = settings_for_test(
        ImageEncoderSettings, backend="torchvision", model="vit_b_16", weights=str(weights),
        device="cpu", max_batch_size=4,
    )
    with running_service(ImageEncoderService, settings) as runtime:
        assert runtime.load_error is None, runtime.load_error
        vectors, response = embed_images(runtime.address, [encoded(i) for i in images])
        info = encoder_info(runtime.address)

    assert info.space.dim == 768 and response.space_id == f"vit_b_16@{digest_files(weights)[:12]}"
    reference.heads = torch.nn.Identity()
    preprocess = ViT_B_16_Weights.DEFAULT.transforms()
    with torch.no_grad():
        expected = reference(torch.stack([preprocess(i) for i in images])).numpy()
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(vectors, expected, atol=1e-4)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"weights": ""}, "needs --weights"),
        ({"weights": "/nonexistent/vit.pth"}, "not a local file"),
        ({"model": "not_a_model", "weights": "/x.pth"}, "not a torchvision classification model"),
    ],
)
def test_torchvision_never_falls_back_to_random_weights(overrides, message) -> None:
    settings = settings_for_test(
        ImageEncoderSettings, **{"backend": "torchvision", "model": "vit_b_16", **overrides}
    )
    with running_service(ImageEncoderService, settings) as runtime:
        assert message in str(runtime.load_error)
        assert runtime.service.backend is None


def test_clip_vision_matches_the_full_model_and_shares_the_text_space(tmp_path) -> None:
    import torch
    from transformers import CLIPImageProcessor, CLIPModel

    model_dir = save_tiny_clip(tmp_path / "tiny-clip")
    images = [photo_like(seed) for seed in range(3)]
    image_settings = settings_for_test(ImageEncoderSettings, backend="clip", model=str(model_dir), device="cpu")
    text_settings = settings_for_test(TextEncoderSettings, backend="clip", model=str(model_dir), device="cpu")
    with running_service(ImageEncoderService, image_settings) as image_runtime, \
            running_service(TextEncoderService, text_settings) as text_runtime:
        assert image_runtime.load_error is None, image_runtime.load_error
        vectors, response = embed_images(image_runtime.address, [encoded(i) for i in images])
        image_info = encoder_info(image_runtime.address)
        text_info = encoder_info(text_runtime.address)

    # Cross-modal plumbing: one space id and dimension for both towers.
    assert image_info.space.space_id == text_info.space.space_id == response.space_id
    assert image_info.space.dim == text_info.space.dim == vectors.shape[1] == 16
    full = CLIPModel.from_pretrained(model_dir).eval()
    pixels = CLIPImageProcessor.from_pretrained(model_dir)(images=images, return_tensors="pt")
    with torch.no_grad():
        features = full.get_image_features(**pixels)
    expected = getattr(features, "pooler_output", features).numpy()
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(vectors, expected, atol=1e-5)


def test_an_image_too_large_to_decode_is_refused_unread_and_16_bit_pngs_are_served() -> None:
    settings = settings_for_test(ImageEncoderSettings)  # the defaults: 40 Mpx, 128 MiB decoding
    good = encoded(photo_like(7))
    with running_service(ImageEncoderService, settings) as runtime:
        with pytest.raises(grpc.RpcError) as caught:
            embed_images(runtime.address, [good, PROBE])  # 36 Mpx 16-bit RGBA, ~460 KB
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error_reason(caught.value) == "IMAGE_DECODE_TOO_LARGE"
        assert caught.value.details().startswith("inputs[1]: decoding this 6000x6000 PNG")
        assert caught.value.details().endswith(f"above the limit of {128 * 1024 * 1024}")
        # Still serving, and 16-bit PNGs 4096 wide (once refused as corrupt) are embedded.
        gray16 = striped_png16(4096, 300, ((0,), (32768,), (65535,)))
        vectors, _ = embed_images(runtime.address, [good, WIDE, gray16])
    assert vectors.shape == (3, 768)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
