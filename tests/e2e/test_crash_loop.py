"""Reliability on real processes: a crash loop under traffic, a shard recovering behind
the gateway, and a full disk.

The crash loop is the headline: a tfidf text-encoder, two durable index shards and a
gateway take upserts, rewrites, deletes, searches and CreateCollection(exist_ok) from a
few client threads while a killer SIGKILLs a random shard at random moments and restarts
it on the same port. Every operation is recorded; at the end every acknowledged write
must be there with the exact vector the encoder gives for its text, every acknowledged
delete must have stuck, recall@10 must match exact search, and calls that did not meet a
kill must have succeeded.

The short variant runs by default; the long one (minutes, dozens of kills) is deselected
by the ``crash_loop_long`` marker:  pytest -m crash_loop_long tests/e2e/test_crash_loop.py -s
"""

from __future__ import annotations

import itertools
import os
import random
import resource
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from contentembed.cli.catalog import DEMO_CATALOG, read_catalog
from contentembed.cli.stack import HOST, ServiceProcess
from contentembed.client import ApiError, Client
from contentembed.encoder.v1 import encoder_service_pb2 as encoder_pb
from contentembed.encoder.v1 import encoder_service_pb2_grpc as encoder_grpc
from contentembed.index.v1 import index_service_pb2 as pb
from contentembed.index.v1 import index_service_pb2_grpc as pb_grpc
from contentembed.services.common.protoconv import matrix_from_pb, struct_to_dict, vector_to_pb
from contentembed.services.common.sharding import shard_for_id
from contentembed.services.index.collection import HnswCollection
from contentembed.services.index.dense import HnswParams
from contentembed.services.index.persistence import verify_manifest
from tests.conftest import error_reason

pytestmark = pytest.mark.e2e

ENCODER = "contentembed.services.text_encoder"
INDEX = "contentembed.services.index"
GATEWAY = "contentembed.services.gateway"
COLLECTION = "crash"
SHARDS = 2
CALL_TIMEOUT_S = 10.0
# A kill window runs from the SIGKILL to the restarted shard answering SERVING, plus this:
# the gateway's channel reconnects on its own schedule after the port opens again.
WINDOW_MARGIN_S = 2.0
# Codes a call may fail with because a shard is down or recovering; anything else
# (NOT_FOUND, INTERNAL, UNKNOWN, ...) is a bug whenever it happens.
OUTAGE_CODES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED"})
MAX_MESSAGE = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]


# -- processes ---------------------------------------------------------------------------
def fit_tfidf(directory: Path, max_features: int = 0) -> Path:
    """A tfidf model fitted on the demo catalog: deterministic vectors, loads in a blink."""
    model = directory / "tfidf.json"
    subprocess.run(
        [sys.executable, "-m", "contentembed.services.text_encoder.tfidf", str(DEMO_CATALOG),
         str(model), "--max-features", str(max_features)],
        check=True, capture_output=True, timeout=120,
    )
    return model


class Cluster:
    """tfidf text-encoder, durable index shards and a gateway, each a process on 127.0.0.1.
    A restarted shard comes back on its old port, so the gateway's endpoints stay valid."""

    def __init__(self, run_dir: Path, model: Path, shard_args: Sequence[str] = ()) -> None:
        self.run_dir = run_dir
        self.model = model
        self.shard_args = list(shard_args)
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        self.started: list[ServiceProcess] = []  # every process ever started, for cleanup
        self.encoder: ServiceProcess | None = None
        self.shards: list[ServiceProcess] = []
        self.gateway: ServiceProcess | None = None

    def data_dir(self, shard: int) -> Path:
        return self.run_dir / "data" / f"index-{shard}"

    def _launch(self, name: str, module: str, args: list[str]) -> ServiceProcess:
        process = ServiceProcess(name, module, args, self.run_dir)
        self.started.append(process)
        process.start(self.env)
        return process

    def _launch_shard(self, shard: int, port: int) -> ServiceProcess:
        return self._launch(f"index-{shard}", INDEX, [
            "--port", str(port), "--metrics-port", "-1",
            "--shard-index", str(shard), "--shard-count", str(SHARDS),
            "--data-dir", str(self.data_dir(shard)), *self.shard_args,
        ])

    def start(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        self.encoder = self._launch("text-encoder", ENCODER, [
            "--port", "0", "--metrics-port", "-1", "--backend", "tfidf", "--model", str(self.model),
        ])
        self.shards = [self._launch_shard(shard, 0) for shard in range(SHARDS)]
        for process in [self.encoder, *self.shards]:
            process.wait_for_port(deadline)
        self.gateway = self._launch("gateway", GATEWAY, [
            "--port", "0", "--metrics-port", "-1",
            "--encoder-endpoints", self.encoder.address,
            "--index-endpoints", ",".join(s.address for s in self.shards),
        ])
        self.gateway.wait_for_port(deadline)
        for process in [self.encoder, *self.shards, self.gateway]:
            process.wait_until_serving(deadline)

    def kill(self, shard: int) -> None:
        process = self.shards[shard]
        os.kill(process.pid, signal.SIGKILL)
        assert process.process is not None
        process.process.wait(10)

    def restart(self, shard: int, timeout: float = 60.0) -> ServiceProcess:
        """Starts the shard again on its old port; returns once the port is open (it may
        still be recovering: wait_until_serving for that)."""
        port = self.shards[shard].port
        process = self._launch_shard(shard, port)
        process.wait_for_port(time.monotonic() + timeout)
        assert process.port == port, f"shard {shard} came back on {process.port}, not {port}"
        self.shards[shard] = process
        return process

    def stop(self) -> None:
        """SIGKILL whatever still runs: the data of these runs is never needed again."""
        for process in reversed(self.started):
            if process.process is not None and process.process.poll() is None:
                process.process.kill()
                process.process.wait(10)


@contextmanager
def running(cluster: Cluster) -> Iterator[Cluster]:
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def is_serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            status = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=2
            ).status
        except grpc.RpcError:
            return False
    return status == health_pb2.HealthCheckResponse.SERVING


