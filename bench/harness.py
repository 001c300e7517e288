"""Shared pieces of the benchmarks: start a service process, drive Embed from an asyncio
gRPC client, read batch statistics from a service's /metrics, ingest the docstring
evaluation set through a running stack, and drive Search from closed-loop callers."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import grpc
from prometheus_client.parser import text_string_to_metric_families

from contentembed.cli.stack import ServiceProcess
from contentembed.client import Client, SearchResult
from contentembed.demo import docstrings
from contentembed.encoder.v1 import encoder_service_pb2 as pb
from contentembed.encoder.v1 import encoder_service_pb2_grpc as pb_grpc
from contentembed.pipeline.catalog import read_catalog_rows
from contentembed.pipeline.ingest import ingest_catalog


@contextmanager
def running_encoder(name: str, module: str, args: Sequence[str]) -> Iterator[ServiceProcess]:
    with TemporaryDirectory() as run_dir:
        service = ServiceProcess(name, module, ["--port", "0", "--metrics-port", "0", *args], Path(run_dir))
        service.start(dict(os.environ))
        try:
            deadline = time.monotonic() + 300
            service.wait_for_port(deadline)
            service.wait_until_serving(deadline)
            yield service
        finally:
            service.stop(10)


def embed_rate(
    address: str,
    inputs: Sequence[pb.EmbedInput],
    callers: int,
    per_call: int,
    seconds: float,
) -> float:
    """Inputs/s with `callers` concurrent loops, each sending `per_call` inputs per Embed."""

    async def run() -> float:
        async with grpc.aio.insecure_channel(
            address, options=[("grpc.max_send_message_length", 64 << 20)]
        ) as channel:
            stub = pb_grpc.EncoderServiceStub(channel)
            source = itertools.cycle(inputs)

            def request() -> pb.EmbedRequest:
                return pb.EmbedRequest(inputs=[next(source) for _ in range(per_call)])

            await stub.Embed(request())  # warm the channel
            stop = time.perf_counter() + seconds
            done = 0

            async def caller() -> None:
                nonlocal done
                while time.perf_counter() < stop:
                    response = await stub.Embed(request(), timeout=120)
                    done += response.vectors.count

            started = time.perf_counter()
            await asyncio.gather(*(caller() for _ in range(callers)))
            return done / (time.perf_counter() - started)

    return asyncio.run(run())


def metric_values(metrics_port: int) -> dict[str, float]:
    """Every sample of a service's /metrics, summed over labels, by sample name."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"  # plain http on loopback, never a file
    text = urllib.request.urlopen(url).read().decode()  # nosec B310
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[sample.name] = values.get(sample.name, 0.0) + sample.value
    return values


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def batch_stats(metrics_port: int) -> tuple[float, float, float, float]:
    """(batches, items, compute seconds, of which inside a model worker process) so far,
    from a service's /metrics."""
    values = metric_values(metrics_port)
    return (
        values.get("contentembed_batch_size_items_count", 0.0),
        values.get("contentembed_batch_size_items_sum", 0.0),
        values.get("contentembed_batch_compute_seconds_sum", 0.0),
        values.get("contentembed_model_worker_compute_seconds_sum", 0.0),
    )


def measured_phase(
    service: ServiceProcess, run: Callable[..., float], *args: object
) -> tuple[float, str]:
    """Runs ``run(*args)`` as one load phase; returns (rate, how the service batched it)."""
    before = batch_stats(service.metrics_port)
    rate = run(*args)
    batches, items, compute, in_worker = (
        a - b for a, b in zip(batch_stats(service.metrics_port), before))
    shape = f"mean batch {items / batches:5.1f}, {1000 * compute / batches:6.1f} ms/batch" if batches else ""
    if batches and in_worker:
        shape += f" ({1000 * in_worker / batches:.1f} in the worker)"
    return rate, shape


def loop_rate(work: Callable[[], int], seconds: float) -> float:
    """Items/s of work() -> items, after one warm-up call."""
    work()
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        done += work()
    return done / (time.perf_counter() - started)


# -- the docstring evaluation set through a running stack ----------------------------------
def unique_summaries(documents: Sequence[docstrings.Entry]) -> list[str]:
    """Every distinct summary, in document order: realistic queries, each usable once so
    that no query-embedding cache can answer one."""
    return list(dict.fromkeys(entry.summary for entry in documents))


def ingest_docstrings(
    client: Client, collection: str, documents: Sequence[docstrings.Entry], scratch: Path,
    *, hybrid: bool = False,
) -> None:
    """Ingests the documents as `contentembed ingest` would: a JSONL catalog read by the
    pipeline, embedded by the stack's text encoder."""
    catalog_path = scratch / f"{collection}-catalog.jsonl"
    catalog_path.write_text("".join(
        json.dumps({"id": entry.id, "text": entry.text}) + "\n" for entry in documents
    ))
    catalog = read_catalog_rows(catalog_path, max_rejects=None)
    ingest_catalog(client, collection, catalog, 64, show_progress=False, hybrid=hybrid)


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of already sorted values (nan when there are none)."""
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def closed_loop(
    address: str, collection: str, queries: Sequence[str], callers: int, seconds: float,
    query_args: Callable[[str], dict[str, Any]] | None = None, **search: Any,
) -> dict[str, Any]:
    """`callers` threads, each with its own client, taking the next unseen query until the
    queries or the time run out. ``search`` goes to every Client.search call; each query
    is its ``text``, or what ``query_args(query)`` makes of it (a vector, say).

    Returns qps, queries, p50/p95/p99 (ms), cache_hits, the mean client-observed latency
    and the mean of the gateway's own latency breakdown (ms), and every result by query."""
    lock = threading.Lock()
    latencies: list[float] = []
    results: dict[str, SearchResult] = {}
    position = 0
    clock: dict[str, float] = {}

    def begin() -> None:
        clock["started"] = time.perf_counter()
        clock["stop"] = clock["started"] + seconds

    # Every caller connects first (a metadata call), then all start together: channel
    # setup is not part of the measured phase.
    ready = threading.Barrier(callers, action=begin)

    def caller() -> None:
        nonlocal position
        with Client(address, timeout=60) as client:
            client.get_collection(collection)
            ready.wait()
            while time.perf_counter() < clock["stop"]:
                with lock:
                    if position >= len(queries):
                        return
                    text = queries[position]
                    position += 1
                began = time.perf_counter()
                asked = query_args(text) if query_args is not None else {"text": text}
                result = client.search(collection, **asked, **search)
                elapsed = time.perf_counter() - began
                with lock:
                    latencies.append(elapsed)
                    results[text] = result

    threads = [threading.Thread(target=caller) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - clock["started"]
    ordered = sorted(latencies)
    count = max(1, len(results))
    stages = {
        stage: sum(r.latency_ms.get(stage, 0.0) for r in results.values()) / count
        for stage in ("encode", "search", "merge", "total")
    }
    return {
        "qps": len(latencies) / wall,
        "queries": len(latencies),
        "exhausted": position >= len(queries),
        "p50_ms": 1000 * percentile(ordered, 0.50),
        "p95_ms": 1000 * percentile(ordered, 0.95),
        "p99_ms": 1000 * percentile(ordered, 0.99),
        "client_mean_ms": 1000 * sum(ordered) / max(1, len(ordered)),
        "stages_ms": stages,
        "cache_hits": sum(r.cache_hit for r in results.values()),
        "results": results,
    }
