"""Gateway routing by space: cache, cross-modal queries, encoder redeployed with another model."""

from __future__ import annotations

import time
import urllib.request
from contextlib import ExitStack

import pytest

from contentembed.client import ApiError, Client
from contentembed.services.gateway.cache import cache_key
from contentembed.services.gateway.service import GatewayService, GatewaySettings
from contentembed.services.image_encoder.service import ImageEncoderService, ImageEncoderSettings
from contentembed.services.index.service import IndexService, IndexSettings
from contentembed.services.text_encoder.service import TextEncoderService, TextEncoderSettings
from contentembed.services.text_encoder.tfidf import TfidfModel
from tests.conftest import running_service, settings_for_test
from tests.support.images import encoded, photo_like
from tests.support.tiny_models import save_tiny_clip


def gateway_over(stack: ExitStack, encoders: list, **overrides):
    shards = [
        stack.enter_context(running_service(
            IndexService, settings_for_test(IndexSettings, shard_index=i, shard_count=2)))
        for i in range(2)
    ]
    settings = settings_for_test(
        GatewaySettings,
        encoder_endpoints=[e.address for e in encoders],
        index_endpoints=[s.address for s in shards],
        downstream_wait_s=30.0,
        **overrides,
    )
    gateway = stack.enter_context(running_service(GatewayService, settings))
    assert gateway.load_error is None, gateway.load_error
    return gateway


def test_repeated_query_is_served_from_the_cache_without_the_encoder(text_encoder) -> None:
    with ExitStack() as stack:
        gateway = gateway_over(stack, [text_encoder])
        with Client(gateway.address) as client:
            client.create_collection("docs")
            client.upsert_documents("docs", [{"id": "k", "text": "a gooseneck kettle"},
                                             {"id": "t", "text": "a camping tent"}])
            first = client.search("docs", text="something to pour hot water", top_k=2)
            items_before = text_encoder.service.batcher.items_run
            second = client.search("docs", text="something to pour hot water", top_k=2)
            assert text_encoder.service.batcher.items_run == items_before  # encoder not called
            third = client.search("docs", text="somewhere to sleep outside", top_k=1)
            assert text_encoder.service.batcher.items_run == items_before + 1
        assert not first.cache_hit and second.cache_hit and not third.cache_hit
        assert [h.id for h in second.hits] == [h.id for h in first.hits]
        assert [h.score for h in second.hits] == [h.score for h in first.hits]
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{gateway.metrics_port}/metrics").read().decode()
        assert 'contentembed_query_cache_lookups_total{result="hit"} 1.0' in metrics
        assert 'contentembed_search_queries_total{collection="docs",mode="dense"} 3.0' in metrics
        assert 'contentembed_search_stage_seconds_count{mode="dense",stage="encode"} 3.0' in metrics


def test_image_collections_use_the_image_encoder_of_their_space(text_encoder) -> None:
    images = {f"img-{seed}": encoded(photo_like(seed)) for seed in range(6)}
    with ExitStack() as stack:
        pixels = stack.enter_context(running_service(ImageEncoderService, settings_for_test(ImageEncoderSettings)))
        gateway = gateway_over(stack, [text_encoder, pixels])
        pixel_space = pixels.service.backend.space.space_id
        with Client(gateway.address) as client:
            info = client.create_collection("photos", space_id=pixel_space).collection
            assert info.space_id == pixel_space and info.dim == 768
            client.upsert_documents("photos", [{"id": k, "image": v} for k, v in images.items()])
            result = client.search("photos", image=images["img-3"], top_k=1)
            assert result.hits[0].id == "img-3" and result.space_id == pixel_space
            # No text encoder embeds into the pixels space: refused, never answered.
            with pytest.raises(ApiError) as caught:
                client.search("photos", text="a photo", top_k=1)
            assert caught.value.code == "FAILED_PRECONDITION"
            assert "no encoder embeds text" in caught.value.message
            # Text collections still default to the text encoder's space.
            assert client.create_collection("words").collection.space_id == text_encoder.service.backend.space.space_id