def wait_until_whole(client: Client, query: str, timeout: float = 30.0) -> None:
    """Until the gateway answers from every shard (its channels reconnect on their own)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if not client.search(COLLECTION, text=query, top_k=1, allow_partial=True).partial:
                return
        except ApiError:
            pass
        assert time.monotonic() < deadline, "the gateway never reached every shard again"
        time.sleep(0.1)


# -- vectors -----------------------------------------------------------------------------
def embed(encoder_address: str, texts: Sequence[str]) -> np.ndarray:
    """The encoder's own vectors for texts, asked directly (not through the gateway)."""
    with grpc.insecure_channel(encoder_address, options=MAX_MESSAGE) as channel:
        stub = encoder_grpc.EncoderServiceStub(channel)
        batch = stub.GetEncoderInfo(encoder_pb.GetEncoderInfoRequest(), timeout=10).max_batch_size or 32
        parts = [
            matrix_from_pb(stub.Embed(encoder_pb.EmbedRequest(
                inputs=[encoder_pb.EmbedInput(text=t) for t in texts[start : start + batch]]
            ), timeout=60).vectors)
            for start in range(0, len(texts), batch)
        ]
    return np.concatenate(parts)


def as_the_index_stores(vectors: np.ndarray) -> np.ndarray:
    """What a shard keeps for these vectors, computed by the index's own code in memory:
    the collection L2-normalizes (vectors.l2_normalize), then hnswlib normalizes once more
    for its cosine space. The second pass moves last bits, so l2_normalize alone is not
    bit-identical to what GetItems returns. Cheap graph parameters: the stored floats do
    not depend on them."""
    ids = [str(i) for i in range(len(vectors))]
    reference = HnswCollection("reference", "reference", vectors.shape[1],
                               HnswParams(m=2, ef_construction=1, ef_search=1), len(ids))
    reference.upsert(ids, vectors, [{}] * len(ids))
    return np.stack([item.vector for item in reference.get(ids)])


def stored_items(address: str, ids: Sequence[str]) -> dict[str, pb.Item]:
    found: dict[str, pb.Item] = {}
    with grpc.insecure_channel(address, options=MAX_MESSAGE) as channel:
        stub = pb_grpc.IndexServiceStub(channel)
        for start in range(0, len(ids), 500):
            response = stub.GetItems(
                pb.GetItemsRequest(collection=COLLECTION, ids=list(ids[start : start + 500])),
                timeout=60,
            )
            found.update((item.id, item) for item in response.items)
    return found


def recall_at_10(cluster: Cluster, client: Client, queries: Sequence[str]) -> float:
    """Gateway answers against exact search on every shard, merged. Items whose exact score
    ties the 10th are all right answers (rewritten items can share a text)."""
    assert cluster.encoder is not None
    vectors = embed(cluster.encoder.address, queries)
    channels = [grpc.insecure_channel(s.address) for s in cluster.shards]
    try:
        stubs = [pb_grpc.IndexServiceStub(c) for c in channels]
        total = 0.0
        for query, vector in zip(queries, vectors):
            got = client.search(COLLECTION, text=query, top_k=10)
            assert not got.partial
            exact = sorted(
                ((hit.score, hit.id) for stub in stubs for hit in stub.Search(pb.SearchRequest(
                    collection=COLLECTION, query=vector_to_pb(vector), top_k=30, exact=True
                ), timeout=30).hits),
                reverse=True,
            )
            wanted = min(10, len(exact))
            if wanted == 0:
                total += 1.0
                continue
            tenth = exact[wanted - 1][0]
            right = {item_id for score, item_id in exact if score >= tenth - 1e-6}
            total += min(len({hit.id for hit in got.hits} & right), wanted) / wanted
        return total / len(queries)
    finally:
        for channel in channels:
            channel.close()


# -- the crash loop ----------------------------------------------------------------------
@dataclass
class Op:
    number: int
    kind: str  # upsert, delete, search, create
    worker: int
    ids: tuple[str, ...] = ()
    texts: tuple[str, ...] = ()
    start: float = 0.0
    end: float = 0.0
    code: str = "OK"
    reason: str = ""
    partial: bool = False
    shard_errors: tuple[str, ...] = ()
    created: bool = False

    @property
    def ok(self) -> bool:
        return self.code == "OK"

    @property
    def is_write(self) -> bool:
        return self.kind in ("upsert", "delete")


@dataclass
class Kill:
    shard: int
    killed: float
    serving: float = float("inf")


