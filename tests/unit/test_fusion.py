"""Fusion of a dense and a lexical candidate list: hand-computed scores and orders."""

import pytest

from contentembed.services.gateway.fusion import (
    Fusion,
    FusionParams,
    fuse,
    fuse_minmax,
    fuse_rrf,
    single_retriever,
)
from contentembed.services.gateway.merge import Hit


def hits(*pairs: tuple[str, float]) -> list[Hit]:
    return [Hit(item_id, score, shard_index=0) for item_id, score in pairs]


DENSE = hits(("a", 0.9), ("b", 0.8), ("c", 0.5))
LEXICAL = hits(("c", 12.0), ("d", 6.0), ("a", 3.0))


def test_rrf_sums_reciprocal_ranks_and_keeps_each_retrievers_score_and_rank():
    fused = fuse_rrf(DENSE, LEXICAL, k=60, limit=10)
    scores = {f.hit.id: f.score for f in fused}
    assert scores["a"] == pytest.approx(1 / 61 + 1 / 63)
    assert scores["c"] == pytest.approx(1 / 63 + 1 / 61)
    assert scores["b"] == pytest.approx(1 / 62)
    assert scores["d"] == pytest.approx(1 / 62)
    # a and c tie exactly; b and d tie: the id decides, so the order never depends on luck.
    assert [f.hit.id for f in fused] == ["a", "c", "b", "d"]
    a = fused[0]
    assert (a.dense_score, a.dense_rank, a.lexical_score, a.lexical_rank) == (0.9, 1, 3.0, 3)
    b = fused[2]
    assert (b.lexical_score, b.lexical_rank) == (None, 0)


def test_minmax_scales_each_list_and_weights_dense_by_alpha():
    fused = fuse_minmax(DENSE, LEXICAL, alpha=0.5, limit=10)
    scores = {f.hit.id: f.score for f in fused}
    # dense: a 1, b 0.75, c 0; lexical: c 1, d 1/3, a 0
    assert scores == pytest.approx({"a": 0.5, "b": 0.375, "c": 0.5, "d": 1 / 6})
    only_dense = fuse_minmax(DENSE, LEXICAL, alpha=1.0, limit=2)
    assert [f.hit.id for f in only_dense] == ["a", "b"]
    only_lexical = fuse_minmax(DENSE, LEXICAL, alpha=0.0, limit=2)
    assert [f.hit.id for f in only_lexical] == ["c", "d"]


def test_minmax_with_one_candidate_or_ties_gives_each_the_top_score():
    fused = fuse_minmax(hits(("a", 0.3)), hits(("b", 2.0), ("c", 2.0)), alpha=0.5, limit=5)
    assert {f.hit.id: f.score for f in fused} == {"a": 0.5, "b": 0.5, "c": 0.5}


def test_limit_cuts_the_fused_ranking_and_empty_lists_fuse_to_nothing():
    assert len(fuse(DENSE, LEXICAL, FusionParams(), limit=2)) == 2
    assert fuse([], [], FusionParams(method=Fusion.MINMAX), limit=5) == []
    assert [f.hit.id for f in fuse([], LEXICAL, FusionParams(), limit=5)] == ["c", "d", "a"]


def test_single_retriever_keeps_its_own_scores():
    lexical = single_retriever(LEXICAL, lexical=True)
    assert [(f.score, f.lexical_rank, f.dense_rank) for f in lexical] == [
        (12.0, 1, 0), (6.0, 2, 0), (3.0, 3, 0)
    ]
