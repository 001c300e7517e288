"""Replica groups: what R replicas per shard cost in write throughput, how long a failover
takes, how fast a follower catches up by the log, and how the gateway spreads reads.

Every phase starts index processes as `contentembed up` does (durable data directory,
WAL fsync on every write, the default snapshot cadence and 3 s lease), all on this
machine: with R replicas on one box the followers' HNSW inserts take the same cores as
the primary's, which a deployment with a node per replica does not pay. So the CPU each
write phase used is printed, and R=1 against R=2 is measured twice: as `up` starts the
processes, and with each replica pinned to a core of its own (taskset; a node each).

1. Write throughput, R = 1 / 2 / 3: one shard group each (R=1 is one process without
   --replica-id, as today), the same unique 384-d unit vectors, upserts of --batch items
   (64, ingest's batch) from --writers threads (4) straight to the primary's IndexService.
   The R are run in a palindrome (1 2 3 3 2 1) so that drift weighs on each alike; the
   spread between the two R=1 runs is printed as the noise.
2. Failover, R=3 under a steady writer (25 writes/s of 8 items) and a reader: SIGKILL the
   primary, time from the kill to the first write a surviving replica acknowledges; the
   killed one is restarted and brought back in sync before the next round. The reader
   tries every live replica in turn: a read counts as refused when none answered.
3. Catch-up by the log, R=2: a follower stopped, RECORDS upserts of K items written to
   the lone primary (a "record" is one acknowledged write request = one WAL record of K
   items; both rates are printed), the follower restarted and timed from its port opening
   until it answers a read (REPLICA_CATCHING_UP until then; at most 120 s, else the rate
   is a bound). The writes stay under the default snapshot cadence (10,000 items), so the
   log alone can bring it up; the primary's own write rate for the same records is the
   baseline. The logs' catch-up retries (shed, timed out) are counted.
4. Read spread: the full local stack (encoders, one shard of R replicas, gateway) with a
   few hundred docstrings ingested; unique vector queries and unique text queries (no
   query-cache hits), each replica's Search calls read from its /metrics.

    python bench/bench_replication.py            # 4-5 minutes on 2 cores (+2 min a stalled catch-up)
    python bench/bench_replication.py --quick    # about 2 minutes
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import grpc  # noqa: E402
import numpy as np  # noqa: E402
from harness import closed_loop, cpu_seconds, ingest_docstrings, unique_summaries  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from contentembed.cli.stack import HOST, LocalStack, ServiceProcess, free_ports  # noqa: E402
from contentembed.client import Client  # noqa: E402
from contentembed.demo import docstrings  # noqa: E402
from contentembed.index.v1 import index_service_pb2 as pb  # noqa: E402
from contentembed.index.v1 import index_service_pb2_grpc as pb_grpc  # noqa: E402
from contentembed.index.v1 import replication_service_pb2 as rpb  # noqa: E402
from contentembed.index.v1 import replication_service_pb2_grpc as rpb_grpc  # noqa: E402
from contentembed.rpc_status import error_reason  # noqa: E402

DIM = 384
COLLECTION = "c"
REJOIN_LIMIT_S = 120.0  # a killed replica back in sync (failover), else the rounds stop
CATCH_UP_LIMIT_S = 120.0  # a restarted follower answering reads; past it: a lower bound
TARGETS = {"write_r2": 0.7, "failover_s": 10.0, "catch_up_records_s": 20_000.0, "spread": 0.2}


KEEP: Path | None = None  # --keep: run directories (logs, data) are left there


@contextmanager
def scratch(name: str) -> Iterator[str]:
    if KEEP is None:
        with tempfile.TemporaryDirectory() as directory:
            yield directory
    else:
        KEEP.mkdir(parents=True, exist_ok=True)
        directory = tempfile.mkdtemp(prefix=f"{name}-", dir=KEEP)
        print(f"# {name}: {directory}", flush=True)
        yield directory


def log_events(root: Path) -> dict[str, int]:
    """What the index processes' logs say happened: snapshots sent, catch-up retries (by
    the error's first word), lease changes."""
    events: Counter[str] = Counter()
    for path in sorted((root / "logs").glob("index-*.log")):
        for line in path.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            entry = json.loads(line)
            msg = entry.get("msg", "")
            if msg == "replica catch-up failed; retrying":
                events[f"catch-up retry ({str(entry.get('error', '')).split(' ', 1)[0]})"] += 1
            elif msg in ("snapshot sent to a replica", "this replica is primary",
                         "this replica is no longer primary", "replica dropped from the in-sync set"):
                events[msg] += 1
    return dict(events)