@dataclass
class LoopReport:
    ops: list[Op]
    kills: list[Kill]
    duration_s: float
    recall_before: float
    recall_after: float
    failures: list[str] = field(default_factory=list)
    snapshot_seqs: list[int] = field(default_factory=list)
    files: list[list[str]] = field(default_factory=list)


def varied_text(rng: random.Random, texts: Sequence[str]) -> str:
    """A catalog text with words dropped and a run of another text's words appended: new
    vectors every time, always with words the tfidf vocabulary knows."""
    words = rng.choice(texts).split()
    kept = [w for w in words if rng.random() > 0.3] or words[:3]
    other = rng.choice(texts).split()
    start = rng.randrange(len(other))
    return " ".join(kept + other[start : start + rng.randint(0, 6)])


def run_op(client: Client, op: Op) -> Op:
    op.start = time.monotonic()
    try:
        if op.kind == "upsert":
            client.upsert_documents(COLLECTION, [
                {"id": i, "text": t, "metadata": {"op": op.number}} for i, t in zip(op.ids, op.texts)
            ], timeout=CALL_TIMEOUT_S)
        elif op.kind == "delete":
            client.delete_documents(COLLECTION, op.ids, timeout=CALL_TIMEOUT_S)
        elif op.kind == "search":
            result = client.search(COLLECTION, text=op.texts[0], top_k=10, allow_partial=True,
                                   timeout=CALL_TIMEOUT_S)
            op.partial = result.partial
            op.shard_errors = tuple(s.error for s in result.shards if not s.ok)
        else:
            _, op.created = client.create_collection(COLLECTION, exist_ok=True, timeout=CALL_TIMEOUT_S)
    except ApiError as error:
        op.code, op.reason = error.code, error.reason
    op.end = time.monotonic()
    return op


def worker(number: int, address: str, seed: int, texts: Sequence[str], numbers: Iterator[int],
           stop: threading.Event, ops: list[Op]) -> None:
    """Owns the ids it writes (w<number>-...): operations on one id never overlap in time,
    so "the last acknowledged operation on an id" is well defined."""
    rng = random.Random(seed)
    owned: list[str] = []
    # One RPC per recorded operation (no SDK retries), as the checker's model assumes.
    with Client(address, timeout=CALL_TIMEOUT_S, retries=0) as client:
        while not stop.is_set():
            roll = rng.random()
            if roll < 0.30 or len(owned) < 4:
                ids = tuple(f"w{number}-{len(owned) + k}" for k in range(rng.randint(1, 4)))
                owned.extend(ids)
                op = Op(next(numbers), "upsert", number, ids, tuple(varied_text(rng, texts) for _ in ids))
            elif roll < 0.50:
                ids = tuple(rng.sample(owned, rng.randint(1, 3)))
                op = Op(next(numbers), "upsert", number, ids, tuple(varied_text(rng, texts) for _ in ids))
            elif roll < 0.60:
                op = Op(next(numbers), "delete", number, tuple(rng.sample(owned, rng.randint(1, 2))))
            elif roll < 0.95:
                op = Op(next(numbers), "search", number, texts=(varied_text(rng, texts),))
            else:
                op = Op(next(numbers), "create", number)
            ops.append(run_op(client, op))


def killer(cluster: Cluster, rng: random.Random, gap_s: tuple[float, float], max_down_s: float,
           stop: threading.Event, kills: list[Kill], errors: list[BaseException]) -> None:
    """SIGKILLs a random shard at a random moment, leaves it down a random while, restarts
    it on its port and waits for SERVING before the next kill."""
    try:
        while not stop.wait(rng.uniform(*gap_s)):
            shard = rng.randrange(SHARDS)
            kill = Kill(shard, time.monotonic())
            kills.append(kill)
            cluster.kill(shard)
            time.sleep(rng.uniform(0.0, max_down_s))
            cluster.restart(shard).wait_until_serving(time.monotonic() + 120)
            kill.serving = time.monotonic()
    except BaseException as error:  # noqa: BLE001 - reported by the test thread
        errors.append(error)


def in_window(op: Op, kills: Sequence[Kill]) -> bool:
    return any(op.start <= k.serving + WINDOW_MARGIN_S and op.end >= k.killed for k in kills)


def allowed_states(events: Sequence[tuple[Op, str | None]]) -> set[int | None]:
    """Final states an id may be in: None (absent) or the number of the upsert whose text
    it holds. The last acknowledged operation wins; a failed one after it may or may not
    have been applied; one before it must have been overwritten."""
    last_ack = max((n for n, (op, _) in enumerate(events) if op.ok), default=None)
    states: set[int | None] = set()
    if last_ack is None:
        states.add(None)  # never acknowledged: may never have been written
        candidates = events
    else:
        candidates = [events[last_ack], *(e for e in events[last_ack + 1 :] if not e[0].ok)]
    for op, _ in candidates:
        states.add(op.number if op.kind == "upsert" else None)
    return states


