"""Query-dependent fusion of BM25 and dense on the docstring set (docs/hybrid.md).

    python bench/hybrid_adaptive.py [--data .contentembed/hybrid] [--folds 5] [--depth 50]
        [--test FAMILY]

The fixed fusion the study chose (RRF k=5, depth 50) stays about 0.03 recall@10 below the
union ceiling: the lost queries have the relevant document in one retriever's top 10 and
far down the other's, and a fixed weight cannot tell which retriever to believe. Here a
weight per query is computed from the two candidate lists alone (what the gateway has:
ids, scores, ranks; no extra model call):

    w(q) = sigmoid(bias + slope * f(q))      weight of dense, 1 - w(q) of lexical

over three bases: min-max scaled scores, DBSF (each list's scores scaled by its mean
± 3 sd, Qdrant's distribution-based score fusion) and weighted RRF. f(q) is a difference of
one confidence feature between the dense and the lexical list (z-score of the top score,
top-1 vs top-2 gap, top-1 vs top-10 gap, all over the list's own candidates), or the
logit of a tiny logistic regression on those features fitted to "which retriever had the
relevant document in its top 10".

Everything is chosen on dev by cross-validation, as the study chooses: for each family
(base × feature), (bias, slope) is picked on k-1 folds by mean recall@10 (then nDCG@10) and
scored on the held-out fold; the table is the held-out folds' mean ± sd, and the paired
difference with the study's default on the same folds. Test is never read unless
``--test FAMILY`` names the one family to score: its (bias, slope) fitted on all of dev.

Result (depth 50, dev 1,677 queries, 5 folds): no family beats the default by more than
the folds' noise. The best, weighted RRF k=5 with f = the top-1 vs top-10 gap (bias +0.25,
slope 0.5), is +0.004 ± 0.004 recall@10 over the default on the held-out folds; DBSF
(Qdrant's, unweighted) is 0.008 below it at depth 50, and weighting it does not close
that gap. Scored once on test as a check: +0.0015 (95% paired bootstrap -0.002..+0.005).
The features tell the two retrievers apart only weakly (AUC about 0.63 for "which
retriever had the relevant document in its top 10"), so fusion.py keeps its fixed default.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from hybrid_study import (
    DATA,
    EVAL_DEPTH,
    Dense,
    Queries,
    Runs,
    Setting,
    bm25_index,
    fold_of,
    fused_ids,
    load_set,
    per_query,
    run_retrievers,
    union_ceiling,
)

DEFAULT = Setting("rrf", 5, 50)  # the study's choice (FusionParams' default)
BIASES = tuple(np.round(np.linspace(-3.0, 3.0, 25), 2))  # sigmoid: weight 0.05..0.95
SLOPES = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)  # 0: a fixed weight
BASES = ("minmax", "dbsf", "rrf5", "rrf10", "rrf20", "rrf60")
FEATURES = ("z1", "gap2", "gap10", "logreg")
DBSF_DEPTHS = (20, 50, 100, 200)


# --- the candidate lists as arrays ---------------------------------------------------


@dataclass
class Candidates:
    """One split's two lists cut at ``depth``, as (query × union slot) arrays; slots past
    a query's union are padding (doc -1, scores nan, ranks 0)."""

    doc: np.ndarray  # catalog position: the catalog is sorted by id, so ties break by it
    dense: np.ndarray  # raw cosine, nan when not among the dense candidates
    lexical: np.ndarray  # raw BM25, nan when absent
    dense_rank: np.ndarray  # from 1, 0 when absent
    lexical_rank: np.ndarray
    relevant: np.ndarray  # slot of the relevant document, -1 when in neither list


def candidates(runs: Runs, queries: Queries, ids: Sequence[str], depth: int) -> Candidates:
    width = 2 * depth
    n = len(queries.ids)
    doc = np.full((n, width), -1)
    dense, lexical = np.full((n, width), np.nan), np.full((n, width), np.nan)
    dense_rank, lexical_rank = np.zeros((n, width), int), np.zeros((n, width), int)
    relevant = np.full(n, -1)
    for q, (d, b, rel) in enumerate(zip(runs.dense, runs.bm25, queries.relevant)):
        slot: dict[int, int] = {}
        for ranked, scores, ranks in ((d, dense, dense_rank), (b, lexical, lexical_rank)):
            for rank, (index, score) in enumerate(ranked[:depth], start=1):
                s = slot.setdefault(index, len(slot))
                doc[q, s], scores[q, s], ranks[q, s] = index, score, rank
        for index, s in slot.items():
            if ids[index] in rel:
                relevant[q] = s
    return Candidates(doc, dense, lexical, dense_rank, lexical_rank, relevant)