def unit_vectors(rng: np.random.Generator, count: int) -> np.ndarray:
    values = rng.normal(size=(count, DIM)).astype(np.float32)
    return values / np.linalg.norm(values, axis=1, keepdims=True)


def upsert(ids: list[str], vectors: np.ndarray) -> pb.UpsertRequest:
    return pb.UpsertRequest(collection=COLLECTION, items=[
        pb.Item(id=i, vector={"data": v.astype("<f4").tobytes(), "dim": DIM})
        for i, v in zip(ids, vectors)])


def search(vector: np.ndarray) -> pb.SearchRequest:
    return pb.SearchRequest(collection=COLLECTION, top_k=10,
                            query={"data": vector.astype("<f4").tobytes(), "dim": DIM})


def reason(error: grpc.RpcError) -> str:
    return error_reason(error) or error.code().name


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def search_counts(metrics_port: int) -> float:
    """Search calls a process answered so far (any status), from its /metrics."""
    url = f"http://{HOST}:{metrics_port}/metrics"  # loopback http, never a file
    text = urllib.request.urlopen(url, timeout=5).read().decode()  # nosec B310
    return sum(sample.value for family in text_string_to_metric_families(text)
               for sample in family.samples
               if sample.name == "contentembed_rpc_duration_seconds_count"
               and sample.labels.get("method") == "Search")


# -- a shard group of index processes -----------------------------------------------------
@dataclass
class Replica:
    replica_id: str
    process: ServiceProcess
    channel: grpc.Channel | None = None

    def _open(self) -> grpc.Channel:
        if self.channel is None:
            self.channel = grpc.insecure_channel(
                self.process.address, options=[("grpc.max_send_message_length", 64 << 20)])
        return self.channel

    @property
    def index(self) -> pb_grpc.IndexServiceStub:
        return pb_grpc.IndexServiceStub(self._open())

    def state(self, timeout: float = 2.0) -> rpb.ReplicaState:
        stub = rpb_grpc.ReplicationServiceStub(self._open())
        return stub.GetReplicaState(rpb.GetReplicaStateRequest(), timeout=timeout).state

    def close(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None

    @property
    def alive(self) -> bool:
        return self.process.returncode is None


@dataclass
class Group:
    """One shard: a lone process for R=1 (no --replica-id, as today), else R replicas on
    loopback sharing a lease file, as `contentembed up --replicas R` starts them."""

    root: Path
    count: int
    replicas: list[Replica] = field(default_factory=list)
    pin: bool = False  # replica n on CPU n only (taskset): a core of its own, as a node each

    def start(self) -> Group:
        ports = free_ports(self.count)
        for n, port in enumerate(ports):
            args = ["--port", str(port), "--metrics-port", "0",
                    "--data-dir", str(self.root / f"data-{n}")]
            if self.count > 1:
                peers = ",".join(f"{m}={HOST}:{ports[m]}" for m in range(self.count) if m != n)
                args += ["--replica-id", str(n), "--replica-peers", peers,
                         "--replica-lease-file", str(self.root / "lease.json")]
            process = ServiceProcess(f"index-{n}", "contentembed.services.index", args, self.root,
                                     launcher=["taskset", "-c", str(n)] if self.pin else [])
            self.replicas.append(Replica(str(n), process))
        for replica in self.replicas:
            replica.process.start(dict(os.environ))
        for replica in self.replicas:
            replica.process.wait_for_port(time.monotonic() + 60)
            replica.process.wait_until_serving(time.monotonic() + 60)
        return self

    def stop(self) -> None:
        """Followers first: a primary stopped first hands its lease on, a churn that
        would show in the logs' counts."""
        roles = {}
        for replica in self.alive():
            try:
                roles[replica.replica_id] = replica.state(1.0).role
            except grpc.RpcError:
                pass
        for replica in sorted(self.replicas,
                              key=lambda r: roles.get(r.replica_id) == rpb.REPLICA_ROLE_PRIMARY):
            replica.close()
            replica.process.stop(30)

    def alive(self) -> list[Replica]:
        return [r for r in self.replicas if r.alive]

    def primary(self, timeout: float = 60.0) -> Replica:
        if self.count == 1:
            return self.replicas[0]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for replica in self.alive():
                try:
                    if replica.state(1.0).role == rpb.REPLICA_ROLE_PRIMARY:
                        return replica
                except grpc.RpcError:
                    pass
            time.sleep(0.05)
        raise RuntimeError("no replica became primary")

    def wait_in_sync(self, timeout: float = 120.0) -> None:
        if self.count == 1:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if all(r.state().in_sync for r in self.alive()):
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.05)
        raise RuntimeError("the replicas did not get in sync")

    def restart(self, replica: Replica) -> None:
        """Starts it again on its ports. Spawned from a helper thread: from the main thread
        ServiceProcess passes a preexec_fn, so Popen forks (no vfork) and gRPC's fork
        handlers run in the child while this process's reader and writer threads are in
        gRPC calls; the child then often dies of SIGABRT before exec (ev_epoll1_linux.cc
        "Check failed: next_worker->state == KICKED")."""
        replica.close()
        spawner = threading.Thread(target=replica.process.restart, args=(dict(os.environ),))
        spawner.start()
        spawner.join()
        replica.process.wait_for_port(time.monotonic() + 60)

    def cpu(self) -> float:
        return sum(cpu_seconds(r.process.pid) for r in self.alive())

    def create(self) -> Replica:
        primary = self.primary()
        primary.index.CreateCollection(
            pb.CreateCollectionRequest(name=COLLECTION, space_id="bench@1", dim=DIM), timeout=30)
        self.wait_in_sync()
        return primary


