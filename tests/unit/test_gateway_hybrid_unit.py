"""Hybrid retrieval at the gateway over in-memory shards: which retrieval answers, the
validation before any downstream call, one shard call per retriever pair, each retriever
merged over the shards before fusion, stable pages, and what the observers see."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from contentembed.services.common.errors import (
    ContentEmbedError,
    FailedPrecondition,
    InvalidArgument,
)
from contentembed.services.gateway.fusion import Fusion, FusionParams, fuse
from contentembed.services.gateway.ingest import Document
from contentembed.services.gateway.ports import LexicalConfig
from contentembed.services.gateway.search import BatchQuery, Query, Retrieval, RetrievalOptions
from tests.support.gateway_fakes import FakeEncoder, FakeShard, fake_gateway, soon

# Words shared unevenly, so the lexical ranking has ties, gaps and items it misses.
TEXTS = [
    f"{color} {thing} model {code}"
    for code, (color, thing) in enumerate(
        (color, thing)
        for thing in ("kettle", "tent", "lamp", "mug", "stove", "boots")
        for color in ("red", "blue", "green", "black", "white")
    )
]
HYBRID = RetrievalOptions(mode=Retrieval.HYBRID)
LEXICAL = RetrievalOptions(mode=Retrieval.LEXICAL)
DENSE = RetrievalOptions(mode=Retrieval.DENSE)


def stack(**config):
    encoder = FakeEncoder("space-a")
    shards = [FakeShard(0), FakeShard(1), FakeShard(2)]
    gateway = fake_gateway([encoder], shards, **config)
    gateway.create_collection("shop", "", False, soon(), lexical=LexicalConfig())
    gateway.create_collection("plain", "", False, soon())
    for name in ("shop", "plain"):
        gateway.upsert_documents(
            name,
            [Document(f"d{i}", text, {"n": i, "even": i % 2 == 0}) for i, text in enumerate(TEXTS)],
            soon(),
        )
    for shard in shards:
        shard.calls.clear()
        shard.searches.clear()
    encoder.batches.clear()
    return gateway, shards, encoder


def ids(outcome) -> list[str]:
    return [hit.id for hit in outcome.hits]


def searched(shards) -> list:
    return [call for shard in shards for call in shard.searches]


# -- validation: refused before any encoder or shard call -----------------------------------
@pytest.mark.parametrize(
    ("change", "error", "reason"),
    [
        ({"retrieval": RetrievalOptions(alpha=1.5)}, InvalidArgument, "BAD_FUSION"),
        ({"retrieval": RetrievalOptions(alpha=-0.1)}, InvalidArgument, "BAD_FUSION"),
        ({"retrieval": RetrievalOptions(alpha=math.nan)}, InvalidArgument, "BAD_FUSION"),
        ({"retrieval": RetrievalOptions(rrf_k=10_001)}, InvalidArgument, "BAD_FUSION"),
        ({"retrieval": RetrievalOptions(mode=Retrieval.DENSE, alpha=2.0)}, InvalidArgument,
         "BAD_FUSION"),
        ({"retrieval": RetrievalOptions(depth=101)}, InvalidArgument, "TOP_K_OUT_OF_RANGE"),
        ({"retrieval": HYBRID, "item_id": "d1"}, InvalidArgument, "TEXT_QUERY_REQUIRED"),
        ({"retrieval": LEXICAL, "vector": np.ones(8, np.float32), "vector_space_id": "space-a"},
         InvalidArgument, "TEXT_QUERY_REQUIRED"),
        ({"retrieval": HYBRID, "content": b"\x89PNG"}, InvalidArgument, "TEXT_QUERY_REQUIRED"),
        ({"retrieval": HYBRID, "also_collections": ["plain"]}, InvalidArgument,
         "ONE_COLLECTION_ONLY"),
        ({"retrieval": LEXICAL, "also_collections": ["plain"]}, InvalidArgument,
         "ONE_COLLECTION_ONLY"),
    ],
)
def test_bad_retrieval_options_are_refused_before_any_call(change, error, reason) -> None:
    gateway, shards, encoder = stack(max_top_k=100)
    with pytest.raises(error) as raised:
        gateway.search(replace(Query("shop", "red kettle", 5, soon()), **change))
    assert raised.value.reason == reason
    assert not encoder.batches and not any(shard.calls for shard in shards)


@pytest.mark.parametrize("mode", [Retrieval.LEXICAL, Retrieval.HYBRID])
def test_lexical_or_hybrid_on_a_dense_collection_is_a_failed_precondition(mode) -> None:
    gateway, shards, encoder = stack()
    with pytest.raises(FailedPrecondition) as raised:
        gateway.search(Query("plain", "red kettle", 5, soon(), retrieval=RetrievalOptions(mode)))
    assert raised.value.reason == "LEXICAL_NOT_ENABLED"
    assert not encoder.batches and not searched(shards)
    with pytest.raises(FailedPrecondition) as raised:
        gateway.search_batch(BatchQuery("plain", ["red kettle"], 5, soon(),
                                        retrieval=RetrievalOptions(mode)))
    assert raised.value.reason == "LEXICAL_NOT_ENABLED"
    assert not encoder.batches and not searched(shards)


def test_batch_fusion_options_are_checked_too() -> None:
    gateway, shards, encoder = stack(max_top_k=50)
    for options, reason in ((RetrievalOptions(alpha=7.0), "BAD_FUSION"),
                            (RetrievalOptions(depth=51), "TOP_K_OUT_OF_RANGE")):
        with pytest.raises(InvalidArgument) as raised:
            gateway.search_batch(BatchQuery("shop", ["red kettle"], 5, soon(), retrieval=options))
        assert raised.value.reason == reason
    assert not encoder.batches and not searched(shards)


# -- which retrieval answers -----------------------------------------------------------------
def test_unspecified_mode_is_hybrid_for_text_on_a_lexical_collection_and_dense_otherwise() -> None:
    gateway, _, _ = stack()
    text = gateway.search(Query("shop", "red kettle", 5, soon()))
    assert (text.mode, text.fusion, text.fused) == (Retrieval.HYBRID, Fusion.RRF, False)
    assert gateway.search(Query("plain", "red kettle", 5, soon())).mode is Retrieval.DENSE
    assert gateway.search(Query("shop", "", 5, soon(), item_id="d3")).mode is Retrieval.DENSE
    several = gateway.search(Query("shop", "red kettle", 5, soon(), also_collections=["plain"]))
    assert several.mode is Retrieval.DENSE and {h.collection for h in several.hits} <= {"shop", "plain"}
    dense = gateway.search(Query("shop", "red kettle", 5, soon(), retrieval=DENSE))
    assert (dense.mode, dense.fusion) == (Retrieval.DENSE, None)


def test_the_lexical_config_is_learnt_with_the_space_in_one_round_of_shard_calls() -> None:
    gateway, shards, _ = stack()
    gateway.search(Query("shop", "red kettle", 5, soon()))
    assert [sum(1 for name, _ in s.calls if name == "get_collection") for s in shards] == [1, 1, 1]
    gateway.search(Query("shop", "blue tent", 5, soon(), retrieval=LEXICAL))
    assert [sum(1 for name, _ in s.calls if name == "get_collection") for s in shards] == [1, 1, 1]


# -- dense and lexical alone -----------------------------------------------------------------
def test_dense_hits_carry_their_dense_score_and_rank() -> None:
    gateway, _, _ = stack()
    outcome = gateway.search(Query("shop", "red kettle", 10, soon(), retrieval=DENSE))
    assert [h.dense_rank for h in outcome.hits] == list(range(1, 11))
    assert all(h.dense_score == h.score and h.lexical_score is None for h in outcome.hits)


def test_lexical_mode_never_embeds_and_asks_each_shard_once_with_the_text_only() -> None:
    gateway, shards, encoder = stack()
    outcome = gateway.search(Query("shop", "blue tent", 8, soon(), retrieval=LEXICAL))
    assert not encoder.batches and not outcome.cache_hit and outcome.query_vector is None
    calls = searched(shards)
    assert len(calls) == 3 and all(c.vectors == 0 and c.texts == ("blue tent",) for c in calls)
    assert outcome.mode is Retrieval.LEXICAL and outcome.fusion is None
    # Both words first (the five blue ones and the five tents share one word each).
    assert ids(outcome)[0] == f"d{TEXTS.index('blue tent model 6')}"
    assert [h.lexical_rank for h in outcome.hits] == list(range(1, 9))
    assert all(h.lexical_score == h.score and h.dense_score is None for h in outcome.hits)
    scores = [h.score for h in outcome.hits]
    assert scores == sorted(scores, reverse=True)


# -- hybrid ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "options",
    [HYBRID, replace(HYBRID, fusion=Fusion.MINMAX, alpha=0.3), replace(HYBRID, rrf_k=5, depth=12)],
)
def test_hybrid_fuses_each_retrievers_list_merged_over_the_shards(options) -> None:
    gateway, shards, encoder = stack()
    query = Query("shop", "green lamp", 6, soon(), retrieval=options)
    outcome = gateway.search(query)
    params = options.fusion_params(FusionParams(), gateway.config.max_top_k, 6)
    # One call per shard carrying the vector and the text, depth candidates per retriever.
    calls = searched(shards)
    assert len(calls) == 3 and len(encoder.batches) == 1
    assert all(c.vectors == 1 and c.texts == ("green lamp",) and c.top_k == params.depth
               for c in calls)
    # The same as fusing the dense and the lexical answers (each merged over the shards).
    dense = gateway.search(replace(query, top_k=params.depth, retrieval=DENSE)).hits
    lexical = gateway.search(replace(query, top_k=params.depth, retrieval=LEXICAL)).hits
    expected = fuse(dense, lexical, params, 6)
    assert ids(outcome) == [f.hit.id for f in expected]
    assert [h.score for h in outcome.hits] == pytest.approx([f.score for f in expected])
    assert outcome.mode is Retrieval.HYBRID and outcome.fusion is params.method
    by_id = {h.id: h for h in outcome.hits}
    for fused in expected:
        hit = by_id[fused.hit.id]
        assert (hit.dense_rank, hit.lexical_rank) == (fused.dense_rank, fused.lexical_rank)
        assert (hit.dense_score, hit.lexical_score) == (fused.dense_score, fused.lexical_score)
    # Found by both, by one: the ranks say which.
    assert any(h.dense_rank and h.lexical_rank for h in outcome.hits)


def test_hybrid_depth_is_never_below_the_page_and_a_default_never_above_max_top_k() -> None:
    gateway, shards, _ = stack(max_top_k=40)
    gateway.search(Query("shop", "red mug", 5, soon(), offset=10, retrieval=replace(HYBRID, depth=4)))
    assert {c.top_k for c in searched(shards)} == {15}
    for shard in shards:
        shard.searches.clear()
    gateway.search(Query("shop", "red mug", 5, soon(), retrieval=HYBRID))  # default 100
    assert {c.top_k for c in searched(shards)} == {40}


@pytest.mark.parametrize("options", [replace(HYBRID, depth=30),
                                     replace(HYBRID, depth=30, fusion=Fusion.MINMAX, alpha=0.7)])
def test_hybrid_pages_concatenate_to_the_unpaged_ranking(options) -> None:
    gateway, _, _ = stack()
    query = Query("shop", "white boots model", 24, soon(), retrieval=options)
    whole = ids(gateway.search(query))
    pages = [ids(gateway.search(replace(query, top_k=6, offset=offset))) for offset in range(0, 24, 6)]
    assert sum(pages, []) == whole and len(whole) == 24 == len(set(whole))


def test_a_hybrid_threshold_cuts_on_the_fused_score() -> None:
    gateway, _, _ = stack()
    query = Query("shop", "black stove", 12, soon(), retrieval=HYBRID)
    whole = gateway.search(query).hits
    cut = whole[4].score
    kept = gateway.search(replace(query, score_threshold=cut)).hits
    assert [h.id for h in kept] == [h.id for h in whole if h.score >= cut] and len(kept) < 12


def test_filter_and_exact_reach_both_retrievers_in_hybrid() -> None:
    gateway, shards, _ = stack()
    wanted = {"even": True}
    outcome = gateway.search(Query("shop", "blue kettle", 10, soon(), metadata_filter=wanted,
                                   exact=True, retrieval=HYBRID))
    assert outcome.hits and all(h.metadata["even"] for h in outcome.hits)
    assert all(c.metadata_filter == wanted and c.exact and c.texts for c in searched(shards))


def test_metadata_fields_are_served_from_hybrid_hits_too() -> None:
    gateway, _, _ = stack()
    outcome = gateway.search(Query("shop", "red tent", 3, soon(), retrieval=HYBRID))
    assert all(set(h.metadata) == {"n", "even"} for h in outcome.hits)


# -- batches ---------------------------------------------------------------------------------
def test_a_hybrid_batch_sends_texts_beside_vectors_and_answers_as_single_searches() -> None:
    gateway, shards, encoder = stack()
    texts = ["red kettle", "green boots model", "white lamp"]
    batch = gateway.search_batch(BatchQuery("shop", texts, 5, soon(), retrieval=HYBRID))
    calls = searched(shards)
    assert len(calls) == 3 and all(c.vectors == 3 and c.texts == tuple(texts) for c in calls)
    assert len(encoder.batches) == 1
    for text, outcome in zip(texts, batch):
        single = gateway.search(Query("shop", text, 5, soon(), retrieval=HYBRID))
        assert ids(outcome) == ids(single) and outcome.mode is Retrieval.HYBRID
        assert [h.lexical_rank for h in outcome.hits] == [h.lexical_rank for h in single.hits]


def test_a_lexical_batch_embeds_nothing_and_defaults_follow_the_collection() -> None:
    gateway, shards, encoder = stack()
    lexical = gateway.search_batch(BatchQuery("shop", ["blue mug", "tent"], 4, soon(),
                                              retrieval=LEXICAL))
    assert not encoder.batches
    assert all(c.vectors == 0 and c.texts == ("blue mug", "tent") for c in searched(shards))
    assert [o.mode for o in lexical] == [Retrieval.LEXICAL] * 2
    assert all(h.lexical_rank for o in lexical for h in o.hits)
    assert gateway.search_batch(BatchQuery("shop", ["tent"], 4, soon()))[0].mode is Retrieval.HYBRID
    assert gateway.search_batch(BatchQuery("plain", ["tent"], 4, soon()))[0].mode is Retrieval.DENSE


# -- observers: shadow copies, recall audits, metrics --------------------------------------
def with_candidate(gateway, shards):
    for shard in shards:
        shard.add_version("shop", "v2", "space-a")
    gateway.upsert_documents(
        "shop", [Document(f"d{i}", text, {"n": i}) for i, text in enumerate(TEXTS)], soon()
    )
    gateway.set_candidate("shop", "v2", shadow_fraction=1.0, canary_weight=0.0, deadline=soon())
    for shard in shards:
        shard.searches.clear()


def test_a_hybrid_answers_shadow_copy_compares_dense_with_dense() -> None:
    gateway, shards, _ = stack(seed=1)
    with_candidate(gateway, shards)
    gateway.search(Query("shop", "black lamp", 5, soon(), retrieval=HYBRID))
    assert gateway.wait_for_shadow()
    shadow = [c for c in searched(shards) if c.version == "v2"]
    assert len(shadow) == 3 and all(c.vectors == 1 and not c.texts for c in shadow)
    # The candidate holds the same vectors: its dense answer is the primary's dense one.
    stats = gateway.candidates.get("shop").stats
    assert stats.queries == 1 and stats.means()[0] == 1.0


def test_a_lexical_answer_is_not_mirrored() -> None:
    gateway, shards, _ = stack(seed=1)
    with_candidate(gateway, shards)
    gateway.search(Query("shop", "black lamp", 5, soon(), retrieval=LEXICAL))
    assert gateway.wait_for_shadow()
    assert not [c for c in searched(shards) if c.version == "v2"]
    assert gateway.candidates.get("shop").stats.queries == 0


def test_only_dense_answers_are_audited_for_recall() -> None:
    gateway, shards, _ = stack(recall_sample_rate=1.0)
    for options in (HYBRID, LEXICAL):
        gateway.search(Query("shop", "red kettle", 5, soon(), retrieval=options))
    assert gateway.wait_for_shadow()
    assert not [c for c in searched(shards) if c.exact]
    gateway.search(Query("shop", "red kettle", 5, soon(), retrieval=DENSE))
    assert gateway.wait_for_shadow()
    assert len([c for c in searched(shards) if c.exact]) == 3


def test_search_metrics_carry_the_mode_and_coverage_uses_cosine() -> None:
    gateway, _, _ = stack()
    gateway.search(Query("shop", "red kettle", 5, soon(), retrieval=HYBRID))
    gateway.search(Query("shop", "red kettle", 5, soon(), retrieval=LEXICAL))
    gateway.search(Query("shop", "zzz", 5, soon(), retrieval=LEXICAL))  # no word matches
    hybrid = gateway.search(Query("shop", "red kettle", 5, soon(), retrieval=HYBRID))

    def sample(metric, name: str, **labels: str) -> float:
        return next((s.value for family in metric.collect() for s in family.samples
                     if s.name == name and s.labels == labels), 0.0)

    queries, covered = gateway.metrics.queries, gateway.metrics.covered
    stages = gateway.metrics.stage_seconds
    name = "contentembed_search_queries_total"
    assert sample(queries, name, collection="shop", mode="hybrid") == 2
    assert sample(queries, name, collection="shop", mode="lexical") == 2
    name = "contentembed_search_covered_queries_total"
    assert sample(covered, name, collection="shop", mode="lexical") == 1  # the one with hits
    # The fused score (~1/61) is far below the floor: the hits' cosine decides.
    floor = gateway.metrics.coverage_floor
    assert hybrid.hits[0].score < floor
    assert max(h.dense_score for h in hybrid.hits if h.dense_score is not None) >= floor
    assert sample(covered, name, collection="shop", mode="hybrid") == 2
    name = "contentembed_search_stage_seconds_count"
    assert sample(stages, name, stage="encode", mode="hybrid") == 2
    assert sample(stages, name, stage="encode", mode="lexical") == 0  # nothing embedded
    assert sample(stages, name, stage="search", mode="lexical") == 2


# -- collections and writes ----------------------------------------------------------------
def test_create_passes_lexical_to_every_shard_and_the_summary_reports_it() -> None:
    gateway, shards, _ = stack()
    assert all(s.collections["shop"].lexical == LexicalConfig() for s in shards)
    assert all(s.collections["plain"].lexical is None for s in shards)
    assert gateway.get_collection("shop", soon()).lexical == LexicalConfig()
    assert gateway.get_collection("plain", soon()).lexical is None
    summary, created = gateway.create_collection("fr", "", False, soon(),
                                                 lexical=LexicalConfig("french"))
    assert created and summary.lexical == LexicalConfig("french")
    with pytest.raises(ContentEmbedError) as raised:
        gateway.create_collection("fr", "", True, soon())
    assert raised.value.reason == "LEXICAL_MISMATCH"


def test_writes_carry_each_texts_to_every_version_and_get_documents_returns_it() -> None:
    gateway, shards, _ = stack()
    for shard in shards:
        shard.add_version("shop", "next", "space-a", pending=True)
    gateway.write_plans.forget("shop")
    gateway.upsert_documents("shop", [Document("new", "a brand new kettle", {})], soon())
    texts = {
        version: text
        for shard in shards for version, by_id in shard.collections["shop"].texts.items()
        for item_id, text in by_id.items() if item_id == "new"
    }
    assert texts == {"v0": "a brand new kettle", "next": "a brand new kettle"}
    found, missing = gateway.get_documents("shop", ["new", "d0", "gone"], soon())
    assert [(d.id, d.text) for d in found] == [("new", "a brand new kettle"), ("d0", TEXTS[0])]
    assert missing == ["gone"]