def crash_loop(tmp_path: Path, *, duration_s: float, min_kills: int, workers: int,
               gap_s: tuple[float, float], max_down_s: float, snapshot_every_ops: int,
               seed: int) -> LoopReport:
    catalog = list(read_catalog(DEMO_CATALOG))
    texts = [record["text"] for record in catalog]
    cluster = Cluster(tmp_path, fit_tfidf(tmp_path), ["--snapshot-every-ops", str(snapshot_every_ops)])
    numbers = itertools.count(1)
    ops: list[Op] = []
    kills: list[Kill] = []
    killer_errors: list[BaseException] = []
    query_rng = random.Random(seed)
    queries = [varied_text(query_rng, texts) for _ in range(40)]
    with running(cluster):
        assert cluster.gateway is not None
        with Client(cluster.gateway.address, timeout=60) as client:
            first = run_op(client, Op(next(numbers), "create", -1))
            assert first.ok and first.created, first
            for start in range(0, len(catalog), 100):
                batch = catalog[start : start + 100]
                op = run_op(client, Op(next(numbers), "upsert", -1, tuple(r["id"] for r in batch),
                                       tuple(r["text"] for r in batch)))
                assert op.ok, op
                ops.append(op)
            recall_before = recall_at_10(cluster, client, queries)

            stop_workers, stop_kills = threading.Event(), threading.Event()
            threads = [
                threading.Thread(target=worker, name=f"worker-{n}", args=(
                    n, cluster.gateway.address, seed * 100 + n, texts, numbers, stop_workers, ops))
                for n in range(workers)
            ]
            threads.append(threading.Thread(target=killer, name="killer", args=(
                cluster, random.Random(seed), gap_s, max_down_s, stop_kills, kills, killer_errors)))
            started = time.monotonic()
            for thread in threads:
                thread.start()
            try:
                while not killer_errors:
                    elapsed = time.monotonic() - started
                    enough = len(kills) >= min_kills and kills[-1].serving < float("inf")
                    if (elapsed >= duration_s and enough) or elapsed >= 3 * duration_s:
                        break
                    time.sleep(0.2)
            finally:
                stop_kills.set()
                threads[-1].join(180)
                # Traffic goes on a little past the last recovery, outside every window.
                if kills and kills[-1].serving < float("inf"):
                    time.sleep(max(0.0, kills[-1].serving + WINDOW_MARGIN_S + 2.0 - time.monotonic()))
                stop_workers.set()
                for thread in threads[:-1]:
                    thread.join(60)
            duration = time.monotonic() - started
            assert not killer_errors, f"the killer failed: {killer_errors[0]!r}"
            assert not any(t.is_alive() for t in threads), "a workload thread hung"
            for process in cluster.shards:
                assert is_serving(process.address), f"{process.name} is not SERVING at the end"

            wait_until_whole(client, queries[0])
            recall_after = recall_at_10(cluster, client, queries)
            report = LoopReport(ops, kills, duration, recall_before, recall_after)
            report.failures += check_final_state(cluster, ops)
            lives = [cluster.data_dir(s) / "collections" / COLLECTION / "versions" / "live"
                     for s in range(SHARDS)]
            report.snapshot_seqs = [
                int((live / "CURRENT").read_text()) if (live / "CURRENT").exists() else 0
                for live in lives
            ]
            if not any(report.snapshot_seqs):
                report.failures.append("no shard wrote a snapshot: recovery was WAL replay only")
            # What kills mid-snapshot may have left behind (staging directories, segments)...
            report.files = [
                sorted(p.name for p in (live / "snapshots").iterdir()) + [
                    f"{len(list((live / 'wal').glob('*.log')))} WAL segments"]
                for live in lives
            ]
            # ...is gone after a graceful stop: its final snapshot cleans up.
            for shard, live in enumerate(lives):
                process = cluster.shards[shard]
                process.stop(60)
                assert process.process is not None and process.process.returncode == 0
                current = (live / "CURRENT").read_text()
                left = sorted(p.name for p in (live / "snapshots").iterdir())
                segments = list((live / "wal").glob("*.log"))
                if left != [current] or len(segments) != 1:
                    report.failures.append(f"shard {shard} keeps {left} and {len(segments)} "
                                           f"WAL segments after a graceful stop")
    return report


def check_final_state(cluster: Cluster, ops: Sequence[Op]) -> list[str]:
    """Every id in an allowed state; every stored vector bit-identical to what the index
    makes of the encoder's vector for the text of the write that won."""
    assert cluster.encoder is not None
    failures: list[str] = []
    history: dict[str, list[tuple[Op, str | None]]] = defaultdict(list)
    for op in sorted((op for op in ops if op.is_write), key=lambda op: op.start):
        for position, item_id in enumerate(op.ids):
            history[item_id].append((op, op.texts[position] if op.kind == "upsert" else None))
    found: dict[str, pb.Item] = {}
    for shard, process in enumerate(cluster.shards):
        owned = sorted(i for i in history if shard_for_id(i, SHARDS) == shard)
        found.update(stored_items(process.address, owned))

    texts: dict[tuple[str, int], str] = {
        (item_id, op.number): text for item_id, events in history.items() for op, text in events
        if text is not None
    }
    to_compare: list[tuple[str, str]] = []
    for item_id, events in history.items():
        allowed = allowed_states(events)
        item = found.get(item_id)
        state = None if item is None else int(struct_to_dict(item.metadata)["op"])
        if state not in allowed:
            last = next((op for op, _ in reversed(events) if op.ok), None)
            kind = (
                "lost write" if last is not None and last.kind == "upsert"
                else "resurrected delete" if last is not None else "phantom write"
            )
            failures.append(f"{kind}: {item_id} holds op {state}, allowed {sorted(allowed, key=str)}; "
                            f"history {[(op.number, op.kind, op.code) for op, _ in events]}")
        elif item is not None:
            to_compare.append((item_id, texts[(item_id, state)]))
    if to_compare:
        expected = as_the_index_stores(embed(cluster.encoder.address, [t for _, t in to_compare]))
        for (item_id, _), want in zip(to_compare, expected):
            got = np.frombuffer(found[item_id].vector.data, "<f4")
            if got.tobytes() != want.astype("<f4").tobytes():
                failures.append(f"vector of {item_id} differs from the encoder's "
                                f"(max abs diff {np.abs(got - want).max():.3g})")
    return failures


