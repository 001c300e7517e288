from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from contentembed.services.gateway.merge import Hit, merge_top_k

hit_lists = st.lists(
    st.lists(
        st.tuples(st.sampled_from([f"id{i}" for i in range(30)]), st.floats(-1, 1)),
        max_size=20,
    ),
    min_size=1,
    max_size=5,
)


def brute_force(shards: list[list[tuple[str, float]]], top_k: int) -> list[tuple[str, float]]:
    best: dict[str, float] = {}
    for shard in shards:
        for item_id, score in shard:
            best[item_id] = max(score, best.get(item_id, -2.0))
    return sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))[:top_k]


@given(hit_lists, st.integers(1, 40))
def test_merge_equals_brute_force(shards: list[list[tuple[str, float]]], top_k: int) -> None:
    answers = [[Hit(i, s, shard_index) for i, s in hits] for shard_index, hits in enumerate(shards)]
    merged = merge_top_k(answers, top_k)
    assert [(h.id, h.score) for h in merged] == brute_force(shards, top_k)


def test_merge_keeps_best_copy_of_duplicate_id_and_its_shard() -> None:
    merged = merge_top_k([[Hit("a", 0.2, 0)], [Hit("a", 0.9, 1), Hit("b", 0.5, 1)]], 5)
    assert [(h.id, h.score, h.shard_index) for h in merged] == [("a", 0.9, 1), ("b", 0.5, 1)]


def test_merge_is_independent_of_shard_order() -> None:
    shards = [[Hit("x", 0.5, 0), Hit("y", 0.5, 0)], [Hit("z", 0.7, 1)]]
    assert merge_top_k(shards, 3) == merge_top_k(list(reversed(shards)), 3)


def test_reciprocal_rank_fusion_scores_and_order() -> None:
    from contentembed.services.gateway.merge import RRF_K, reciprocal_rank_fusion

    text = [Hit("a", 0.9, 0, collection="texts"), Hit("b", 0.8, 0, collection="texts")]
    images = [Hit("x", 0.3, 1, collection="images"), Hit("a", 0.2, 1, collection="texts")]
    fused = reciprocal_rank_fusion([text, images], 3)
    assert [(h.collection, h.id) for h in fused] == [("texts", "a"), ("images", "x"), ("texts", "b")]
    assert fused[0].score == 1 / (RRF_K + 1) + 1 / (RRF_K + 2)
    assert fused[1].score == 1 / (RRF_K + 1)


def test_same_id_in_two_collections_stays_two_hits() -> None:
    merged = merge_top_k([[Hit("a", 0.5, 0, collection="c1")], [Hit("a", 0.4, 0, collection="c2")]], 5)
    assert [(h.collection, h.id) for h in merged] == [("c1", "a"), ("c2", "a")]
