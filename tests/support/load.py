"""Load for reliability tests: unique text queries against a gateway, closed loop (N
callers) or open loop (a fixed arrival rate), with every outcome recorded."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from contentembed.search.v1 import search_service_pb2 as pb
from contentembed.search.v1 import search_service_pb2_grpc as pb_grpc


def unique_queries(catalog: Path, seed: int = 0) -> Iterator[str]:
    """Never the same text twice (a repeated query would measure the embedding cache)."""
    import json

    words = sorted({
        word
        for line in catalog.read_text().splitlines() if line.strip()
        for word in json.loads(line)["text"].lower().split()
        if word.isalpha()
    })
    rng = random.Random(seed)
    number = 0
    while True:
        number += 1
        yield f"{' '.join(rng.sample(words, rng.randint(3, 7)))} {number}"


@dataclass
class Outcome:
    code: str
    latency_s: float
    retry_delay_s: float | None = None


@dataclass
class LoadResult:
    seconds: float
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def codes(self) -> Counter[str]:
        return Counter(o.code for o in self.outcomes)

    @property
    def goodput(self) -> float:
        return self.codes["OK"] / self.seconds

    def latency_quantile(self, q: float) -> float:
        ok = sorted(o.latency_s for o in self.outcomes if o.code == "OK")
        return ok[min(len(ok) - 1, int(q * len(ok)))] if ok else float("nan")


def _retry_delay(error: grpc.aio.AioRpcError) -> float | None:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    for detail in status.details if status is not None else ():
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            return info.retry_delay.ToNanoseconds() / 1e9
    return None


async def _one(stub: pb_grpc.SearchServiceStub, collection: str, text: str, timeout: float) -> Outcome:
    started = time.perf_counter()
    try:
        await stub.Search(pb.SearchRequest(collection=collection, text=text, top_k=5), timeout=timeout)
        return Outcome("OK", time.perf_counter() - started)
    except grpc.aio.AioRpcError as error:
        return Outcome(error.code().name, time.perf_counter() - started, _retry_delay(error))


def closed_loop(
    address: str, collection: str, queries: Iterator[str], callers: int, seconds: float,
    timeout: float = 10.0,
) -> LoadResult:
    """``callers`` loops, each sending its next query as soon as the last one answered."""

    async def run() -> LoadResult:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.SearchServiceStub(channel)
            result = LoadResult(seconds)
            stop = time.perf_counter() + seconds

            async def caller() -> None:
                while time.perf_counter() < stop:
                    result.outcomes.append(await _one(stub, collection, next(queries), timeout))

            started = time.perf_counter()
            await asyncio.gather(*(caller() for _ in range(callers)))
            result.seconds = time.perf_counter() - started
            return result

    return asyncio.run(run())


def open_loop(
    address: str, collection: str, queries: Iterator[str], rate: float, seconds: float,
    timeout: float,
) -> LoadResult:
    """Calls arrive at ``rate`` per second whatever the answers do, as real traffic would."""

    async def run() -> LoadResult:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.SearchServiceStub(channel)
            started = time.perf_counter()
            tasks = []
            sent = 0
            while (now := time.perf_counter()) < started + seconds:
                due = int((now - started) * rate) + 1
                for _ in range(due - sent):
                    tasks.append(asyncio.ensure_future(_one(stub, collection, next(queries), timeout)))
                sent = due
                await asyncio.sleep(0.002)
            outcomes = await asyncio.gather(*tasks)
            return LoadResult(seconds, list(outcomes))

    return asyncio.run(run())
