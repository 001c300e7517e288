"""Goodput at 20x capacity: the stack as `contentembed up` starts it (MiniLM, two shards),
SDK clients with default settings offering twenty times what it answers, with 1 s and
5 s deadlines; every query unique (a repeat would be answered from the embedding cache).

Phases, one run, same stack:
1. capacity: 64 closed-loop callers (raw gRPC, no retries), answered/s;
2. for each deadline, an open loop at 20x capacity through AsyncClients (default
   settings: retries honouring RetryInfo, client-side throttling), then the same with
   throttling off (``throttle_k=0``: what the SDK did before), answered/s against capacity.

    python bench/bench_overload.py [--seconds 10] [--overload 20] [--clients 8]

Prints one JSON line per phase and the goodput ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from tempfile import TemporaryDirectory

from contentembed.cli.stack import LocalStack
from contentembed.client import AsyncClient, Client
from contentembed.client.errors import ApiError
from contentembed.pipeline.catalog import DEMO_CATALOG, read_catalog_rows
from contentembed.pipeline.ingest import ingest_catalog

COLLECTION = "products"


def unique_queries(seed: int = 0) -> Iterator[str]:
    words = sorted({word for row in read_catalog_rows(DEMO_CATALOG).rows
                    for word in (row.text or "").lower().split() if word.isalpha()})
    rng = random.Random(seed)
    number = 0
    while True:
        number += 1
        yield f"{' '.join(rng.sample(words, rng.randint(3, 7)))} {number}"


async def closed_loop(address: str, queries: Iterator[str], callers: int, seconds: float) -> float:
    async with AsyncClient(address, retries=0, throttle_k=0) as client:
        done = 0
        stop = time.perf_counter() + seconds

        async def caller() -> None:
            nonlocal done
            while time.perf_counter() < stop:
                await client.search(COLLECTION, text=next(queries), top_k=5, timeout=10)
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(callers)))
        return done / (time.perf_counter() - started)


async def open_loop(address: str, queries: Iterator[str], rate: float, seconds: float,
                    deadline_s: float, clients: int, throttle_k: float | None) -> dict:
    """Calls arrive at ``rate``/s whatever the answers do, spread over ``clients``
    AsyncClients; each call is one SDK search (its retries included) with its deadline.
    ``throttle_k`` None: the SDK's default."""
    options = {} if throttle_k is None else {"throttle_k": throttle_k}
    pool = [AsyncClient(address, **options) for _ in range(clients)]
    codes: Counter[str] = Counter()

    async def one(client: AsyncClient, text: str) -> None:
        try:
            await client.search(COLLECTION, text=text, top_k=5, timeout=deadline_s)
            codes["OK"] += 1
        except ApiError as error:
            codes[error.reason if error.reason == "CLIENT_THROTTLED" else error.code] += 1

    try:
        tasks, sent = [], 0
        cpu_started = time.process_time()
        started = time.perf_counter()
        while (now := time.perf_counter()) < started + seconds:
            due = int((now - started) * rate) + 1
            for n in range(sent, due):
                tasks.append(asyncio.ensure_future(one(pool[n % clients], next(queries))))
            sent = due
            await asyncio.sleep(0.002)
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - started
        generator_cpu = time.process_time() - cpu_started
    finally:
        for client in pool:
            await client.close()
    # The load generator shares the stack's two cores: what it took of them is reported.
    return {"offered_per_s": round(sent / seconds, 1), "answered_per_s": round(codes["OK"] / elapsed, 1),
            "outcomes": dict(codes), "generator_cores": round(generator_cpu / elapsed, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--overload", type=float, default=20.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--deadlines", type=float, nargs="+", default=[1.0, 5.0])
    parser.add_argument("--throttle-k", type=float, nargs="+", default=[],
                        help="also run with these k (client-side throttling; 0 is off)")
    args = parser.parse_args()
    with TemporaryDirectory() as run_dir:
        stack = LocalStack(run_dir=Path(run_dir), shard_count=2)
        stack.start(timeout=300)
        try:
            with Client(stack.gateway_address, timeout=60) as client:
                catalog = read_catalog_rows(DEMO_CATALOG)
                ingest_catalog(client, COLLECTION, catalog, 64, show_progress=False)
            queries = unique_queries()
            address = stack.gateway_address
            asyncio.run(closed_loop(address, queries, 64, 3.0))  # warm-up
            capacity = asyncio.run(closed_loop(address, queries, 64, args.seconds))
            print(json.dumps({"phase": "capacity, 64 callers", "answered_per_s": round(capacity, 1)}))
            for deadline_s in args.deadlines:
                for throttle_k in (None, 0.0, *args.throttle_k):
                    time.sleep(3)  # the last phase's queues drain
                    result = asyncio.run(open_loop(
                        address, queries, args.overload * capacity, args.seconds, deadline_s,
                        args.clients, throttle_k))
                    throttling = ("default" if throttle_k is None
                                  else "off" if throttle_k == 0 else f"k={throttle_k:g}")
                    result.update(phase=f"{args.overload:g}x, {deadline_s:g} s deadline, "
                                        f"SDK throttling {throttling}",
                                  goodput_vs_capacity=round(result["answered_per_s"] / capacity, 2))
                    print(json.dumps(result), flush=True)
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
