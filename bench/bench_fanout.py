"""The gateway's fan-out to the shards, with and without coalescing, in one run.

    .venv/bin/python bench/bench_fanout.py [--docs 1000] [--seconds 8]

The local stack as ``contentembed up`` starts it (2 shards), the first ``--docs``
documents of the docstring evaluation set ingested through it. Searches by vector (no
encoder: only the gateway and the shards work), each a stored vector plus noise, never
repeated. For each gateway setting, ``--shard-max-in-flight`` 4 (the default) and 0 (every
search its own Search call), the gateway is restarted on the same shards and driven by 1,
8, 32 and 64 closed-loop callers. Prints q/s, p50/p99, CPU ms per query of the gateway and
the shards (/proc), and how the shards were called (Search vs SearchBatch, from their
/metrics).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from harness import closed_loop, cpu_seconds, ingest_docstrings  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from contentembed.cli.stack import LocalStack  # noqa: E402
from contentembed.client import Client  # noqa: E402
from contentembed.demo import docstrings  # noqa: E402

COLLECTION = "fanout"
CALLERS = (1, 8, 32, 64, 128)
SETTINGS = ("4", "0")


def shard_calls(stack: LocalStack) -> dict[str, float]:
    """Search and SearchBatch calls answered so far, over every shard."""
    totals = {"Search": 0.0, "SearchBatch": 0.0}
    for service in stack.services:
        if service.name.startswith("index-"):
            url = f"http://127.0.0.1:{service.metrics_port}/metrics"  # loopback http, never a file
            text = urllib.request.urlopen(url).read().decode()  # nosec B310
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    method = sample.labels.get("method")
                    if sample.name == "contentembed_rpc_duration_seconds_count" and method in totals:
                        totals[method] += sample.value
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    documents = docstrings.build().documents[: args.docs]
    rows = []
    with tempfile.TemporaryDirectory() as run_dir, LocalStack(run_dir=Path(run_dir), shard_count=2) as stack:
        with Client(stack.gateway_address, timeout=600) as client:
            ingest_docstrings(client, COLLECTION, documents, Path(run_dir))
            found = client.get_documents(COLLECTION, [d.id for d in documents[:500]], with_vectors=True)
            space = client.get_collection(COLLECTION).space_id
        stored = np.asarray([d.vector for d in found.documents], dtype=np.float32)
        rng = np.random.default_rng(5)
        gateway = next(s for s in stack.services if s.name == "gateway")
        for setting in SETTINGS:
            gateway.stop(20)
            gateway.restart({**stack.child_env(), "CONTENTEMBED_SHARD_MAX_IN_FLIGHT": setting})
            deadline = time.monotonic() + 120
            gateway.wait_for_port(deadline)
            gateway.wait_until_serving(deadline)
            for callers in CALLERS:
                count = 20_000
                noisy = stored[rng.integers(0, len(stored), count)] + 0.05 * rng.normal(
                    size=(count, stored.shape[1])).astype(np.float32)
                queries = [str(i) for i in range(count)]
                cpu_before = {s.name: cpu_seconds(s.pid) for s in stack.services}
                calls_before = shard_calls(stack)
                figures = closed_loop(
                    stack.gateway_address, COLLECTION, queries, callers, args.seconds,
                    query_args=lambda q, noisy=noisy: {"vector": noisy[int(q)], "vector_space_id": space},
                    top_k=10,
                )
                calls = {k: v - calls_before[k] for k, v in shard_calls(stack).items()}
                cpu = {s.name: 1000 * (cpu_seconds(s.pid) - cpu_before[s.name]) / figures["queries"]
                       for s in stack.services if s.name == "gateway" or s.name.startswith("index-")}
                rows.append((setting, callers, figures, cpu, calls))
                print(f"in-flight {setting}, {callers:>2} callers: {figures['qps']:.0f} q/s", flush=True)
    print(f"{len(documents)} documents, 2 shards; {os.cpu_count()} cpus; Python {platform.python_version()}")
    print(f"{'max in flight':>13} {'callers':>7} {'q/s':>7} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'gateway CPU ms/q':>16} {'shards CPU ms/q':>15} {'shard calls/q':>13} {'queries/batch':>13}")
    for setting, callers, f, cpu, calls in rows:
        shards_cpu = sum(v for k, v in cpu.items() if k.startswith("index-"))
        made = calls["Search"] + calls["SearchBatch"]
        per_batch = (2 * f["queries"] - calls["Search"]) / calls["SearchBatch"] if calls["SearchBatch"] else 0
        print(f"{setting:>13} {callers:>7} {f['qps']:>7.0f} {f['p50_ms']:>7.1f} {f['p99_ms']:>7.1f} "
              f"{cpu['gateway']:>16.2f} {shards_cpu:>15.2f} {made / f['queries']:>13.2f} {per_batch:>13.1f}")


if __name__ == "__main__":
    main()
