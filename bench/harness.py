"""Shared pieces of the encoder benchmarks: start a service process, drive Embed from an
asyncio gRPC client, read batch statistics from the service's /metrics."""

from __future__ import annotations

import asyncio
import itertools
import os
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from tempfile import TemporaryDirectory

import grpc
from prometheus_client.parser import text_string_to_metric_families

from contentembed.cli.stack import ServiceProcess
from contentembed.encoder.v1 import encoder_service_pb2 as pb
from contentembed.encoder.v1 import encoder_service_pb2_grpc as pb_grpc


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


def batch_stats(metrics_port: int) -> tuple[float, float, float]:
    """(batches, items, compute seconds) so far, from a service's /metrics."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"  # plain http on loopback, never a file
    text = urllib.request.urlopen(url).read().decode()  # nosec B310
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[sample.name] = values.get(sample.name, 0.0) + sample.value
    return (
        values.get("contentembed_batch_size_items_count", 0.0),
        values.get("contentembed_batch_size_items_sum", 0.0),
        values.get("contentembed_batch_compute_seconds_sum", 0.0),
    )


def measured_phase(
    service: ServiceProcess, run: Callable[..., float], *args: object
) -> tuple[float, str]:
    """Runs ``run(*args)`` as one load phase; returns (rate, how the service batched it)."""
    before = batch_stats(service.metrics_port)
    rate = run(*args)
    batches, items, compute = (a - b for a, b in zip(batch_stats(service.metrics_port), before))
    shape = f"mean batch {items / batches:5.1f}, {1000 * compute / batches:6.1f} ms/batch" if batches else ""
    return rate, shape


def loop_rate(work: Callable[[], int], seconds: float) -> float:
    """Items/s of work() -> items, after one warm-up call."""
    work()
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        done += work()
    return done / (time.perf_counter() - started)
