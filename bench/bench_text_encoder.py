"""Text-encoder service vs raw sentence-transformers, measured in the same run.

    .venv/bin/python bench/bench_text_encoder.py [--seconds 8] [--device auto] [--model DIR]

Starts the text-encoder as its own process (dynamic batching on, the defaults), then
drives Embed from an asyncio gRPC client: 1, 8, 32 and 64 concurrent callers sending one
text each, and bulk callers sending full batches. The baseline is SentenceTransformer.encode
in this process on the same device, one text per call and batches of 32 and 64. Prints
texts/s and the ratios DESIGN.md section 8 sets targets for (32 single-text callers >= 0.7x
raw batch-32; bulk >= 0.9x raw).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import urllib.request  # noqa: E402

import grpc  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from contentembed.cli.catalog import DEMO_CATALOG  # noqa: E402
from contentembed.cli.stack import ServiceProcess  # noqa: E402
from contentembed.encoder.v1 import encoder_service_pb2 as pb  # noqa: E402
from contentembed.encoder.v1 import encoder_service_pb2_grpc as pb_grpc  # noqa: E402


def corpus() -> list[str]:
    return [json.loads(line)["text"] for line in DEMO_CATALOG.read_text().splitlines() if line.strip()]


async def service_rate(address: str, texts: list[str], callers: int, per_call: int, seconds: float) -> float:
    """Texts/s with `callers` concurrent loops, each sending `per_call` texts per Embed."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.EncoderServiceStub(channel)
        source = itertools.cycle(texts)

        def request() -> pb.EmbedRequest:
            return pb.EmbedRequest(inputs=[pb.EmbedInput(text=next(source)) for _ in range(per_call)])

        await stub.Embed(request())  # warm the channel
        stop = time.perf_counter() + seconds
        done = 0

        async def caller() -> None:
            nonlocal done
            while time.perf_counter() < stop:
                response = await stub.Embed(request(), timeout=60)
                done += response.vectors.count

        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(callers)))
        return done / (time.perf_counter() - started)


def batch_stats(metrics_port: int) -> tuple[float, float, float]:
    """(batches, items, compute seconds) so far, from the service's /metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics").read().decode()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[sample.name] = values.get(sample.name, 0.0) + sample.value
    return (
        values.get("contentembed_batch_size_items_count", 0.0),
        values.get("contentembed_batch_size_items_sum", 0.0),
        values.get("contentembed_batch_compute_seconds_sum", 0.0),
    )


def raw_rate(model, texts: list[str], batch: int, seconds: float) -> float:
    source = itertools.cycle(texts)
    model.encode([next(source) for _ in range(batch)], batch_size=batch)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        model.encode([next(source) for _ in range(batch)], batch_size=batch, normalize_embeddings=True)
        done += batch
    return done / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model", default="all-MiniLM-L6-v2", help="model dir or the bundled name")
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--max-queue-delay-ms", type=float, default=5.0)
    args = parser.parse_args()
    texts = corpus()

    from contentembed.services.text_encoder.backends import (
        pick_device,
        resolve_sentence_transformer,
    )

    device = pick_device(args.device)
    rows: list[tuple[str, float]] = []
    shapes: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as run_dir:
        encoder = ServiceProcess(
            "text-encoder",
            "contentembed.services.text_encoder",
            ["--port", "0", "--metrics-port", "0", "--device", device, "--model", args.model,
             "--max-batch-size", str(args.max_batch_size),
             "--max-queue-delay-ms", str(args.max_queue_delay_ms),
             "--max-queue-items", str(args.max_batch_size * 64)],
            Path(run_dir),
        )
        encoder.start(dict(os.environ))
        try:
            deadline = time.monotonic() + 300
            encoder.wait_for_port(deadline)
            encoder.wait_until_serving(deadline)
            bulk = args.max_batch_size
            phases = [(f"service, {n} concurrent single-text callers", n, 1) for n in (1, 8, 32, 64)]
            phases += [(f"service bulk, {n} caller(s) x {bulk} texts", n, bulk) for n in (1, 2)]
            for label, callers, per_call in phases:
                before = batch_stats(encoder.metrics_port)
                rate = asyncio.run(service_rate(encoder.address, texts, callers, per_call, args.seconds))
                after = batch_stats(encoder.metrics_port)
                batches, items, compute = (a - b for a, b in zip(after, before))
                rows.append((label, rate))
                shapes[label] = f"mean batch {items / batches:5.1f}, {1000 * compute / batches:6.1f} ms/batch"
        finally:
            encoder.stop(10)

    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(resolve_sentence_transformer(args.model)[0]), device=device)
    raw = {batch: raw_rate(model, texts, batch, args.seconds) for batch in (1, 32, args.max_batch_size)}
    rows = [(f"raw encode, batch {batch}", rate) for batch, rate in raw.items()] + rows

    card = "cpu"
    if device.startswith("cuda"):
        import torch

        card = torch.cuda.get_device_name(0)
    print(f"device: {device} ({card}); {os.cpu_count()} cpus; {platform.python_version()}")
    print(f"{'path':<52}{'texts/s':>10}   model calls in the service")
    for label, rate in rows:
        print(f"{label:<52}{rate:>10.1f}   {shapes.get(label, '')}")
    by_label = dict(rows)
    bulk_label = f"service bulk, 2 caller(s) x {args.max_batch_size} texts"
    print(f"ratio 32 single-text callers / raw batch-32      "
          f"{by_label['service, 32 concurrent single-text callers'] / raw[32]:6.2f}  (target >= 0.7)")
    best_bulk = max(by_label[bulk_label], by_label[bulk_label.replace("2 caller", "1 caller")])
    print(f"ratio bulk through service / raw batch-{args.max_batch_size}       "
          f"{best_bulk / raw[args.max_batch_size]:6.2f}  (target >= 0.9)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