def drive(stub: pb_grpc.IndexServiceStub, requests: list[pb.UpsertRequest], writers: int
          ) -> tuple[float, list[float]]:
    """Every request once, from ``writers`` threads taking the next one; (wall s, latencies)."""
    lock = threading.Lock()
    position = 0
    latencies: list[float] = []
    failures: list[str] = []

    def writer() -> None:
        nonlocal position
        while True:
            with lock:
                if position >= len(requests) or failures:
                    return
                request = requests[position]
                position += 1
            began = time.perf_counter()
            try:
                stub.Upsert(request, timeout=120)
            except grpc.RpcError as error:
                with lock:
                    failures.append(reason(error))
                return
            with lock:
                latencies.append(time.perf_counter() - began)

    threads = [threading.Thread(target=writer) for _ in range(writers)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(f"writes failed: {failures}")
    return time.perf_counter() - started, latencies


# -- 1. write throughput -------------------------------------------------------------------
def write_phase(r: int, label: str, requests: list[pb.UpsertRequest], warm: list[pb.UpsertRequest],
                writers: int, pin: bool) -> dict:
    with scratch(f"write-r{r}") as root:
        group = Group(Path(root), r, pin=pin).start()
        try:
            primary = group.create()
            drive(primary.index, warm, writers)
            group.wait_in_sync()
            cpu_before = group.cpu()
            wall, latencies = drive(primary.index, requests, writers)
            cpu = group.cpu() - cpu_before
            events = log_events(Path(root))  # before the stop's own churn
        finally:
            group.stop()
    items = sum(len(r.items) for r in requests)
    result = {"phase": f"write {label}", "replicas": r, "items": items, "requests": len(requests),
              "items_per_s": round(items / wall, 1), "p50_ms": round(1000 * pct(latencies, 50), 1),
              "p99_ms": round(1000 * pct(latencies, 99), 1),
              "cpu_ms_per_item_all_replicas": round(1000 * cpu / items, 2),
              "cores_busy": round(cpu / wall, 2), "log": events}
    print(json.dumps(result), flush=True)
    return result


# -- 2. failover ---------------------------------------------------------------------------
class Load:
    """A steady writer (batches of ``batch`` items to whichever replica takes them) and a
    reader trying every live replica in turn, each recording what happened when."""

    def __init__(self, group: Group, batch: int, rate: float) -> None:
        self.group = group
        self.batch = batch
        self.rate = rate  # writes/s the writer starts (0: back to back)
        self.stop = threading.Event()
        self.acks: list[tuple[float, str]] = []  # (monotonic, replica id)
        self.write_refusals: Counter[str] = Counter()
        self.reads: list[tuple[float, bool]] = []  # (monotonic, answered by some replica)
        self.read_refusals: Counter[str] = Counter()  # "replica reason"
        self.threads = [threading.Thread(target=self._write), threading.Thread(target=self._read)]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)

    def _write(self) -> None:
        rng = np.random.default_rng(11)
        n = 0
        target = 0
        started = time.monotonic()
        while not self.stop.is_set():
            if self.rate:  # the next write is due at started + n / rate
                self.stop.wait(max(0.0, started + n / self.rate - time.monotonic()))
            request = upsert([f"f{n}-{k}" for k in range(self.batch)], unit_vectors(rng, self.batch))
            for attempt in range(len(self.group.replicas)):
                replica = self.group.replicas[(target + attempt) % len(self.group.replicas)]
                if not replica.alive:
                    continue
                try:
                    replica.index.Upsert(request, timeout=15)
                except (grpc.RpcError, ValueError) as error:  # ValueError: channel closed
                    why = reason(error) if isinstance(error, grpc.RpcError) else "CLOSED"
                    self.write_refusals[why] += 1
                    continue
                self.acks.append((time.monotonic(), replica.replica_id))
                target = int(replica.replica_id)
                n += 1
                break
            else:
                time.sleep(0.02)

    def _read(self) -> None:
        rng = np.random.default_rng(12)
        turn = 0
        while not self.stop.is_set():
            query = search(unit_vectors(rng, 1)[0])
            answered = False
            count = len(self.group.replicas)
            turn += 1
            for attempt in range(count):
                replica = self.group.replicas[(turn + attempt) % count]
                if not replica.alive:
                    continue
                try:
                    replica.index.Search(query, timeout=5)
                    answered = True
                    break
                except (grpc.RpcError, ValueError) as error:
                    why = reason(error) if isinstance(error, grpc.RpcError) else "CLOSED"
                    self.read_refusals[f"replica {replica.replica_id} {why}"] += 1
            self.reads.append((time.monotonic(), answered))
            time.sleep(0.01)

    def refused_reads(self, since: float, until: float) -> tuple[int, float]:
        """Reads no replica answered in the window, and the time they spanned (from each
        run of refusals' first to the next answered read)."""
        refused, span, run_start = 0, 0.0, None
        for at, answered in list(self.reads):
            if at < since or at > until:
                continue
            if not answered:
                refused += 1
                run_start = at if run_start is None else run_start
            elif run_start is not None:
                span += at - run_start
                run_start = None
        if run_start is not None:
            span += until - run_start
        return refused, span


