"""Lexical-only collections at the gateway over in-memory shards: created with no space and
no encoder, written with text and no vector, searched lexical without embedding, and every
request that would need vectors refused before any encoder or shard search."""

from __future__ import annotations

import numpy as np
import pytest

from contentembed.services.common.errors import (
    ContentEmbedError,
    FailedPrecondition,
    InvalidArgument,
)
from contentembed.services.gateway.ingest import Document
from contentembed.services.gateway.ports import IMAGE, LexicalConfig
from contentembed.services.gateway.search import BatchQuery, Query, Retrieval, RetrievalOptions
from tests.support.gateway_fakes import FakeEncoder, FakeShard, fake_gateway, soon

TEXTS = [
    f"{color} {thing} model {code}"
    for code, (color, thing) in enumerate(
        (color, thing)
        for thing in ("kettle", "tent", "lamp", "mug")
        for color in ("red", "blue", "green", "black")
    )
]
ONLY = LexicalConfig(lexical_only=True)


def stack(encoders=None):
    """Three shards, the encoders given (none by default: nothing may need one)."""
    encoders = [] if encoders is None else encoders
    shards = [FakeShard(0), FakeShard(1), FakeShard(2)]
    gateway = fake_gateway(encoders, shards)
    gateway.create_collection("words", "", False, soon(), lexical=ONLY)
    gateway.upsert_documents(
        "words", [Document(f"d{i}", text, {"n": i}) for i, text in enumerate(TEXTS)], soon()
    )
    for shard in shards:
        shard.calls.clear()
        shard.searches.clear()
    return gateway, shards


def searched(shards) -> list:
    return [call for shard in shards for call in shard.searches]


def test_created_on_every_shard_without_a_space_and_the_summary_says_so() -> None:
    gateway, shards = stack()
    for shard in shards:
        collection = shard.collections["words"]
        assert collection.lexical == ONLY and collection.dim == 0
        assert collection.version_spaces == {"v0": ""}
    summary = gateway.get_collection("words", soon())
    assert summary.lexical == ONLY and summary.space_id == "" and summary.dim == 0
    assert summary.item_count == len(TEXTS)
    listed, _ = gateway.list_collections(10, "", soon())
    assert [s.lexical for s in listed] == [ONLY]


@pytest.mark.parametrize(
    "kwargs", [{"space_id": "space-a"}, {"model": "m"}, {"modality": IMAGE}],
)
def test_a_space_model_or_image_modality_with_lexical_only_is_refused(kwargs) -> None:
    encoder = FakeEncoder("space-a")
    shards = [FakeShard(0)]
    gateway = fake_gateway([encoder], shards)
    space_id = kwargs.pop("space_id", "")
    with pytest.raises(InvalidArgument) as raised:
        gateway.create_collection("words", space_id, False, soon(), lexical=ONLY, **kwargs)
    assert raised.value.reason == "BAD_LEXICAL_CONFIG"
    assert not shards[0].calls


def test_exist_ok_with_another_kind_is_a_mismatch() -> None:
    gateway, _ = stack([FakeEncoder("space-a")])
    with pytest.raises(ContentEmbedError) as raised:
        gateway.create_collection("words", "", True, soon(), lexical=LexicalConfig())
    assert raised.value.reason == "LEXICAL_MISMATCH"
    _, created = gateway.create_collection("words", "", True, soon(), lexical=ONLY)
    assert not created


def test_writes_carry_text_and_no_vector_and_call_no_encoder() -> None:
    encoder = FakeEncoder("space-a")  # running, but a lexical-only write must not use it
    gateway, shards = stack([encoder])
    count, truncated = gateway.upsert_documents(
        "words", [Document("new", "a brand new kettle", {"k": 1})], soon()
    )
    assert (count, truncated) == (1, [])
    assert not encoder.batches
    upserts = [args for shard in shards for name, args in shard.calls if name == "upsert"]
    assert upserts == [("words", "", ("new",))]
    holder = next(s for s in shards if "new" in s.collections["words"].items["v0"])
    vector, metadata = holder.collections["words"].items["v0"]["new"]
    assert vector.size == 0 and metadata == {"k": 1}
    assert holder.collections["words"].texts["v0"]["new"] == "a brand new kettle"


def test_an_image_document_is_refused_before_any_write() -> None:
    gateway, shards = stack()
    with pytest.raises(InvalidArgument) as raised:
        gateway.upsert_documents(
            "words", [Document("t", "some text", {}), Document("i", b"\x89PNG", {})], soon()
        )
    assert raised.value.reason == "TEXT_REQUIRED"
    assert not any(name == "upsert" for shard in shards for name, _ in shard.calls)