def _row_stats(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per row over the present (non-nan) scores: min, max, mean, population sd; rows
    with no candidate get zeros."""
    present = ~np.isnan(scores)
    count = present.sum(axis=1)
    filled = np.where(present, scores, 0.0)
    mean = filled.sum(axis=1) / np.maximum(count, 1)
    var = (np.where(present, scores - mean[:, None], 0.0) ** 2).sum(axis=1) / np.maximum(count, 1)
    low = np.where(present, scores, np.inf).min(axis=1)
    high = np.where(present, scores, -np.inf).max(axis=1)
    empty = count == 0
    low[empty] = high[empty] = 0.0
    return low, high, mean, np.sqrt(var)


def normalized(scores: np.ndarray, ranks: np.ndarray, base: str) -> np.ndarray:
    """Each list's contribution, 0 where a hit is not among its candidates."""
    present = ~np.isnan(scores)
    if base.startswith("rrf"):
        k = int(base[3:])
        return np.where(present, 1.0 / (k + np.maximum(ranks, 1)), 0.0)
    low, high, mean, sd = _row_stats(scores)
    if base == "minmax":
        span = (high - low)[:, None]
        # One distinct score: every candidate is as good as the list's best (fusion.py).
        out = np.where(span > 0, (scores - low[:, None]) / np.where(span > 0, span, 1.0), 1.0)
    else:  # dbsf: mean ± 3 sd mapped to [0, 1]; no clipping, so order within a list stays
        spread = (6.0 * sd)[:, None]
        out = np.where(
            spread > 0, (scores - (mean - 3.0 * sd)[:, None]) / np.where(spread > 0, spread, 1.0), 1.0
        )
    return np.where(present, out, 0.0)


def features(c: Candidates) -> dict[str, np.ndarray]:
    """Per query, per list, confidence features of the list's own scores: the z-score of
    its top score, and the top-1 vs top-2 and top-1 vs top-10 gaps relative to the list's
    range. Returned as dense minus lexical (positive: trust dense more), plus the raw
    per-list values for the logistic regression."""
    out: dict[str, np.ndarray] = {}
    per_list = {}
    for name, scores, ranks in (("d", c.dense, c.dense_rank), ("l", c.lexical, c.lexical_rank)):
        low, high, mean, sd = _row_stats(scores)
        # The score at rank r (low when the list is shorter).
        at = {
            r: np.where((ranks == r).any(axis=1), np.where(ranks == r, scores, 0.0).sum(axis=1), low)
            for r in (2, 10)
        }
        span = np.where(high - low > 0, high - low, 1.0)
        per_list[name] = {
            "z1": np.where(sd > 0, (high - mean) / np.where(sd > 0, sd, 1.0), 0.0),
            "gap2": (high - at[2]) / span,
            "gap10": (high - at[10]) / span,
        }
    for feature in ("z1", "gap2", "gap10"):
        out[feature] = per_list["d"][feature] - per_list["l"][feature]
    top10 = [np.where((r > 0) & (r <= EVAL_DEPTH), 1, 0) for r in (c.dense_rank, c.lexical_rank)]
    out["overlap10"] = (top10[0] & top10[1]).sum(axis=1) / EVAL_DEPTH
    out["raw"] = np.column_stack(
        [per_list[n][f] for n in ("d", "l") for f in ("z1", "gap2", "gap10")] + [out["overlap10"]]
    )
    return out


def ranks_of(score: np.ndarray, c: Candidates) -> np.ndarray:
    """Rank (from 1) of the relevant document in the fused order, ties broken by id;
    a large number when it is in neither list."""
    rows = np.arange(len(score))
    slot = np.maximum(c.relevant, 0)
    score = np.where(c.doc >= 0, score, -np.inf)
    mine, my_doc = score[rows, slot][:, None], c.doc[rows, slot][:, None]
    ahead = (score > mine) | ((score == mine) & (c.doc >= 0) & (c.doc < my_doc))
    return np.where(c.relevant >= 0, ahead.sum(axis=1) + 1, 10**6)


def metrics(rank: np.ndarray) -> np.ndarray:
    """(recall@10, RR@10, nDCG@10) per query for one relevant document at ``rank``."""
    inside = rank <= EVAL_DEPTH
    return np.column_stack([
        inside.astype(float),
        np.where(inside, 1.0 / rank, 0.0),
        np.where(inside, 1.0 / np.log2(rank + 1.0), 0.0),
    ])


def fused_metrics(c: Candidates, base: str, weight: np.ndarray) -> np.ndarray:
    """Per-query metrics of weight * dense' + (1 - weight) * lexical' (weight per query).
    The arithmetic is fusion.py's, so scores and ties are the same floats."""
    d = normalized(c.dense, c.dense_rank, base)
    lex = normalized(c.lexical, c.lexical_rank, base)
    w = np.asarray(weight, dtype=float).reshape(-1, 1)
    return metrics(ranks_of(w * d + (1.0 - w) * lex, c))


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def logistic_fit(x: np.ndarray, y: np.ndarray, l2: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Standardized-feature L2 logistic regression by Newton steps: (mean, sd, weights
    with the intercept first). Tiny on purpose: seven features."""
    mean, sd = x.mean(axis=0), x.std(axis=0) + 1e-9
    z = np.column_stack([np.ones(len(x)), (x - mean) / sd])
    w = np.zeros(z.shape[1])
    penalty = l2 * np.eye(z.shape[1])
    penalty[0, 0] = 0.0
    for _ in range(50):
        p = sigmoid(z @ w)
        grad = z.T @ (p - y) + penalty @ w
        hess = (z * (p * (1 - p))[:, None]).T @ z + penalty
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return mean, sd, w


def logistic_logit(model: tuple[np.ndarray, np.ndarray, np.ndarray], x: np.ndarray) -> np.ndarray:
    mean, sd, w = model
    return np.column_stack([np.ones(len(x)), (x - mean) / sd]) @ w


def which_retriever(c: Candidates) -> np.ndarray:
    """+1: only dense has the relevant document in its top 10; 0: only lexical; -1: both
    or neither (no label)."""
    rows, slot = np.arange(len(c.relevant)), np.maximum(c.relevant, 0)
    found = c.relevant >= 0
    dense_in = found & (c.dense_rank[rows, slot] > 0) & (c.dense_rank[rows, slot] <= EVAL_DEPTH)
    lex_in = found & (c.lexical_rank[rows, slot] > 0) & (c.lexical_rank[rows, slot] <= EVAL_DEPTH)
    return np.where(dense_in & ~lex_in, 1, np.where(lex_in & ~dense_in, 0, -1))


# --- cross-validation ----------------------------------------------------------------

Params = tuple[float, float]  # (bias, slope)
PARAMS: list[Params] = [(b, s) for s in SLOPES for b in BIASES]


def fold_means(per_q: np.ndarray, fold: np.ndarray, folds: Sequence[int]) -> np.ndarray:
    return np.array([per_q[fold == f].mean(axis=0) for f in folds])


def pick(per_param: dict[Params, np.ndarray], fold: np.ndarray, folds: Sequence[int]) -> Params:
    """Best mean over ``folds`` of the fold means: recall@10, then nDCG@10, then the
    smaller slope and |bias| (the simpler weight)."""
    def key(p: Params) -> tuple:
        m = fold_means(per_param[p], fold, folds).mean(axis=0)
        return (round(m[0], 9), round(m[2], 9), -p[1], -abs(p[0]))
    return max(per_param, key=key)


@dataclass
class FamilyResult:
    name: str
    held_out: np.ndarray  # (folds, 3): each fold scored with params picked on the others
    picks: list[Params]
    all_dev: Params  # picked on all folds (what --test uses)
    in_sample: np.ndarray  # (folds, 3) of all_dev's params: optimistic


def family_outcomes(
    c: Candidates, feats: dict[str, np.ndarray], base: str, feature: str,
    train: np.ndarray | None = None,
) -> dict[Params, np.ndarray]:
    """Per-query metrics of every (bias, slope); for ``logreg`` the regression is fitted on
    the ``train`` queries only (the held-out fold's labels are never seen)."""
    if feature == "logreg":
        label = which_retriever(c)
        use = (label >= 0) & (np.ones(len(label), bool) if train is None else train)
        f = logistic_logit(logistic_fit(feats["raw"][use], label[use]), feats["raw"])
    else:
        f = feats[feature]
    return {(b, s): fused_metrics(c, base, sigmoid(b + s * f)) for b, s in PARAMS}


def cross_validate_family(
    c: Candidates, feats: dict[str, np.ndarray], base: str, feature: str,
    fold: np.ndarray, folds: int,
) -> FamilyResult:
    everything = range(folds)
    shared = None if feature == "logreg" else family_outcomes(c, feats, base, feature)
    held_out, picks = [], []
    for f in everything:
        rest = [g for g in everything if g != f]
        outcomes = shared or family_outcomes(c, feats, base, feature, train=fold != f)
        p = pick(outcomes, fold, rest)
        picks.append(p)
        held_out.append(outcomes[p][fold == f].mean(axis=0))
    outcomes = shared or family_outcomes(c, feats, base, feature)
    best = pick(outcomes, fold, list(everything))
    return FamilyResult(
        f"{base} × {feature}", np.array(held_out), picks, best,
        fold_means(outcomes[best], fold, list(everything)),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--depth", type=int, default=DEFAULT.depth)
    parser.add_argument("--test", metavar="FAMILY", help='score one family on test, e.g. "dbsf × z1"')
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    started = time.perf_counter()
    corpus, queries = load_set(args.data, rebuild=False)
    bm25 = bm25_index(range(len(corpus.ids)), corpus.texts)
    dense = Dense(args.data / "cache")
    doc_vectors = dense.vectors(corpus.texts, "catalog")
    dev = queries["dev"]
    dev_runs = run_retrievers(corpus, dev, None, bm25, dense, doc_vectors)
    print(f"[{time.perf_counter() - started:5.1f}s] dev retrieval", flush=True)

    fold = np.array([fold_of(q, args.folds) for q in dev.ids])
    everything = list(range(args.folds))
    c = candidates(dev_runs, dev, corpus.ids, args.depth)
    feats = features(c)

    # The arrays must reproduce the gateway's own fusion exactly, ties included.
    for setting, base, weight in ((DEFAULT, "rrf5", 0.5), (Setting("minmax", 0.6, 50), "minmax", 0.6)):
        if setting.depth != args.depth:
            continue
        reference = per_query(
            [fused_ids(setting, d, b) for d, b in zip(dev_runs.dense_hits, dev_runs.bm25_hits)], dev
        )
        mine = fused_metrics(c, base, np.full(len(dev.ids), weight))
        assert np.allclose(reference, mine), f"array fusion differs from fusion.py for {setting}"

    default_q = per_query(
        [fused_ids(DEFAULT, d, b) for d, b in zip(dev_runs.dense_hits, dev_runs.bm25_hits)], dev
    )
    default_folds = fold_means(default_q, fold, everything)
    ceiling = union_ceiling(dev_runs, corpus, dev)

    rows: list[tuple[str, np.ndarray, np.ndarray | None, str]] = []

    def row(name: str, held: np.ndarray, note: str = "") -> None:
        rows.append((name, held, held[:, 0] - default_folds[:, 0], note))

    row(f"default: {DEFAULT} (fixed)", default_folds)
    # Plain DBSF, as Qdrant does it: unweighted sum, no parameter to fit.
    for depth in DBSF_DEPTHS:
        cd = c if depth == args.depth else candidates(dev_runs, dev, corpus.ids, depth)
        row(f"dbsf depth={depth} (fixed, unweighted)", fold_means(
            fused_metrics(cd, "dbsf", np.full(len(dev.ids), 0.5)), fold, everything))

    results: list[FamilyResult] = []
    for base in BASES:
        for feature in ("fixed",) + FEATURES:
            if feature == "fixed":
                # slope 0 only: a fixed weight, fitted in the folds
                outcomes = {
                    (b, 0.0): fused_metrics(c, base, np.full(len(dev.ids), sigmoid(b)))
                    for b in BIASES
                }
                held, picks = [], []
                for f in everything:
                    p = pick(outcomes, fold, [g for g in everything if g != f])
                    picks.append(p)
                    held.append(outcomes[p][fold == f].mean(axis=0))
                best = pick(outcomes, fold, everything)
                result = FamilyResult(
                    f"{base} × fixed weight", np.array(held), picks, best,
                    fold_means(outcomes[best], fold, everything),
                )
            else:
                result = cross_validate_family(c, feats, base, feature, fold, args.folds)
            results.append(result)
            print(f"[{time.perf_counter() - started:5.1f}s] {result.name}", flush=True)

    for r in results:
        picks = Counter(f"b={b:+.2f} s={s:g}" for b, s in r.picks)
        row(
            f"{r.name} depth={args.depth}", r.held_out,
            f"all dev: bias={r.all_dev[0]:+.2f} slope={r.all_dev[1]:g} "
            f"(in-sample {r.in_sample[:, 0].mean():.3f}); fold picks: "
            + ", ".join(f"{k} ×{v}" for k, v in picks.most_common()),
        )

    print(f"\nDev: {len(dev.ids)} queries, {args.folds} folds, depth {args.depth}; union ceiling "
          f"{ceiling:.3f}. Held-out folds (parameters picked on the other folds); Δ = paired "
          "difference in recall@10 with the default on the same fold.\n")
    print("| method | recall@10 | MRR@10 | nDCG@10 | Δ recall@10 vs default | notes |")
    print("|---|---:|---:|---:|---:|---|")
    for name, held, delta, note in sorted(rows, key=lambda r: -r[1][:, 0].mean()):
        mean, sd = held.mean(axis=0), held.std(axis=0, ddof=1)
        print(f"| {name} | " + " | ".join(f"{m:.3f} ± {s:.3f}" for m, s in zip(mean, sd))
              + f" | {delta.mean():+.4f} ± {delta.std(ddof=1):.4f} | {note} |")

    if args.test:
        chosen = next(r for r in results if r.name == args.test)
        test = queries["test"]
        test_runs = run_retrievers(corpus, test, None, bm25, dense, doc_vectors)
        ct = candidates(test_runs, test, corpus.ids, args.depth)
        base, feature = args.test.split(" × ")
        bias, slope = chosen.all_dev
        if feature == "fixed weight":
            weight = np.full(len(test.ids), sigmoid(bias))
        elif feature == "logreg":
            label = which_retriever(c)
            model = logistic_fit(feats["raw"][label >= 0], label[label >= 0])
            weight = sigmoid(bias + slope * logistic_logit(model, features(ct)["raw"]))
        else:
            weight = sigmoid(bias + slope * features(ct)[feature])
        adaptive = fused_metrics(ct, base, weight)
        fixed = per_query(
            [fused_ids(DEFAULT, d, b) for d, b in zip(test_runs.dense_hits, test_runs.bm25_hits)], test
        )
        rng = np.random.default_rng(13)
        samples = rng.integers(0, len(test.ids), (2000, len(test.ids)))
        diff = adaptive[:, 0] - fixed[:, 0]
        ci = np.percentile(diff[samples].mean(axis=1), [2.5, 97.5])
        print(f"\nTest ({len(test.ids)} queries, scored once): {args.test} bias={bias:+.2f} "
              f"slope={slope:g} depth={args.depth}")
        print(f"  adaptive: {' | '.join(f'{v:.3f}' for v in adaptive.mean(axis=0))}")
        print(f"  default ({DEFAULT}): {' | '.join(f'{v:.3f}' for v in fixed.mean(axis=0))}")
        print(f"  Δ recall@10 {diff.mean():+.4f} (95% paired bootstrap {ci[0]:+.4f}..{ci[1]:+.4f})")
        print(f"  union ceiling {union_ceiling(test_runs, corpus, test):.3f}")
    print(f"\nruntime {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
