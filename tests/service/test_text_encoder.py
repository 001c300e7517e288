"""The text-encoder over real gRPC with the real all-MiniLM-L6-v2."""

from __future__ import annotations

import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from contentembed.common.v1 import types_pb2
from contentembed.encoder.v1 import encoder_service_pb2 as pb
from contentembed.encoder.v1 import encoder_service_pb2_grpc as pb_grpc
from contentembed.services.text_encoder.service import TextEncoderService, TextEncoderSettings
from tests.conftest import error_reason, running_service, settings_for_test


@pytest.fixture
def stub(text_encoder, channel_to) -> pb_grpc.EncoderServiceStub:
    return pb_grpc.EncoderServiceStub(channel_to(text_encoder.address))


def embed(stub: pb_grpc.EncoderServiceStub, *texts: str) -> tuple[np.ndarray, pb.EmbedResponse]:
    response = stub.Embed(pb.EmbedRequest(inputs=[pb.EmbedInput(text=t) for t in texts]))
    batch = response.vectors
    matrix = np.frombuffer(batch.data, dtype="<f4").reshape(batch.count, batch.dim)
    return matrix, response


def test_info_describes_minilm_space(stub) -> None:
    info = stub.GetEncoderInfo(pb.GetEncoderInfoRequest())
    assert info.modality == types_pb2.MODALITY_TEXT
    assert info.space.dim == 384
    assert info.space.space_id.startswith("all-MiniLM-L6-v2@")
    assert info.space.space_id == f"all-MiniLM-L6-v2@{info.space.model_revision[:12]}"
    assert info.space.normalization == types_pb2.NORMALIZATION_L2
    assert info.max_batch_size == 16 and info.max_input_tokens == 256


def test_vectors_are_normalized_and_semantic(stub) -> None:
    vectors, response = embed(
        stub,
        "wireless noise cancelling headphones",
        "bluetooth headset that blocks out sound",
        "espresso coffee beans",
    )
    assert vectors.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2
    assert response.space_id.startswith("all-MiniLM-L6-v2@")
    assert list(response.truncated) == [False, False, False]


def test_batched_equals_one_at_a_time(stub) -> None:
    texts = ["red running shoes", "a cast iron pan", "kids wooden puzzle"]
    together, _ = embed(stub, *texts)
    alone = np.stack([embed(stub, t)[0][0] for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_long_text_is_truncated_and_flagged(stub) -> None:
    _, response = embed(stub, "short", "word " * 600)
    assert list(response.truncated) == [False, True]


@pytest.mark.parametrize(
    ("inputs", "reason", "mentions"),
    [
        ([], "EMPTY_BATCH", "inputs"),
        ([pb.EmbedInput(text="ok"), pb.EmbedInput(text="  ")], "EMPTY_TEXT", "inputs[1]"),
        ([pb.EmbedInput(text="x" * 5000)], "TEXT_TOO_LONG", "inputs[0]"),
        ([pb.EmbedInput(text="ok")] * 17, "BATCH_TOO_LARGE", "16"),
        ([pb.EmbedInput(image=types_pb2.Image(data=b"\x89PNG"))], "WRONG_MODALITY", "inputs[0]"),
    ],
)
def test_bad_input_is_invalid_argument_naming_the_item(stub, inputs, reason, mentions) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.Embed(pb.EmbedRequest(inputs=inputs))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_reason(caught.value) == reason
    assert mentions in caught.value.details()
    # and the service still answers
    assert embed(stub, "still alive")[0].shape == (1, 384)


def test_model_that_fails_to_load_keeps_process_live_but_not_serving(tmp_path, channel_to) -> None:
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    settings = settings_for_test(TextEncoderSettings, model=str(broken))
    with running_service(TextEncoderService, settings) as runtime:
        assert runtime.load_error is not None
        channel = channel_to(runtime.address)
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest()).status
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.RpcError) as caught:
            pb_grpc.EncoderServiceStub(channel).Embed(pb.EmbedRequest(inputs=[pb.EmbedInput(text="x")]))
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_unknown_model_name_fails_clearly_without_download(tmp_path) -> None:
    settings = settings_for_test(TextEncoderSettings, model="sentence-transformers/not-here")
    with running_service(TextEncoderService, settings) as runtime:
        assert "neither a local directory" in str(runtime.load_error)


def test_concurrent_calls_are_batched_and_match_unbatched(text_encoder, stub) -> None:
    texts = [f"product number {i}: a {'red blue green'.split()[i % 3]} backpack" for i in range(32)]
    alone = np.stack([embed(stub, t)[0][0] for t in texts[:4]])
    batcher = text_encoder.service.batcher
    batches_before = batcher.batches_run
    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(lambda t: embed(stub, t)[0][0], texts))
    model_calls = batcher.batches_run - batches_before
    assert model_calls < len(texts), "every request ran alone: no dynamic batching"
    np.testing.assert_allclose(np.stack(results[:4]), alone, atol=1e-5)


def test_batching_metrics_are_exported(text_encoder, stub) -> None:
    embed(stub, "metrics please")
    body = urllib.request.urlopen(f"http://127.0.0.1:{text_encoder.metrics_port}/metrics").read().decode()
    for metric in (
        "contentembed_batch_size_items_bucket",
        "contentembed_batch_queue_depth_items",
        "contentembed_batch_queue_wait_seconds_count",
        "contentembed_batch_compute_seconds_count",
        "contentembed_batch_items_total",
    ):
        assert f'{metric}{{' in body and 'service="text-encoder"' in body, metric


def test_oversized_message_hits_the_explicit_limit(stub) -> None:
    huge = "x" * (17 * 1024 * 1024)  # above the default 16 MiB max_message_bytes
    with pytest.raises(grpc.RpcError) as caught:
        stub.Embed(pb.EmbedRequest(inputs=[pb.EmbedInput(text=huge)]))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert embed(stub, "still serving")[0].shape == (1, 384)
