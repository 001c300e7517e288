"""The evaluation metrics against hand-computed values, and the queries file format."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from contentembed.pipeline.evaluation import (
    LabelledQuery,
    QueriesError,
    evaluate,
    hit_at,
    ndcg,
    overlap,
    read_queries,
    reciprocal_rank,
)


def test_metrics_of_one_ranking_match_hand_computed_values() -> None:
    ranked = ["a", "x", "b", "y", "z"]
    relevant = frozenset({"b", "q"})
    assert reciprocal_rank(ranked, relevant) == pytest.approx(1 / 3)
    assert hit_at(ranked, relevant, 1) == 0.0 and hit_at(ranked, relevant, 5) == 1.0
    ideal = 1 + 1 / math.log2(3)  # two relevant ids: ranks 1 and 2
    assert ndcg(ranked, relevant) == pytest.approx((1 / math.log2(4)) / ideal)
    assert overlap(["a", "b", "c"], ["a", "c", "d", "e"]) == 0.5


def test_nothing_relevant_in_the_top_ten_scores_zero() -> None:
    ranked = [f"i{n}" for n in range(20)]
    assert reciprocal_rank(ranked, frozenset({"i10"})) == 0.0  # rank 11: beyond @10
    assert ndcg(ranked, frozenset({"i10"})) == 0.0


def test_evaluate_averages_over_queries_and_compares_with_exact() -> None:
    answers = {  # query -> (approximate, exact)
        "q1": (["a", "b"], ["a", "b"]),
        "q2": (["c", "x"], ["c", "d"]),
    }
    queries = [
        LabelledQuery("1", "q1", frozenset({"a"})),
        LabelledQuery("2", "q2", frozenset({"d"})),
    ]
    report = evaluate("v1", queries, lambda text, exact: answers[text][int(exact)])
    assert report.recall[1] == 0.5 and report.recall[5] == 0.5
    assert report.mrr == pytest.approx(0.5)
    assert report.ann_recall == pytest.approx(0.75)
    assert report.as_json()["queries"] == 2 and report.as_json()["version"] == "v1"


def test_queries_file_reads_text_and_images_and_names_bad_lines(tmp_path: Path) -> None:
    (tmp_path / "img.png").write_bytes(b"\x89PNG fake")
    good = tmp_path / "q.jsonl"
    good.write_text(
        json.dumps({"id": "t", "text": "red shoes", "relevant": ["p1"]}) + "\n\n"
        + json.dumps({"id": "i", "image": "img.png", "relevant": ["p2", "p3"]}) + "\n"
    )
    queries = read_queries(good)
    assert [q.content for q in queries] == ["red shoes", b"\x89PNG fake"]
    assert queries[1].relevant == {"p2", "p3"}
    for line, message in [
        ({"text": "x"}, "relevant"),
        ({"text": "x", "image": "img.png", "relevant": ["a"]}, "exactly one"),
        ({"image": "missing.png", "relevant": ["a"]}, "missing.png"),
        ({"text": "  ", "relevant": ["a"]}, "empty"),
    ]:
        bad = tmp_path / "bad.jsonl"
        bad.write_text(json.dumps({"text": "fine", "relevant": ["a"]}) + "\n" + json.dumps(line) + "\n")
        with pytest.raises(QueriesError, match=f"bad.jsonl:2: .*{message}"):
            read_queries(bad)