def test_text_finds_images_through_a_shared_clip_space(tmp_path) -> None:
    model_dir = save_tiny_clip(tmp_path / "tiny-clip")
    with ExitStack() as stack:
        clip_text = stack.enter_context(running_service(TextEncoderService, settings_for_test(
            TextEncoderSettings, backend="clip", model=str(model_dir), device="cpu")))
        clip_image = stack.enter_context(running_service(ImageEncoderService, settings_for_test(
            ImageEncoderSettings, backend="clip", model=str(model_dir), device="cpu")))
        gateway = gateway_over(stack, [clip_text, clip_image])
        with Client(gateway.address) as client:
            info = client.create_collection("clip-photos").collection  # the only text encoder's space
            assert info.space_id == clip_image.service.backend.space.space_id
            client.upsert_documents("clip-photos", [
                {"id": f"p{seed}", "image": encoded(photo_like(seed))} for seed in range(4)])
            text_hits = client.search("clip-photos", text="a striped pattern", top_k=4)
            image_hits = client.search("clip-photos", image=encoded(photo_like(2)), top_k=1)
        # Random weights: no claim about which image; the plumbing must hold.
        assert {h.id for h in text_hits.hits} == {"p0", "p1", "p2", "p3"}
        assert image_hits.hits[0].id == "p2"


def test_encoder_redeployed_with_another_model_is_refused_and_its_cache_dropped(tmp_path) -> None:
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    TfidfModel.fit(["red apple pie", "green pear tart"]).save(first)
    TfidfModel.fit(["red apple pie", "green pear tart", "blue plum jam"]).save(second)
    with ExitStack() as stack:
        encoder = running_service(TextEncoderService, settings_for_test(
            TextEncoderSettings, backend="tfidf", model=str(first)))
        old = encoder.__enter__()
        gateway = gateway_over(stack, [old], encoder_refresh_s=0.2)
        with Client(gateway.address) as client:
            client.create_collection("fruit")
            client.upsert_documents("fruit", [{"id": "apple", "text": "red apple pie"}])
            assert client.search("fruit", text="apple", top_k=1).hits[0].id == "apple"
            port = old.port
            encoder.__exit__(None, None, None)
            # The same endpoint now serves another vocabulary: another space.
            stack.enter_context(running_service(TextEncoderService, settings_for_test(
                TextEncoderSettings, backend="tfidf", model=str(second), port=port)))
            old_key = cache_key(TfidfModel.load(first).space.space_id, "text", "apple")
            cache = gateway.service.gateway.cache
            deadline = time.monotonic() + 10
            while cache.get(old_key) is not None:  # the route refresh notices within 0.2 s
                assert time.monotonic() < deadline, "cache never dropped the old space"
                time.sleep(0.1)
            with pytest.raises(ApiError) as caught:
                client.search("fruit", text="apple", top_k=1)
            assert caught.value.code == "FAILED_PRECONDITION"


def test_several_collections_merge_within_a_space_and_fuse_across_spaces(text_encoder, tmp_path) -> None:
    model_dir = save_tiny_clip(tmp_path / "tiny-clip")
    with ExitStack() as stack:
        clip_text = stack.enter_context(running_service(TextEncoderService, settings_for_test(
            TextEncoderSettings, backend="clip", model=str(model_dir), device="cpu")))
        gateway = gateway_over(stack, [text_encoder, clip_text])
        minilm = text_encoder.service.backend.space.space_id
        clip = clip_text.service.backend.space.space_id
        with Client(gateway.address) as client:
            with pytest.raises(ApiError) as caught:  # two text encoders: the space must be named
                client.create_collection("ambiguous")
            assert caught.value.code == "FAILED_PRECONDITION"
            for name, space in (("kitchen", minilm), ("outdoor", minilm), ("clipped", clip)):
                client.create_collection(name, space_id=space)
            client.upsert_documents("kitchen", [{"id": "pan", "text": "a cast iron pan"},
                                                {"id": "kettle", "text": "an electric kettle"}])
            client.upsert_documents("outdoor", [{"id": "tent", "text": "a two person tent"},
                                                {"id": "pan", "text": "a camping frying pan"}])
            client.upsert_documents("clipped", [{"id": "c1", "text": "a cast iron pan"}])
            same_space = client.search("kitchen", text="frying pan", top_k=4, also_collections=["outdoor"])
            across = client.search("kitchen", text="frying pan", top_k=4, also_collections=["clipped"])
    assert not same_space.fused
    assert {(h.collection, h.id) for h in same_space.hits} == {
        ("kitchen", "pan"), ("kitchen", "kettle"), ("outdoor", "tent"), ("outdoor", "pan")}
    scores = [h.score for h in same_space.hits]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0.3  # cosine scores
    assert across.fused and across.space_id == ",".join(sorted([minilm, clip]))
    assert across.space_ids == sorted([minilm, clip]) and same_space.space_ids == [minilm]
    assert [h.score for h in across.hits][:2] == pytest.approx([1 / 61, 1 / 61])  # each list's first
    assert {h.collection for h in across.hits} == {"kitchen", "clipped"}
