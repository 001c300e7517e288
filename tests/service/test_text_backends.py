"""The clip and tfidf backends behind the real text-encoder server."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from contentembed.common.v1 import types_pb2
from contentembed.encoder.v1 import encoder_service_pb2 as pb
from contentembed.encoder.v1 import encoder_service_pb2_grpc as pb_grpc
from contentembed.services.common.spaces import digest_files
from contentembed.services.text_encoder.service import TextEncoderService, TextEncoderSettings
from contentembed.services.text_encoder.tfidf import TfidfModel
from tests.conftest import error_reason, running_service, settings_for_test
from tests.support.tiny_models import save_tiny_clip
from tests.unit.test_tfidf import SEED_DOCS, recall_at_k


def embed(address: str, texts: list[str]) -> tuple[np.ndarray, pb.EmbedResponse]:
    with grpc.insecure_channel(address) as channel:
        response = pb_grpc.EncoderServiceStub(channel).Embed(
            pb.EmbedRequest(inputs=[pb.EmbedInput(text=t) for t in texts])
        )
    vectors = np.frombuffer(response.vectors.data, "<f4").reshape(response.vectors.count, -1)
    return vectors, response


def info(address: str) -> pb.GetEncoderInfoResponse:
    with grpc.insecure_channel(address) as channel:
        return pb_grpc.EncoderServiceStub(channel).GetEncoderInfo(pb.GetEncoderInfoRequest())


def test_clip_text_tower_matches_the_full_model(tmp_path) -> None:
    import torch
    from transformers import AutoTokenizer, CLIPModel

    model_dir = save_tiny_clip(tmp_path / "tiny-clip")
    settings = settings_for_test(TextEncoderSettings, backend="clip", model=str(model_dir), device="cpu")
    with running_service(TextEncoderService, settings) as runtime:
        assert runtime.load_error is None, runtime.load_error
        texts = ["vertical stripes", "horizontal stripes", "center square"]
        vectors, response = embed(runtime.address, texts)
        described = info(runtime.address)

    assert described.space.dim == 16 and described.max_input_tokens == 32
    assert described.backend == "clip" and described.modality == types_pb2.MODALITY_TEXT
    assert response.space_id == f"tiny-clip@{digest_files(model_dir)[:12]}"
    full = CLIPModel.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    with torch.no_grad():
        features = full.get_text_features(**tokenizer(texts, padding=True, return_tensors="pt"))
    expected = getattr(features, "pooler_output", features).numpy()
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(vectors, expected, atol=1e-5)


def test_clip_truncates_long_text_to_its_positions(tmp_path) -> None:
    model_dir = save_tiny_clip(tmp_path / "tiny-clip")
    settings = settings_for_test(TextEncoderSettings, backend="clip", model=str(model_dir), device="cpu")
    with running_service(TextEncoderService, settings) as runtime:
        _, response = embed(runtime.address, ["short", "a" * 200])
    assert list(response.truncated) == [False, True]


def test_tfidf_backend_serves_the_seed_example(tmp_path) -> None:
    path = tmp_path / "tfidf.json"
    TfidfModel.fit(SEED_DOCS).save(path)
    settings = settings_for_test(TextEncoderSettings, backend="tfidf", model=str(path))
    with running_service(TextEncoderService, settings) as runtime:
        vectors, response = embed(runtime.address, SEED_DOCS)
        described = info(runtime.address)
        with grpc.insecure_channel(runtime.address) as channel:
            with pytest.raises(grpc.RpcError) as caught:
                pb_grpc.EncoderServiceStub(channel).Embed(
                    pb.EmbedRequest(inputs=[pb.EmbedInput(text="coffee"), pb.EmbedInput(text="xyzzy")])
                )
    assert vectors.shape == (6, 26) and described.space.dim == 26
    assert recall_at_k(vectors, vectors, 1) == 1.0
    assert response.space_id == TfidfModel.load(path).space.space_id
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_reason(caught.value) == "NO_KNOWN_TOKENS" and "inputs[1]" in caught.value.details()


def test_missing_clip_directory_is_not_serving_with_a_clear_reason(tmp_path) -> None:
    settings = settings_for_test(TextEncoderSettings, backend="clip", model=str(tmp_path / "absent"))
    with running_service(TextEncoderService, settings) as runtime:
        assert "not a local directory" in str(runtime.load_error)