def check_and_summarize(report: LoopReport, label: str) -> None:
    ops, kills = report.ops, report.kills
    failures = list(report.failures)
    outside = [op for op in ops if op.worker >= 0 and not in_window(op, kills)]
    inside = [op for op in ops if op.worker >= 0 and in_window(op, kills)]
    good_outside = [op for op in outside if op.ok and not op.partial]
    success_outside = len(good_outside) / max(len(outside), 1)
    acked_writes = [op for op in ops if op.is_write and op.ok]
    uncertain = {i for op in ops if op.is_write and not op.ok for i in op.ids}

    codes = Counter(f"{op.kind}:{op.code}/{op.reason}" for op in ops if not op.ok)
    odd = {code: n for code, n in codes.items() if code.split(":")[1].split("/")[0] not in OUTAGE_CODES}
    if odd:
        failures.append(f"calls failed with codes no outage explains: {odd}")
    bad_shard_errors = {
        e for op in ops if op.kind == "search" for e in op.shard_errors
        if not e.startswith(tuple(OUTAGE_CODES))
    }
    if bad_shard_errors:
        failures.append(f"shards failed searches with {sorted(bad_shard_errors)[:5]}")
    if any(op.kind == "create" and op.ok and op.created for op in ops):
        failures.append("CreateCollection(exist_ok) answered created=True after the first creation")
    if success_outside < 0.99:
        failed = Counter(f"{op.kind}:{op.code}{' partial' if op.partial else ''}"
                         for op in outside if not (op.ok and not op.partial))
        failures.append(f"success outside kill windows {success_outside:.4f} < 0.99: {dict(failed)}")
    if report.recall_after < 0.95 or report.recall_after < report.recall_before - 0.03:
        failures.append(f"recall@10 {report.recall_before:.3f} before, {report.recall_after:.3f} after")
    if len(kills) < 3:
        failures.append(f"only {len(kills)} kills")
    lost = sum(1 for f in failures if f.startswith(("lost write", "resurrected delete")))
    # How long after SERVING the gateway still answered without the restarted shard.
    lag = max((
        op.end - k.serving for k, later in zip(kills, [*kills[1:], None]) for op in ops
        if op.kind == "search" and k.serving <= op.start and (later is None or op.end < later.killed)
        and any(f"index shard {k.shard} (" in e for e in op.shard_errors)
    ), default=0.0)

    print(
        f"\ncrash loop [{label}]: {report.duration_s:.0f}s, {len(kills)} kills "
        f"(shards {Counter(k.shard for k in kills)}), {len(ops)} operations, "
        f"{len(acked_writes)} acknowledged writes "
        f"({sum(len(op.ids) for op in acked_writes)} item writes), "
        f"{len(uncertain)} uncertain ids, lost writes {lost}, "
        f"success outside windows {success_outside:.4f} ({len(good_outside)}/{len(outside)}), "
        f"inside windows {len(inside)} ops ({sum(op.ok for op in inside)} ok, "
        f"{sum(op.partial for op in inside)} partial), "
        f"recall@10 before {report.recall_before:.3f} after {report.recall_after:.3f}, "
        f"gateway without a SERVING shard for up to {lag:.1f}s, "
        f"failures by code {dict(codes)}, last snapshots at seq {report.snapshot_seqs}, "
        f"snapshot dirs and WAL per shard {report.files}"
    )
    assert not failures, "\n".join(failures[:30])


def test_crash_loop(tmp_path: Path) -> None:
    report = crash_loop(tmp_path, duration_s=25, min_kills=3, workers=3, gap_s=(2.0, 4.0),
                        max_down_s=8.0, snapshot_every_ops=200, seed=9)
    check_and_summarize(report, "short")


@pytest.mark.crash_loop_long
@pytest.mark.timeout(1500)
def test_crash_loop_long(tmp_path: Path) -> None:
    report = crash_loop(tmp_path, duration_s=300, min_kills=25, workers=4, gap_s=(1.0, 6.0),
                        max_down_s=10.0, snapshot_every_ops=200, seed=19)
    check_and_summarize(report, "long")


# -- a shard recovering behind the gateway ------------------------------------------------
RECOVERY_ITEMS = 24_000


def bulk_fill(address: str, dim: int, shard: int, count: int) -> list[str]:
    """count random items straight into one shard (ids that hash to it), 1000 a call."""
    rng = np.random.default_rng(5)
    ids = [i for i in (f"bulk-{n}" for n in range(4 * count)) if shard_for_id(i, SHARDS) == shard][:count]
    assert len(ids) == count
    with grpc.insecure_channel(address, options=MAX_MESSAGE) as channel:
        stub = pb_grpc.IndexServiceStub(channel)
        for start in range(0, count, 1000):
            vectors = rng.normal(size=(min(1000, count - start), dim)).astype(np.float32)
            stub.Upsert(pb.UpsertRequest(collection=COLLECTION, items=[
                pb.Item(id=i, vector=vector_to_pb(v)) for i, v in zip(ids[start:], vectors)
            ]), timeout=120)
    return ids