def failover_phase(rounds: int, batch: int, rate: float) -> dict:
    times, reads, rejoin = [], [], []
    with scratch("failover") as root:
        group = Group(Path(root), 3).start()
        try:
            group.create()
            with Load(group, batch, rate) as load:
                for number in range(rounds):
                    time.sleep(2.0)  # steady state
                    primary = group.primary()
                    term = primary.state().term
                    acked_before = len(load.acks)
                    killed_at = time.monotonic()
                    os.kill(primary.process.pid, 9)
                    primary.process.process.wait(10)  # type: ignore[union-attr]
                    primary.close()
                    while not any(at > killed_at and rid != primary.replica_id
                                  for at, rid in load.acks[acked_before:]):
                        if time.monotonic() - killed_at > 60:
                            raise RuntimeError("no write acknowledged within 60 s of the kill")
                        time.sleep(0.005)
                    first = next(at for at, rid in load.acks[acked_before:]
                                 if at > killed_at and rid != primary.replica_id)
                    failover_s = first - killed_at
                    time.sleep(1.0)
                    refused, span = load.refused_reads(killed_at, time.monotonic())
                    new = group.primary()
                    restarted_at = time.monotonic()
                    group.restart(primary)
                    try:
                        group.wait_in_sync(REJOIN_LIMIT_S)
                        rejoin_s: float | None = time.monotonic() - restarted_at
                    except RuntimeError:
                        rejoin_s = None
                    times.append(failover_s)
                    reads.append((refused, span))
                    rejoin.append(rejoin_s)
                    stop_early = rejoin_s is None
                    print(json.dumps({"phase": f"failover round {number + 1}",
                                      "killed": primary.replica_id, "new_primary": new.replica_id,
                                      "term": f"{term} -> {new.state().term}",
                                      "first_write_acked_s": round(failover_s, 2),
                                      "reads_refused_by_all": refused,
                                      "reads_refused_span_s": round(span, 2),
                                      "killed_replica_back_in_sync_s":
                                          round(rejoin_s, 2) if rejoin_s is not None
                                          else f"not within {REJOIN_LIMIT_S:.0f} s"}),
                          flush=True)
                    if stop_early:
                        break  # the next round would kill a primary with fewer followers
                writes = len(load.acks)
            result = {"phase": "failover", "rounds": len(times), "batch": batch,
                      "writes_per_s_offered": rate,
                      "rejoin_s": [None if r is None else round(r, 1) for r in rejoin],
                      "failover_s": [round(t, 2) for t in times],
                      "median_s": round(statistics.median(times), 2),
                      "reads_refused_by_all": sum(r for r, _ in reads),
                      "reads_refused_span_s": [round(s, 2) for _, s in reads],
                      "reads_total": len(load.reads), "writes_acked": writes,
                      "write_refusals": dict(load.write_refusals),
                      "read_refusals_per_replica": dict(load.read_refusals)}
        finally:
            group.stop()
        result["log"] = log_events(Path(root))
    print(json.dumps(result), flush=True)
    return result