def test_get_documents_returns_the_text_and_no_vector() -> None:
    gateway, _ = stack()
    found, missing = gateway.get_documents("words", ["d1", "gone"], soon())
    assert [(d.id, d.text, d.vector.size) for d in found] == [("d1", TEXTS[1], 0)]
    assert missing == ["gone"]


@pytest.mark.parametrize("mode", [None, Retrieval.LEXICAL])
def test_a_text_search_is_lexical_and_embeds_nothing(mode) -> None:
    gateway, shards = stack()  # no encoder at all
    outcome = gateway.search(
        Query("words", "blue tent", 3, soon(), retrieval=RetrievalOptions(mode=mode))
    )
    assert outcome.mode is Retrieval.LEXICAL and outcome.query_vector is None
    assert outcome.hits[0].id == "d5" and outcome.hits[0].lexical_rank == 1
    calls = searched(shards)
    assert len(calls) == 3 and all(c.vectors == 0 and c.texts == ("blue tent",) for c in calls)


@pytest.mark.parametrize(
    "change",
    [
        {"retrieval": RetrievalOptions(mode=Retrieval.DENSE)},
        {"retrieval": RetrievalOptions(mode=Retrieval.HYBRID)},
        {"item_id": "d1"},
        {"vector": np.ones(8, np.float32), "vector_space_id": "space-a"},
        {"content": b"\x89PNG"},
        {"also_collections": ["words2"]},
    ],
)
def test_whatever_needs_vectors_is_dense_not_enabled_with_no_encoder_or_shard_search(change) -> None:
    encoder = FakeEncoder("space-a")
    gateway, shards = stack([encoder])
    gateway.create_collection("words2", "", False, soon(), lexical=ONLY)
    args = {"collection": "words", "content": "blue tent", "top_k": 3, "deadline": soon(),
            **change}
    with pytest.raises(FailedPrecondition) as raised:
        gateway.search(Query(**args))
    assert raised.value.reason == "DENSE_NOT_ENABLED"
    assert not encoder.batches and not searched(shards)


@pytest.mark.parametrize("mode", [None, Retrieval.LEXICAL])
def test_a_batch_is_lexical_and_embeds_nothing(mode) -> None:
    gateway, shards = stack()
    outcomes = gateway.search_batch(
        BatchQuery("words", ["blue tent", "red mug"], 3, soon(),
                   retrieval=RetrievalOptions(mode=mode))
    )
    assert [o.mode for o in outcomes] == [Retrieval.LEXICAL] * 2
    assert [o.hits[0].id for o in outcomes] == ["d5", "d12"]
    assert all(c.vectors == 0 and c.texts == ("blue tent", "red mug") for c in searched(shards))


@pytest.mark.parametrize("mode", [Retrieval.DENSE, Retrieval.HYBRID])
def test_a_dense_or_hybrid_batch_is_refused(mode) -> None:
    encoder = FakeEncoder("space-a")
    gateway, shards = stack([encoder])
    with pytest.raises(FailedPrecondition) as raised:
        gateway.search_batch(
            BatchQuery("words", ["blue tent"], 3, soon(), retrieval=RetrievalOptions(mode=mode))
        )
    assert raised.value.reason == "DENSE_NOT_ENABLED"
    assert not encoder.batches and not searched(shards)


def test_candidates_and_versions_do_not_apply() -> None:
    encoder = FakeEncoder("space-a")
    gateway, shards = stack([encoder])
    with pytest.raises(FailedPrecondition) as raised:
        gateway.set_candidate("words", "v1", 0.5, 0.0, soon())
    assert raised.value.reason == "LEXICAL_ONLY"
    with pytest.raises(FailedPrecondition) as raised:
        gateway.begin_version("words", "v1", "space-a", soon())
    assert raised.value.reason == "LEXICAL_ONLY"
    assert not any(name == "begin_version" for shard in shards for name, _ in shard.calls)
    assert "words" not in gateway.candidates


def test_the_space_and_lexical_only_are_learnt_in_one_round_of_shard_calls() -> None:
    gateway, shards = stack()
    gateway.collection_spaces.forget("words")
    for _ in range(2):
        gateway.search(Query("words", "green lamp", 3, soon()))
    assert [sum(1 for name, _ in s.calls if name == "get_collection") for s in shards] == [1, 1, 1]
