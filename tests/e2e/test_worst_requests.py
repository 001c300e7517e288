"""The worst legal request under each of a shard's limits, sent to a real shard process at
its default settings, with what it cost the shard: wall time, the shard's CPU (from
/proc/<pid>/stat) and the growth of its peak resident memory (VmHWM, reset before each
request through /proc/<pid>/clear_refs). docs/reliability.md's limits table records a run
(`pytest -s` prints the rows) and names exactly the limits this test sends.

What each must do: be answered or refused at once with a reason that names the limit,
never take the shard into swap or the OOM killer (peak RSS growth at most 256 MiB), and
leave the shard idle soon after a caller that gave up (the work is stopped, not finished).
Wall-time bounds here are loose on purpose (this machine is shared): they tell "refused
before the work" from "refused after minutes of it", as the probe found them."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest

from contentembed.common.v1 import types_pb2
from contentembed.index.v1 import index_service_pb2 as pb
from contentembed.index.v1 import index_service_pb2_grpc as pb_grpc
from contentembed.services.common.metadata import MetadataLimits, check_metadata
from contentembed.services.common.protoconv import dict_to_struct
from tests.conftest import error_reason
from tests.e2e.test_index_faults import start_index
from tests.support.memory import status_bytes

pytestmark = pytest.mark.e2e
DIM = 384
RSS_GROWTH_BOUND = 256 << 20
RELIABILITY = Path(__file__).resolve().parents[2] / "docs" / "reliability.md"
FAT_ITEMS = 2000  # items with 8 KiB of metadata each
WIDE_ITEMS = 10_000  # items with a category each, for $in
TEXT_ITEMS = 300  # items with 64 KiB of text each


def unit_rows(count: int, seed: int) -> np.ndarray:
    rows = np.random.default_rng(seed).normal(size=(count, DIM)).astype("<f4")
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def vec(row: np.ndarray) -> types_pb2.Vector:
    return types_pb2.Vector(data=row.astype("<f4").tobytes(), dim=DIM)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0  # utime + stime, in clock ticks


@dataclass
class Measured:
    outcome: str
    wall_s: float
    cpu_s: float
    rss_growth: int


def measure(pid: int, call: Callable[[], object]) -> Measured:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM back to the current RSS
    rss_before = status_bytes("VmRSS", pid)
    cpu_before, started = cpu_seconds(pid), time.monotonic()
    try:
        call()
        outcome = "OK"
    except grpc.RpcError as error:
        reason = error_reason(error) if error.code() != grpc.StatusCode.DEADLINE_EXCEEDED else ""
        outcome = f"{error.code().name} {reason}".strip()
    wall = time.monotonic() - started
    time.sleep(0.2)  # let the shard finish what it was doing, then read what it cost
    return Measured(outcome, wall, cpu_seconds(pid) - cpu_before,
                    status_bytes("VmHWM", pid) - rss_before)


def fill(stub: pb_grpc.IndexServiceStub) -> None:
    eight_kib = {"blob": "m" * (8 * 1024 - 40)}
    stub.CreateCollection(pb.CreateCollectionRequest(name="fat", space_id="s@1", dim=DIM))
    rows = unit_rows(FAT_ITEMS, 1)
    for start in range(0, FAT_ITEMS, 500):
        stub.Upsert(pb.UpsertRequest(collection="fat", items=[
            pb.Item(id=f"fat-{n:05d}", vector=vec(rows[n]), metadata=dict_to_struct(eight_kib))
            for n in range(start, start + 500)]), timeout=120)
    stub.CreateCollection(pb.CreateCollectionRequest(name="wide", space_id="s@1", dim=DIM))
    rows = unit_rows(WIDE_ITEMS, 2)
    for start in range(0, WIDE_ITEMS, 2000):
        stub.Upsert(pb.UpsertRequest(collection="wide", items=[
            pb.Item(id=f"w-{n:05d}", vector=vec(rows[n]),
                    metadata=dict_to_struct({"category": f"c{n % 1000:04d}", "n": n}))
            for n in range(start, start + 2000)]), timeout=120)
    stub.CreateCollection(pb.CreateCollectionRequest(name="texts", space_id="s@1", dim=DIM))
    rows = unit_rows(TEXT_ITEMS, 3)
    for start in range(0, TEXT_ITEMS, 100):
        stub.Upsert(pb.UpsertRequest(collection="texts", items=[
            pb.Item(id=f"t-{n:05d}", vector=vec(rows[n]), text="word " * (64 * 1024 // 5 - 1))
            for n in range(start, start + 100)]), timeout=120)


LIMITS = (
    "max_queries_per_batch x max_top_k x max_ef",
    "max_search_cpu_s",
    "max_message_bytes (answer)",
    "max_top_k",
    "filter $in (max_metadata_bytes)",
    "exact search (max_search_cpu_s)",
    "caller deadline (cancellation)",
    "max_items_per_upsert x GetItems",
    "max_items_per_upsert (write)",
)


def test_the_worst_legal_request_under_each_limit(tmp_path: Path) -> None:
    shard = start_index(tmp_path, tmp_path / "data")
    results: dict[str, Measured] = {}
    try:
        shard.wait_until_serving(time.monotonic() + 60)
        options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
        with grpc.insecure_channel(shard.address, options=options) as channel:
            stub = pb_grpc.IndexServiceStub(channel)
            fill(stub)
            queries = unit_rows(1024, 9)
            # 700 values, half of them present: just under the 8 KiB a filter may take.
            eight_kib_in = {"category": {"$in": [f"c{n:04d}" for n in range(0, 1400, 2)]}}
            check_metadata(eight_kib_in, MetadataLimits(), what="filter", kind="FILTER")

            def batch(count: int, **fields: object) -> pb.SearchBatchRequest:
                return pb.SearchBatchRequest(query_batch=types_pb2.VectorBatch(
                    data=queries[:count].tobytes(), count=count, dim=DIM), packed=True, **fields)

            # Every maximum at once, over 10k items: refused before a vector is compared.
            worst = batch(1024, collection="wide", top_k=1000, ef=10_000)
            results[LIMITS[0]] = measure(shard.pid, lambda: stub.SearchBatch(worst, timeout=60))
            # The most queries the CPU budget admits at those settings...
            try:
                stub.SearchBatch(worst, timeout=60)
            except grpc.RpcError as error:
                details = error.details()
            fits = int(re.search(r"(\d+) of these queries fit", details).group(1))
            admitted = batch(fits, collection="wide", top_k=1000, ef=10_000)
            results[LIMITS[1]] = measure(shard.pid, lambda: stub.SearchBatch(admitted, timeout=60))
            # ... and at ef 100: searched at once, refused while its answer is built.
            big = batch(64, collection="fat", top_k=1000)
            results[LIMITS[2]] = measure(shard.pid, lambda: stub.SearchBatch(big, timeout=60))
            one = pb.SearchRequest(collection="fat", query=vec(queries[0]), top_k=1000, packed=True)
            results[LIMITS[3]] = measure(shard.pid, lambda: stub.Search(one, timeout=60))
            filtered = batch(1, collection="wide", top_k=10, filter=dict_to_struct(eight_kib_in))
            results[LIMITS[4]] = measure(shard.pid, lambda: stub.SearchBatch(filtered, timeout=60))
            exact = pb.SearchRequest(collection="wide", query=vec(queries[0]), top_k=10, exact=True)
            results[LIMITS[5]] = measure(shard.pid, lambda: stub.Search(exact, timeout=60))
            # The longest search admitted (the CPU budget's batch) with a caller that
            # gives up after 0.3 s: the shard stops within a chunk, then idles.
            results[LIMITS[6]] = cancelled = measure(
                shard.pid, lambda: stub.SearchBatch(admitted, timeout=0.3))
            idle_from = cpu_seconds(shard.pid)
            time.sleep(0.3)
            idle_cpu = cpu_seconds(shard.pid) - idle_from
            ids = [f"t-{n:05d}" for n in range(10_000)]
            many = pb.GetItemsRequest(collection="texts", ids=ids)
            results[LIMITS[7]] = measure(shard.pid, lambda: stub.GetItems(many, timeout=60))
            rows = unit_rows(10_000, 4)
            write = pb.UpsertRequest(collection="wide", items=[
                pb.Item(id=f"w-{n:05d}", vector=vec(rows[n])) for n in range(10_000)])
            # Searches of the collection being written keep answering meanwhile: the write
            # is applied in slices (before, they waited out its 19 s).
            latencies: list[float] = []

            def search_meanwhile() -> None:
                time.sleep(1.0)
                for _ in range(5):
                    started = time.monotonic()
                    stub.Search(pb.SearchRequest(collection="wide", query=vec(queries[1]),
                                                 top_k=10), timeout=5)
                    latencies.append(time.monotonic() - started)

            searcher = threading.Thread(target=search_meanwhile)
            searcher.start()
            results[LIMITS[8]] = measure(shard.pid, lambda: stub.Upsert(write, timeout=120))
            searcher.join(30)
    finally:
        shard.stop(30)

    print(f"\nafter the cancel: {idle_cpu:.2f} s of shard CPU in the next 0.3 s")
    print("| limit | worst legal request | outcome | wall | shard CPU | peak RSS growth |")
    for name, result in results.items():
        print(f"| {name} | | {result.outcome} | {result.wall_s:.2f} s | {result.cpu_s:.2f} s | "
              f"{result.rss_growth / 2**20:.0f} MiB |")
    expected = {
        LIMITS[0]: "INVALID_ARGUMENT SEARCH_TOO_COSTLY",
        LIMITS[1]: "OK",
        LIMITS[2]: "RESOURCE_EXHAUSTED ANSWER_TOO_LARGE",
        LIMITS[3]: "OK",
        LIMITS[4]: "OK",
        LIMITS[5]: "OK",
        LIMITS[6]: "DEADLINE_EXCEEDED",
        LIMITS[7]: "RESOURCE_EXHAUSTED ANSWER_TOO_LARGE",
        LIMITS[8]: "OK",
    }
    assert {name: r.outcome for name, r in results.items()} == expected
    for name, result in results.items():
        assert result.rss_growth <= RSS_GROWTH_BOUND, (name, result)
    # Refused before the work: no vector compared (the probe's batch ran 204 s to an OOM).
    assert results[LIMITS[0]].cpu_s < 0.5 and results[LIMITS[0]].wall_s < 2
    # The $in of 700 values is decided by the payload index: it cost 5.7 s of CPU before.
    assert results[LIMITS[4]].cpu_s < 0.5
    # The shard stopped the cancelled search: far less CPU than finishing it takes, and
    # from 0.2 s after the deadline on it is idle.
    assert cancelled.cpu_s < 0.6 * results[LIMITS[1]].cpu_s, (cancelled, results[LIMITS[1]])
    assert idle_cpu < 0.05, idle_cpu
    # The worst search admitted by the CPU budget answers within about 2 s on 2 cores.
    assert results[LIMITS[1]].wall_s < 6, results[LIMITS[1]]
    # Searches during the largest write were answered, each waiting a slice at most.
    assert len(latencies) == 5 and max(latencies) < 5, latencies
    print(f"searches during the 10,000-item upsert: {max(latencies):.2f} s at most")


def test_the_limits_table_names_exactly_the_limits_this_test_sends() -> None:
    text = RELIABILITY.read_text()
    table = text[text.index("## Limits"):]
    table = table[: table.index("\n## ", 4)] if "\n## " in table[4:] else table
    named = re.findall(r"^\| ([^|]+?) \|", table, re.MULTILINE)
    named = [n for n in named if n not in ("limit",) and not set(n) <= {"-"}]
    assert sorted(named) == sorted(LIMITS), (named, LIMITS)