# -- 3. catch-up by the log ----------------------------------------------------------------
def primary_metric(replica: Replica, name: str) -> float | None:
    url = f"http://{HOST}:{replica.process.metrics_port}/metrics"  # loopback http
    text = urllib.request.urlopen(url, timeout=5).read().decode()  # nosec B310
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    return None


def catch_up_phase(records: int, per_record: int, writers: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    requests = [upsert([f"k{n}-{k}" for k in range(per_record)], unit_vectors(rng, per_record))
                for n in range(records)]
    warm = [upsert([f"w{n}"], unit_vectors(rng, 1)) for n in range(40)]
    with scratch(f"catch-up-{records}x{per_record}") as root:
        group = Group(Path(root), 2).start()
        try:
            primary = group.create()
            drive(primary.index, warm[:20], writers)
            group.wait_in_sync()
            follower = next(r for r in group.replicas if r is not primary)
            follower.close()
            follower.process.stop(30)
            # The primary drops the follower from its in-sync set on the first write it
            # fails to ship: done before the timed writes, which then run at the lone
            # primary's pace (the baseline the catch-up rate is compared with).
            drive(primary.index, warm[20:], writers)
            while primary_metric(primary, "contentembed_replica_in_sync_replicas") != 1.0:
                time.sleep(0.05)
            wall, _ = drive(primary.index, requests, writers)
            started = time.monotonic()
            group.restart(follower)
            port_open = time.monotonic()
            refusals: Counter[str] = Counter()
            query = search(unit_vectors(rng, 1)[0])
            caught_up = False
            while time.monotonic() - port_open < CATCH_UP_LIMIT_S:
                try:
                    follower.index.Search(query, timeout=5)
                    caught_up = True
                    break
                except grpc.RpcError as error:
                    refusals[reason(error)] += 1
                time.sleep(0.05)  # the e2e test's pace: the probe itself is light
            answered = time.monotonic()
            by_primary = primary_metric(primary, "contentembed_replica_catch_up_seconds")
        finally:
            group.stop()
        events = log_events(Path(root))
    items = records * per_record
    since_port = answered - port_open
    result = {"phase": f"catch-up {records} records x {per_record} items",
              "records": records, "items": items, "caught_up": caught_up,
              "primary_wrote_records_per_s": round(records / wall, 1),
              "primary_wrote_items_per_s": round(items / wall, 1),
              "restart_to_reads_s": round(answered - started, 2),
              "port_open_to_reads_s": round(since_port, 2),
              "catch_up_s_by_primary": round(by_primary, 2) if by_primary is not None else None,
              "records_per_s": round(records / since_port, 1),
              "items_per_s": round(items / since_port, 1),
              "catch_up_vs_primary_writes": round(wall / since_port, 2),
              "refusals_meanwhile": dict(refusals), "log": events}
    print(json.dumps(result), flush=True)
    return result


# -- 4. read spread through the gateway ----------------------------------------------------
def spread_phase(replicas: int, docs: int, vector_queries: int, text_queries: int) -> list[dict]:
    documents = docstrings.build().documents
    ingested, rest = documents[:docs], documents[docs:]
    results = []
    with scratch("spread") as run_dir, \
            LocalStack(run_dir=Path(run_dir), shard_count=1, replicas=replicas) as stack:
        with Client(stack.gateway_address, timeout=600) as client:
            ingest_docstrings(client, COLLECTION, ingested, Path(run_dir))
            found = client.get_documents(COLLECTION, [d.id for d in ingested], with_vectors=True)
            space = client.get_collection(COLLECTION).space_id
        shards = [s for s in stack.services if s.name.startswith("index-")]
        group = Group(Path(run_dir), replicas,
                      [Replica(s.name.rsplit("-", 1)[-1], s) for s in shards])
        group.wait_in_sync()
        stored = np.asarray([d.vector for d in found.documents], dtype=np.float32)
        rng = np.random.default_rng(5)
        count = 50 + 2 * vector_queries
        noisy = stored[rng.integers(0, len(stored), count)] + 0.05 * rng.normal(
            size=(count, DIM)).astype(np.float32)
        names = [str(n) for n in range(count)]

        def as_vector(name: str) -> dict:
            return {"vector": noisy[int(name)], "vector_space_id": space}

        texts = unique_summaries(rest)
        # Warm-up, neither counted nor reused: channels, the encoder's first queries.
        closed_loop(stack.gateway_address, COLLECTION, names[:50], 4, 60, as_vector)
        closed_loop(stack.gateway_address, COLLECTION, texts[-24:], 8, 60)
        phases: list[tuple[str, list[str], int, Callable[[str], dict] | None]] = [
            ("vector, 1 caller", names[50:50 + vector_queries], 1, as_vector),
            ("vector, 8 callers", names[50 + vector_queries:], 8, as_vector),
            ("text, 8 callers", texts[:text_queries], 8, None),
        ]
        for label, queries, callers, query_args in phases:
            before = [search_counts(s.metrics_port) for s in shards]
            run = closed_loop(stack.gateway_address, COLLECTION, queries, callers, 120, query_args)
            calls = [search_counts(s.metrics_port) - b for s, b in zip(shards, before)]
            total = sum(calls) or 1.0
            shares = [c / total for c in calls]
            result = {"phase": f"read spread, {label}", "replicas": replicas,
                      "queries": run["queries"], "qps": round(run["qps"], 1),
                      "p50_ms": round(run["p50_ms"], 1),
                      "gateway_stages_ms": {k: round(v, 1) for k, v in run["stages_ms"].items()},
                      "cache_hits": run["cache_hits"],
                      "calls_per_replica": {s.name: int(c) for s, c in zip(shards, calls)},
                      "shares": [round(s, 3) for s in shares],
                      "worst_vs_even": round(max(abs(s * replicas - 1) for s in shares), 3)}
            print(json.dumps(result), flush=True)
            results.append(result)
    return results


def write_ratios(requests: list[pb.UpsertRequest], warm: list[pb.UpsertRequest], writers: int,
                 order: tuple[int, ...], pin: bool = False) -> dict:
    """Each R in ``order`` (a palindrome, so that a drift of the machine over the run
    weighs on every R alike); items/s per R is the mean of its runs, ratios against R=1."""
    runs: dict[int, list[dict]] = {}
    for r in order:
        label = (f"R={r}, {writers} writer{'s' if writers > 1 else ''}{', pinned' if pin else ''}, "
                 f"run {len(runs.get(r, [])) + 1}")
        runs.setdefault(r, []).append(write_phase(r, label, requests, warm, writers, pin))
    rate = {r: statistics.mean(x["items_per_s"] for x in done) for r, done in runs.items()}
    cpu = {r: statistics.mean(x["cpu_ms_per_item_all_replicas"] for x in done) for r, done in runs.items()}
    result = {"writers": writers, "pinned": pin, "items_per_s": rate,
              "ratio": {r: rate[r] / rate[1] for r in rate},
              "p50_ms": {r: statistics.mean(x["p50_ms"] for x in done) for r, done in runs.items()},
              "p99_ms": {r: statistics.mean(x["p99_ms"] for x in done) for r, done in runs.items()},
              "r1_runs_spread": max(x["items_per_s"] for x in runs[1]) / min(x["items_per_s"] for x in runs[1]),
              "cpu_per_item_vs_r_times_r1": {r: cpu[r] / (r * cpu[1]) for r in cpu}}
    print(json.dumps({"phase": f"write throughput, {writers} writer(s){', pinned' if pin else ''}",
                      **{k: ({str(r): round(v, 2) for r, v in val.items()} if isinstance(val, dict)
                             else round(val, 2)) for k, val in result.items()}}), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller phases (about 2 min)")
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=64, help="items per upsert (ingest's batch)")
    parser.add_argument("--items", type=int, default=0, help="items per write phase")
    parser.add_argument("--no-pinned", dest="pinned", action="store_false",
                        help="skip R=1 against R=2 with each replica pinned to a core of its own")
    parser.add_argument("--single-writer", action="store_true",
                        help="also R=1 against R=2 with one writer")
    parser.add_argument("--failover-rounds", type=int, default=3)
    parser.add_argument("--failover-write-rate", type=float, default=25.0,
                        help="writes/s (of 8 items) during failover; 0: back to back")
    parser.add_argument("--spread-replicas", type=int, default=2)
    parser.add_argument("--keep", type=Path, help="leave each phase's run directory (logs) here")
    parser.add_argument("--skip", nargs="*", default=[], choices=["write", "failover", "catch-up", "spread"])
    args = parser.parse_args()
    global KEEP
    KEEP = args.keep
    quick = args.quick
    items = args.items or (3_200 if quick else 12_800)
    # Catch-up mixes (records x items each), both under the default 10,000-item snapshot
    # cadence: small records (one item each, the worst case per record) and ingest's batch.
    mixes = [(2_000, 1), (50, 64)] if quick else [(8_000, 1), (140, 64)]
    summary: dict[str, object] = {}

    if "write" not in args.skip:
        rng = np.random.default_rng(1)
        requests = [upsert([f"i{first + k}" for k in range(args.batch)], unit_vectors(rng, args.batch))
                    for first in range(0, items, args.batch)]
        warm = [upsert([f"w{n}-{k}" for k in range(args.batch)], unit_vectors(rng, args.batch))
                for n in range(2 * args.writers)]
        summary["write"] = write_ratios(requests, warm, args.writers, (1, 2, 3, 3, 2, 1))
        if args.pinned and (os.cpu_count() or 1) >= 2:
            summary["write, a core per replica"] = write_ratios(requests, warm, args.writers,
                                                                (1, 2, 2, 1), pin=True)
        if args.single_writer:
            summary["write, 1 writer"] = write_ratios(requests[: len(requests) // 2], warm[:2], 1,
                                                      (1, 2, 2, 1))
    if "failover" not in args.skip:
        summary["failover"] = failover_phase(2 if quick else args.failover_rounds, 8,
                                             args.failover_write_rate)
    if "catch-up" not in args.skip:
        summary["catch-up"] = [catch_up_phase(records, per, args.writers, seed)
                               for seed, (records, per) in enumerate(mixes)]
    if "spread" not in args.skip:
        summary["spread"] = spread_phase(args.spread_replicas, 150 if quick else 300,
                                         200 if quick else 600, 60 if quick else 200)
    print_summary(summary)


def print_summary(summary: dict) -> None:
    rows: list[tuple[str, str, str, str]] = []

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    names = {"write": "as up starts them", "write, a core per replica": "a core per replica",
             "write, 1 writer": "one writer"}
    for key, name in names.items():
        if key not in summary:
            continue
        w = summary[key]
        for r in sorted(w["items_per_s"]):
            rows.append((f"write R={r}, {w['writers']} writers, {name}",
                         f"{w['items_per_s'][r]:.0f} items/s, p50 {w['p50_ms'][r]:.0f} / "
                         f"p99 {w['p99_ms'][r]:.0f} ms", "", ""))
        rows.append((f"  R=2 / R=1 ({name}; R=1 runs differ {w['r1_runs_spread']:.2f}x)",
                     f"{w['ratio'][2]:.2f}", ">= 0.7", verdict(w["ratio"][2] >= TARGETS["write_r2"])))
        if 3 in w["ratio"]:
            rows.append((f"  R=3 / R=1 ({name})", f"{w['ratio'][3]:.2f}", "", ""))
    if "failover" in summary:
        f = summary["failover"]
        rows.append(("failover: SIGKILL to first write acked, s",
                     " / ".join(f"{t:.2f}" for t in f["failover_s"]) + f" (median {f['median_s']:.2f})",
                     "<= 10 s", verdict(max(f["failover_s"]) <= TARGETS["failover_s"])))
        rows.append(("failover: reads no replica answered",
                     f"{f['reads_refused_by_all']} of {f['reads_total']}", "0",
                     verdict(f["reads_refused_by_all"] == 0)))
        rows.append(("failover: killed replica back in sync, s",
                     " / ".join("-" if r is None else f"{r:.1f}" for r in f["rejoin_s"]), "", ""))
    for c in summary.get("catch-up", []):
        per = c["items"] // c["records"]
        bound = "" if c["caught_up"] else "<"
        late = "" if c["caught_up"] else f" (not caught up in {CATCH_UP_LIMIT_S:.0f} s)"
        rows.append((f"catch-up by log: {c['records']} records x {per} item{'s' if per > 1 else ''}",
                     f"{bound}{c['records_per_s']:.0f} records/s = {bound}{c['items_per_s']:.0f} "
                     f"items/s{late}",
                     ">= 20000 rec/s", verdict(c["records_per_s"] >= TARGETS["catch_up_records_s"])))
        rows.append(("  the lone primary wrote the same records at",
                     f"{c['primary_wrote_records_per_s']:.0f} records/s "
                     f"(catch-up {c['catch_up_vs_primary_writes']:.2f}x)", "", ""))
        retries = {k.split("(")[1].rstrip(")"): v for k, v in c["log"].items()
                   if k.startswith("catch-up retry") and "UNAVAILABLE" not in k}
        if retries:
            rows.append(("  catch-up shipments refused or timed out",
                         ", ".join(f"{v} {k}" for k, v in sorted(retries.items())), "", ""))
    for spread in summary.get("spread", []):
        rows.append((spread["phase"].replace("read spread, ", "read spread via gateway, "),
                     " / ".join(f"{x:.2f}" for x in spread["shares"]) + " of Search calls",
                     "±20% of even", verdict(spread["worst_vs_even"] <= TARGETS["spread"])))
    width = max((len(r[0]) for r in rows), default=0)
    value_width = max((len(r[1]) for r in rows), default=0)
    print(f"\nsummary ({os.cpu_count()} CPUs; every replica on this machine)")
    for name, value, target, met in rows:
        print(f"  {name:<{width}}  {value:<{value_width}}  {target:<14}  {met}".rstrip())


if __name__ == "__main__":
    sys.exit(main())