def shard_counts(cluster: Cluster) -> list[int]:
    counts = []
    for process in cluster.shards:
        with grpc.insecure_channel(process.address) as channel:
            counts.append(pb_grpc.IndexServiceStub(channel).GetCollection(
                pb.GetCollectionRequest(name=COLLECTION), timeout=30).collection.item_count)
    return counts


def test_gateway_during_wal_replay_answers_partial_or_unavailable_and_deletes_nothing(
    tmp_path: Path,
) -> None:
    """Shard 1 holds 24k items in its WAL and no snapshot, so after a kill its restart
    spends seconds replaying with the port open (NOT_READY). Through the gateway meanwhile:
    partial searches leave it out, strict ones are UNAVAILABLE (never NOT_FOUND), and the
    CreateCollection(exist_ok) that ingest sends first is refused and destroys nothing."""
    # 64 features: a 64-d space keeps a 24k-item log small and its replay seconds long.
    model = fit_tfidf(tmp_path, max_features=64)
    cluster = Cluster(tmp_path, model, ["--snapshot-every-ops", str(10**9), "--snapshot-every-items", str(10**9),
                                      "--wal-sync", "never"])
    catalog = list(read_catalog(DEMO_CATALOG))
    with running(cluster):
        assert cluster.gateway is not None
        # retries=0: each call is one observation of the recovering shard, not a wait it out.
        with Client(cluster.gateway.address, timeout=60, retries=0) as client:
            info, created = client.create_collection(COLLECTION)
            assert created
            for start in range(0, len(catalog), 100):
                client.upsert_documents(COLLECTION, [
                    {"id": r["id"], "text": r["text"]} for r in catalog[start : start + 100]
                ])
            bulk_fill(cluster.shards[1].address, info.dim, 1, RECOVERY_ITEMS)
            before = shard_counts(cluster)
            assert before[1] > RECOVERY_ITEMS
            query = catalog[0]["text"]

            cluster.kill(1)
            restarted = cluster.restart(1)
            partial_answers: list[tuple[bool, list[str]]] = []
            strict_answers: list[str] = []
            create_answers: list[str] = []
            deadline = time.monotonic() + 180
            while not is_serving(restarted.address):
                assert time.monotonic() < deadline, "the shard never finished recovering"
                restarted.check_alive()
                result = client.search(COLLECTION, text=query, top_k=5, allow_partial=True)
                partial_answers.append(
                    (result.partial, [f"{s.shard_index}:{s.error}" for s in result.shards if not s.ok])
                )
                try:
                    client.search(COLLECTION, text=query, top_k=5)
                    strict_answers.append("OK")
                except ApiError as error:
                    strict_answers.append(f"{error.code}/{error.reason}: {error.message}")
                try:
                    _, again = client.create_collection(COLLECTION, exist_ok=True)
                    create_answers.append(f"OK created={again}")
                except ApiError as error:
                    create_answers.append(f"{error.code}/{error.reason}")
            wait_until_whole(client, query)
            after = shard_counts(cluster)
            final = client.search(COLLECTION, text=query, top_k=5)

    print(f"\nwhile shard 1 replayed {before[1]} items: {len(partial_answers)} rounds; "
          f"partial searches {Counter(p for p, _ in partial_answers)}; "
          f"strict searches {Counter(a.split(':')[0] for a in strict_answers)}; "
          f"creates {Counter(create_answers)}")
    # The window was hit: the restarted shard itself answered NOT_READY at least once.
    not_ready = [e for _, errors in partial_answers for e in errors if "NOT_READY" in e]
    assert not_ready, f"no call reached the shard while it recovered: {partial_answers[:3]}"
    for partial, errors in partial_answers:
        # Calls that raced the very end of the replay may have been answered whole.
        assert (partial and len(errors) == 1 and errors[0].startswith("1:UNAVAILABLE")) or (
            not partial and not errors
        ), (partial, errors)
    for answer in strict_answers:
        assert answer == "OK" or answer.startswith("UNAVAILABLE/"), answer
    for answer in create_answers:
        assert answer in ("OK created=False", "UNAVAILABLE/NOT_READY", "UNAVAILABLE/UNAVAILABLE"), answer
    assert "UNAVAILABLE/NOT_READY" in create_answers
    assert after == before  # nothing deleted, nothing lost
    assert not final.partial and final.hits


# -- a full disk ---------------------------------------------------------------------------
# The shard runs under RLIMIT_FSIZE with SIGXFSZ ignored: a write past the limit fails with
# EFBIG, as one on a full disk fails with ENOSPC. Only the soft limit is set, so the test
# can lift it from outside (prlimit): the disk has space again.
FSIZE_WRAPPER = """
import resource, runpy, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
soft = int(sys.argv.pop(1))
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, resource.RLIM_INFINITY))
runpy.run_module("contentembed.services.index", run_name="__main__", alter_sys=True)
"""
FSIZE_LIMIT = 64 * 1024
DISK_DIM = 16


