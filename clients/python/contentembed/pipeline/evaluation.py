"""Offline evaluation: labelled queries against a collection version, through the gateway.

Metrics (all means over queries, binary relevance):

- ``recall@k``: share of queries with at least one relevant id in the top k (a hit rate,
  as in most retrieval leaderboards for queries with one or few relevant items);
- ``mrr@10``: 1 / rank of the first relevant id within the top 10, else 0;
- ``ndcg@10``: DCG over the top 10 (gain 1 / log2(rank + 1) per relevant id) divided by
  the DCG of an ideal ranking of min(relevant, 10) relevant ids;
- ``ann_recall@10``: share of the exact top 10 (brute force over the same vectors, same
  version) that the HNSW answer also returned — how much the index, not the model, loses.
  Dense answers only: a lexical (BM25) answer has no approximation to measure, and a
  hybrid one mixes it with BM25, so there it is not measured (None, "n/a").
- ``union_recall@10``: share of queries with a relevant id in the dense top 10 or the
  lexical top 10 — the ceiling a fusion of the two lists could reach at 10.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

EVAL_DEPTH = 10
CUTOFFS = (1, 5, 10)


class QueriesError(ValueError):
    pass


@dataclass(frozen=True)
class LabelledQuery:
    id: str
    content: str | bytes  # text, or the bytes of an image file
    relevant: frozenset[str]


def read_queries(path: Path) -> list[LabelledQuery]:
    """``{"id", "text"|"image", "relevant": [ids]}`` per line; ``image`` is a path relative
    to the queries file. A bad line fails naming it: an evaluation over a silently
    shortened query set would not be comparable with the last one."""
    queries: list[LabelledQuery] = []
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise QueriesError(f"{where}: not JSON ({error.msg})") from None
            if not isinstance(row, dict):
                raise QueriesError(f"{where}: expected a JSON object")
            relevant = row.get("relevant")
            if not isinstance(relevant, list) or not relevant or not all(
                isinstance(i, str) and i for i in relevant
            ):
                raise QueriesError(f"{where}: 'relevant' must be a non-empty list of ids")
            text, image = row.get("text"), row.get("image")
            if (text is None) == (image is None):
                raise QueriesError(f"{where}: give exactly one of 'text' and 'image'")
            if text is not None:
                if not isinstance(text, str) or not text.strip():
                    raise QueriesError(f"{where}: 'text' is empty")
                content: str | bytes = text
            else:
                image_path = path.parent / str(image)
                try:
                    content = image_path.read_bytes()
                except OSError as error:
                    raise QueriesError(f"{where}: image {image_path}: {error.strerror}") from None
            queries.append(LabelledQuery(str(row.get("id", line_number)), content, frozenset(relevant)))
    if not queries:
        raise QueriesError(f"{path}: no queries")
    return queries


def reciprocal_rank(ranked: Sequence[str], relevant: frozenset[str], depth: int = EVAL_DEPTH) -> float:
    for rank, item_id in enumerate(ranked[:depth], start=1):
        if item_id in relevant:
            return 1.0 / rank
    return 0.0


def ndcg(ranked: Sequence[str], relevant: frozenset[str], depth: int = EVAL_DEPTH) -> float:
    dcg = sum(
        1.0 / math.log2(rank + 1)
        for rank, item_id in enumerate(ranked[:depth], start=1)
        if item_id in relevant
    )
    ideal = sum(1.0 / math.log2(rank + 1) for rank in range(1, min(len(relevant), depth) + 1))
    return dcg / ideal


def hit_at(ranked: Sequence[str], relevant: frozenset[str], k: int) -> float:
    return 1.0 if relevant.intersection(ranked[:k]) else 0.0


def overlap(approximate: Sequence[str], exact: Sequence[str]) -> float:
    """Share of the exact list the approximate one also holds (1 when both are empty)."""
    return len(set(approximate) & set(exact)) / len(exact) if exact else 1.0


@dataclass(frozen=True)
class Report:
    version: str
    queries: int
    recall: dict[int, float]
    mrr: float
    ndcg: float
    ann_recall: float | None  # None: not measured (lexical and hybrid answers)
    mode: str = ""  # the retrieval that answered: dense, lexical, hybrid ("" unknown)
    fusion: str = ""  # for hybrid: rrf or minmax
    # Each query's ranked ids (top EVAL_DEPTH), in query order: for union_recall.
    rankings: tuple[tuple[str, ...], ...] = field(default=(), repr=False, compare=False)

    def as_json(self) -> dict[str, float | int | str | None]:
        figures: dict[str, float | int | str | None] = {"version": self.version}
        if self.mode:
            figures["mode"] = self.mode
        if self.fusion:
            figures["fusion"] = self.fusion
        return {
            **figures,
            **{f"recall@{k}": self.recall[k] for k in CUTOFFS},
            "mrr@10": self.mrr,
            "ndcg@10": self.ndcg,
            f"ann_recall@{EVAL_DEPTH}": self.ann_recall,
            "queries": self.queries,
        }


# (query content, exact) -> ranked ids, best first, at least EVAL_DEPTH when available.
Searcher = Callable[[str | bytes, bool], list[str]]


def evaluate(
    version: str, queries: Sequence[LabelledQuery], search: Searcher,
    progress: Callable[[int], None] = lambda done: None, *, ann: bool = True,
) -> Report:
    """The metrics of ``search`` over ``queries``; with ``ann`` also ANN recall (each
    query searched twice, the second time exact)."""
    recall = dict.fromkeys(CUTOFFS, 0.0)
    mrr = ndcg_sum = ann_sum = 0.0
    rankings = []
    for query in queries:
        ranked = search(query.content, False)
        for k in CUTOFFS:
            recall[k] += hit_at(ranked, query.relevant, k)
        mrr += reciprocal_rank(ranked, query.relevant)
        ndcg_sum += ndcg(ranked, query.relevant)
        if ann:
            exact = search(query.content, True)
            ann_sum += overlap(ranked[:EVAL_DEPTH], exact[:EVAL_DEPTH])
        rankings.append(tuple(ranked[:EVAL_DEPTH]))
        progress(1)
    count = len(queries)
    return Report(
        version=version,
        queries=count,
        recall={k: value / count for k, value in recall.items()},
        mrr=mrr / count,
        ndcg=ndcg_sum / count,
        ann_recall=ann_sum / count if ann else None,
        rankings=tuple(rankings),
    )


def union_recall(
    queries: Sequence[LabelledQuery], dense: Report, lexical: Report, depth: int = EVAL_DEPTH
) -> float:
    """Share of queries with a relevant id in the dense or the lexical top ``depth``: what
    any fusion of the two top lists could at best reach (both reports of ``queries``)."""
    if not (len(dense.rankings) == len(lexical.rankings) == len(queries)):
        raise ValueError("union_recall needs both reports' rankings of the same queries")
    found = sum(
        hit_at([*d[:depth], *x[:depth]], query.relevant, 2 * depth)
        for query, d, x in zip(queries, dense.rankings, lexical.rankings)
    )
    return found / len(queries) if queries else 0.0
