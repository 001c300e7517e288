"""What the model worker process costs per batch, without any RPC: the same backend
called in this process and through ``WorkerBackend`` (a child process over a socket pair),
on the same batches, measured in the same run.

    .venv/bin/python bench/bench_model_worker.py [--device auto] [--model DIR] [--seconds 5]

Prints ms per batch for batches of 1, 16 and 64 demo catalog texts each way, the worker's
own model time (as the child measured it) and the difference: the process boundary.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import os
import platform
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench_text_encoder import corpus  # noqa: E402

from contentembed.services.common.model_worker import WorkerBackend  # noqa: E402
from contentembed.services.common.models import pick_device  # noqa: E402
from contentembed.services.text_encoder.backends import load_backend  # noqa: E402


def ms_per_call(encode, batches, seconds: float) -> float:
    encode(next(batches))
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        encode(next(batches))
        calls += 1
    return 1000 * (time.perf_counter() - started) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    device = pick_device(args.device)
    texts = corpus()
    factory = functools.partial(load_backend, "sentence-transformers", args.model, device)
    in_process = factory()
    worker_times: list[float] = []
    worker = WorkerBackend(factory, on_encoded=worker_times.append)
    rows = []
    try:
        for size in (1, 16, 64):
            batches = (list(itertools.islice(itertools.cycle(texts), i, i + size)) for i in itertools.count())
            local = ms_per_call(in_process.encode, batches, args.seconds)
            worker_times.clear()
            remote = ms_per_call(worker.encode, batches, args.seconds)
            inside = 1000 * sum(worker_times[1:]) / max(len(worker_times) - 1, 1)
            rows.append((size, local, remote, inside))
    finally:
        worker.close()
    card = "cpu"
    if device.startswith("cuda"):
        import torch

        card = torch.cuda.get_device_name(0)
    print(f"device: {device} ({card}); {os.cpu_count()} cpus; Python {platform.python_version()}")
    print(f"{'batch':>5} {'in process ms':>14} {'via worker ms':>14} {'inside worker ms':>17} {'boundary ms':>12}")
    for size, local, remote, inside in rows:
        print(f"{size:>5} {local:>14.2f} {remote:>14.2f} {inside:>17.2f} {remote - inside:>12.2f}")


if __name__ == "__main__":
    main()