@dataclass
class FileSizeLimitedShard(ServiceProcess):
    """ServiceProcess with no hook for the child's limits: the same launch, wrapped."""

    fsize_limit: int = FSIZE_LIMIT

    def start(self, env: dict[str, str]) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.port_file.unlink(missing_ok=True)
        command = [sys.executable, "-c", FSIZE_WRAPPER, str(self.fsize_limit), *self.args,
                   "--host", HOST, "--port-file", str(self.port_file)]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self.pid = self.process.pid


def set_file_size_limit(pid: int, limit: int) -> None:
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))


def test_disk_full_fails_loudly_applies_nothing_and_loses_nothing(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    live = data_dir / "collections" / COLLECTION / "versions" / "live"
    rng = np.random.default_rng(11)
    acked: dict[str, np.ndarray] = {}
    refused: list[str] = []
    deleted: list[str] = []
    started: list[ServiceProcess] = []
    env = dict(os.environ)

    def launch(name: str, limited: bool = False) -> tuple[ServiceProcess, grpc.Channel]:
        args = ["--port", "0", "--metrics-port", "-1", "--data-dir", str(data_dir),
                "--snapshot-every-ops", str(10**9), "--snapshot-every-items", str(10**9)]
        process = (FileSizeLimitedShard if limited else ServiceProcess)(name, INDEX, args, tmp_path)
        started.append(process)
        process.start(env)
        process.wait_for_port(time.monotonic() + 60)
        process.wait_until_serving(time.monotonic() + 60)
        return process, grpc.insecure_channel(process.address)

    def item(item_id: str) -> pb.Item:
        vector = rng.normal(size=DISK_DIM).astype(np.float32)
        acked_or_not[item_id] = vector
        return pb.Item(id=item_id, vector=vector_to_pb(vector))

    acked_or_not: dict[str, np.ndarray] = {}
    try:
        # 1. Without a limit: 1000 items, and a graceful stop writes the snapshot that the
        #    limited run must leave alone.
        first, channel = launch("index-unlimited")
        with channel:
            stub = pb_grpc.IndexServiceStub(channel)
            stub.CreateCollection(pb.CreateCollectionRequest(name=COLLECTION, space_id="s@1", dim=DISK_DIM))
            for batch in range(10):
                items = [item(f"base-{batch}-{n}") for n in range(100)]
                stub.Upsert(pb.UpsertRequest(collection=COLLECTION, items=items), timeout=30)
                acked.update((i.id, acked_or_not[i.id]) for i in items)
        first.stop(30)
        assert first.process is not None and first.process.returncode == 0
        snapshot_seq = (live / "CURRENT").read_text()
        snapshot = live / "snapshots" / snapshot_seq
        manifest = verify_manifest(snapshot)
        manifest_bytes = (snapshot / "manifest.json").read_bytes()
        assert manifest["files"]["index.bin"]["bytes"] > 2 * FSIZE_LIMIT  # no snapshot fits now

        # 2. Under the limit, single upserts until the WAL segment cannot grow.
        limited, channel = launch("index-limited", limited=True)
        with channel:
            stub = pb_grpc.IndexServiceStub(channel)
            failure: grpc.RpcError | None = None
            for n in range(5000):
                request = pb.UpsertRequest(collection=COLLECTION, items=[item(f"w-{n}")])
                try:
                    stub.Upsert(request, timeout=30)
                except grpc.RpcError as error:
                    failure = error
                    refused.append(f"w-{n}")
                    break
                acked[f"w-{n}"] = acked_or_not[f"w-{n}"]
            assert failure is not None, "the WAL never filled up"
            first_failure = (failure.code().name, error_reason(failure), failure.details())
            # And again, with a bigger request: the same answer, not a broken log.
            with pytest.raises(grpc.RpcError) as again:
                stub.Upsert(pb.UpsertRequest(
                    collection=COLLECTION, items=[item("again-1"), item("again-2")]), timeout=30)
            refused += ["again-1", "again-2"]
            second_failure = (again.value.code().name, error_reason(again.value), again.value.details())
            # Nothing of a refused write was applied; reads keep working.
            got = stub.GetItems(pb.GetItemsRequest(collection=COLLECTION, ids=[*refused, "base-0-0"]))
            assert sorted(got.missing_ids) == sorted(refused)
            hits = stub.Search(pb.SearchRequest(collection=COLLECTION, top_k=5,
                                                query=vector_to_pb(acked["base-0-0"])), timeout=30).hits
            assert hits[0].id == "base-0-0"
            assert stub.GetCollection(pb.GetCollectionRequest(name=COLLECTION)).collection.item_count == len(acked)
            assert len(stub.ListItems(pb.ListItemsRequest(collection=COLLECTION, page_size=50)).items) == 50

            # 3. Space again: writes go on without a restart.
            set_file_size_limit(limited.pid, resource.RLIM_INFINITY)
            after_space: list[str] = []
            for item_id in ("freed-1", "freed-2"):
                try:
                    stub.Upsert(pb.UpsertRequest(collection=COLLECTION, items=[item(item_id)]), timeout=30)
                    acked[item_id] = acked_or_not[item_id]
                    after_space.append("OK")
                except grpc.RpcError as error:
                    refused.append(item_id)
                    after_space.append(f"{error.code().name}/{error_reason(error)}")
            try:
                stub.DeleteItems(pb.DeleteItemsRequest(collection=COLLECTION, ids=["base-0-1"]), timeout=30)
                del acked["base-0-1"]
                deleted.append("base-0-1")
                after_space.append("delete OK")
            except grpc.RpcError as error:
                after_space.append(f"delete {error.code().name}/{error_reason(error)}")

        # 4. Room for the log but not for a snapshot, a graceful stop: its final snapshot
        #    fails, the previous one stays.
        set_file_size_limit(limited.pid, 2 * FSIZE_LIMIT)
        limited.stop(60)
        assert limited.process is not None
        stop_code = limited.process.returncode
        log = limited.log_path.read_text(errors="replace")
        current_after = (live / "CURRENT").read_text()
        leftovers = sorted(p.name for p in (live / "snapshots").iterdir() if p.name != snapshot_seq)
        print(f"\ndisk full: first refusal {first_failure}; again {second_failure[:2]}; "
              f"after space came back {after_space}; stop under the limit exited {stop_code}; "
              f"snapshots dir besides {snapshot_seq}: {leftovers}")
        assert "snapshot failed" in log and "write-ahead log append failed" in log
        assert current_after == snapshot_seq
        verify_manifest(snapshot)
        assert (snapshot / "manifest.json").read_bytes() == manifest_bytes

        # 5. Without the limit, every acknowledged write is there, bit for bit.
        final, channel = launch("index-after")
        with channel:
            stub = pb_grpc.IndexServiceStub(channel)
            ids = sorted(acked)
            found: dict[str, pb.Item] = {}
            missing: list[str] = []
            for start in range(0, len(ids), 500):
                response = stub.GetItems(pb.GetItemsRequest(collection=COLLECTION, ids=ids[start : start + 500]))
                found.update((i.id, i) for i in response.items)
                missing += response.missing_ids
            assert missing == [], f"acknowledged writes lost: {missing[:10]}"
            expected = as_the_index_stores(np.stack([acked[i] for i in ids]))
            for item_id, want in zip(ids, expected):
                assert found[item_id].vector.data == want.astype("<f4").tobytes(), item_id
            gone = stub.GetItems(pb.GetItemsRequest(collection=COLLECTION, ids=[*refused, *deleted]))
            assert sorted(gone.missing_ids) == sorted([*refused, *deleted])
            count = stub.GetCollection(pb.GetCollectionRequest(name=COLLECTION)).collection.item_count
            assert count == len(acked)
        final.stop(30)
        assert final.process is not None and final.process.returncode == 0
        assert int((live / "CURRENT").read_text()) > int(snapshot_seq)  # snapshots work again

        assert first_failure[:2] == ("RESOURCE_EXHAUSTED", "DISK_FULL"), first_failure
        assert second_failure[:2] == first_failure[:2], second_failure
        assert after_space == ["OK", "OK", "delete OK"]
        assert stop_code == 0
        assert leftovers == [], "a failed snapshot left files behind"
    finally:
        for process in started:
            if process.process is not None and process.process.poll() is None:
                process.process.kill()
                process.process.wait(10)


def test_failing_background_snapshots_back_off_while_writes_go_on(tmp_path: Path) -> None:
    """A snapshot that does not fit on the disk is not retried every 50 ms: each try
    rotated the WAL into a new segment and rewrote the whole index (115 tries, 84 segments
    in 7 s before the back-off). Writes are acknowledged throughout: the WAL has room."""
    data_dir = tmp_path / "data"
    shard = FileSizeLimitedShard("index-limited", INDEX, [
        "--port", "0", "--metrics-port", "-1", "--data-dir", str(data_dir), "--snapshot-every-ops", "20",
    ], tmp_path)
    rng = np.random.default_rng(2)
    try:
        shard.start(dict(os.environ))
        shard.wait_for_port(time.monotonic() + 60)
        shard.wait_until_serving(time.monotonic() + 60)
        with grpc.insecure_channel(shard.address) as channel:
            stub = pb_grpc.IndexServiceStub(channel)
            stub.CreateCollection(pb.CreateCollectionRequest(name=COLLECTION, space_id="s@1", dim=DISK_DIM))
            # 20 writes of 20 items: about 32 KiB of WAL, an index of about 80 KiB (the limit
            # is 64 KiB), so the snapshot due after the 20th write cannot be written.
            for n in range(40):
                stub.Upsert(pb.UpsertRequest(collection=COLLECTION, items=[
                    pb.Item(id=f"d{n}-{k}", vector=vector_to_pb(rng.normal(size=DISK_DIM).astype(np.float32)))
                    for k in range(20)
                ]), timeout=30)
                time.sleep(0.02)
            time.sleep(1.0)
            count = stub.GetCollection(pb.GetCollectionRequest(name=COLLECTION)).collection.item_count
        log = shard.log_path.read_text(errors="replace")
        live = data_dir / "collections" / COLLECTION / "versions" / "live"
        segments = sorted(p.name for p in (live / "wal").glob("*.log"))
        tries = log.count("snapshot failed")
        print(f"\nfailing snapshots: {tries} tries, WAL segments {segments}")
        assert count == 800
        assert 1 <= tries <= 2
        assert len(segments) <= 3
        assert not (live / "CURRENT").exists()
    finally:
        if shard.process is not None and shard.process.poll() is None:
            shard.process.kill()
            shard.process.wait(10)
