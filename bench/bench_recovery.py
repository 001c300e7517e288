"""How long a shard is NOT_READY after SIGKILL, at 384 dimensions, with snapshots due by
items (today's cadence) against the old cadence in write requests (no snapshot before
50,000 requests), in the same run.

Each phase starts a shard as `contentembed up` does (durable data dir, wal-sync always),
writes ITEMS random unit vectors in requests of PER_REQUEST, SIGKILLs it right after the
last acknowledged write, restarts it and times the port-open-to-SERVING window (snapshot
load, WAL replay, collections checked). The shard's own log says how much it replayed.

    python bench/bench_recovery.py                    # 50,000 items in 25 requests
    python bench/bench_recovery.py --items 200000 --per-request 2000
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import grpc
import numpy as np

from contentembed.cli.stack import ServiceProcess
from contentembed.index.v1 import index_service_pb2 as pb
from contentembed.index.v1 import index_service_pb2_grpc as pb_grpc

DIM = 384
OLD_CADENCE = ["--snapshot-every-items", str(10**9), "--snapshot-wal-bytes", str(1 << 40)]


def start(run_dir: Path, data_dir: Path, extra: list[str]) -> ServiceProcess:
    process = ServiceProcess("index", "contentembed.services.index",
                             ["--port", "0", "--metrics-port", "-1", "--data-dir", str(data_dir),
                              *extra], run_dir)
    process.start(dict(os.environ))
    process.wait_for_port(time.monotonic() + 60)
    return process


def phase(name: str, items: int, per_request: int, extra: list[str]) -> dict:
    with TemporaryDirectory() as scratch:
        run_dir, data_dir = Path(scratch), Path(scratch) / "data"
        shard = start(run_dir, data_dir, extra)
        rng = np.random.default_rng(0)
        written_s = 0.0
        try:
            shard.wait_until_serving(time.monotonic() + 60)
            with grpc.insecure_channel(shard.address) as channel:
                stub = pb_grpc.IndexServiceStub(channel)
                stub.CreateCollection(pb.CreateCollectionRequest(name="c", space_id="s@1", dim=DIM))
                started = time.perf_counter()
                for first in range(0, items, per_request):
                    vectors = rng.normal(size=(min(per_request, items - first), DIM)).astype("<f4")
                    stub.Upsert(pb.UpsertRequest(collection="c", items=[
                        pb.Item(id=f"i{first + n}", vector={"data": v.tobytes(), "dim": DIM})
                        for n, v in enumerate(vectors)
                    ]), timeout=600)
                written_s = time.perf_counter() - started
        finally:
            os.kill(shard.pid, signal.SIGKILL)
            shard.process.wait(10)
        restarted = start(run_dir, data_dir, extra)
        try:
            started = time.monotonic()
            restarted.wait_until_serving(started + 3600)
            recovery_s = time.monotonic() - started
            logged = [json.loads(line) for line in restarted.log_path.read_text().splitlines()
                      if line.startswith("{")]
            recovered = [line for line in logged if line.get("msg") == "collection recovered"][-1]
        finally:
            restarted.stop(30)
    result = {"phase": name, "items": items, "requests": -(-items // per_request),
              "write_s": round(written_s, 1), "recovery_s": round(recovery_s, 1),
              "replayed_items": recovered["replayed_items"],
              "snapshot_load_s": recovered.get("snapshot_s"), "replay_s": recovered.get("replay_s")}
    print(json.dumps(result))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--per-request", type=int, default=2000)
    parser.add_argument("--skip-old", action="store_true", help="only today's cadence")
    args = parser.parse_args()
    today = phase("snapshots by items (default)", args.items, args.per_request, [])
    if not args.skip_old:
        old = phase("snapshots by requests only (before)", args.items, args.per_request, OLD_CADENCE)
        print(f"recovery: {today['recovery_s']} s against {old['recovery_s']} s before "
              f"({old['recovery_s'] / max(today['recovery_s'], 0.1):.1f}x faster)")


if __name__ == "__main__":
    main()
