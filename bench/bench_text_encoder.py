"""Text-encoder service vs raw sentence-transformers, measured in the same run.

    .venv/bin/python bench/bench_text_encoder.py [--seconds 8] [--device auto] [--model DIR]

Starts the text-encoder as its own process (dynamic batching on, the defaults), once per
``--model-worker`` mode (the model in a thread of the RPC process, or in its own process),
then drives Embed from an asyncio gRPC client: 1, 8, 32 and 64 concurrent callers sending one
text each, and bulk callers sending full batches. The baseline is SentenceTransformer.encode
in this process on the same device, one text per call and batches of 32 and 64. Prints
texts/s and the ratios against their targets (docs/benchmarks.md): 32 single-text callers
>= 0.7x raw batch-32; bulk >= 0.9x raw.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from harness import embed_rate, loop_rate, measured_phase, running_encoder  # noqa: E402

from contentembed.cli.catalog import DEMO_CATALOG  # noqa: E402
from contentembed.encoder.v1 import encoder_service_pb2 as pb  # noqa: E402


def corpus() -> list[str]:
    return [json.loads(line)["text"] for line in DEMO_CATALOG.read_text().splitlines() if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model", default="all-MiniLM-L6-v2", help="model dir or the bundled name")
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--max-queue-delay-ms", type=float, default=5.0)
    parser.add_argument("--torch-threads", type=int, default=0,
                        help="torch intra-op threads, for the service and the raw baseline alike")
    parser.add_argument("--callers", default="1,8,32,64", help="single-text caller counts")
    parser.add_argument(
        "--model-worker", default="thread,process",
        help="comma-separated: where the service runs its model (each measured in turn)",
    )
    args = parser.parse_args()
    texts = corpus()
    inputs = [pb.EmbedInput(text=t) for t in texts]

    from contentembed.services.common.models import pick_device
    from contentembed.services.text_encoder.backends import resolve_sentence_transformer

    device = pick_device(args.device)
    bulk = args.max_batch_size
    rows: list[tuple[str, float, str]] = []
    for mode in args.model_worker.split(","):
        service_args = [
            "--device", device, "--model", args.model, "--max-batch-size", str(bulk),
            "--max-queue-delay-ms", str(args.max_queue_delay_ms), "--max-queue-items", str(bulk * 64),
            "--model-worker", mode, "--torch-threads", str(args.torch_threads),
        ]
        with running_encoder("text-encoder", "contentembed.services.text_encoder", service_args) as encoder:
            phases = [(f"[{mode}] {n} concurrent single-text callers", n, 1)
                      for n in map(int, args.callers.split(","))]
            phases += [(f"[{mode}] bulk, {n} caller(s) x {bulk} texts", n, bulk) for n in (1, 2)]
            for label, callers, per_call in phases:
                rate, shape = measured_phase(
                    encoder, embed_rate, encoder.address, inputs, callers, per_call, args.seconds
                )
                rows.append((label, rate, shape))

    from sentence_transformers import SentenceTransformer

    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)

    model = SentenceTransformer(str(resolve_sentence_transformer(args.model)[0]), device=device)
    source = itertools.cycle(texts)
    raw = {}
    for batch in (1, 32, bulk):
        raw[batch] = loop_rate(
            lambda batch=batch: len(model.encode(
                [next(source) for _ in range(batch)], batch_size=batch, normalize_embeddings=True
            )),
            args.seconds,
        )
    rows = [(f"raw encode, batch {batch}", rate, "") for batch, rate in raw.items()] + rows

    card = "cpu"
    if device.startswith("cuda"):
        import torch

        card = torch.cuda.get_device_name(0)
    print(f"device: {device} ({card}); {os.cpu_count()} cpus; {platform.python_version()}; "
          f"torch threads {args.torch_threads or 'default'}")
    print(f"{'path':<52}{'texts/s':>10}   model calls in the service")
    for label, rate, shape in rows:
        print(f"{label:<52}{rate:>10.1f}   {shape}")
    by_label = {label: rate for label, rate, _ in rows}
    for mode in args.model_worker.split(","):
        best_bulk = max(rate for label, rate, _ in rows if label.startswith(f"[{mode}] bulk"))
        print(f"[{mode}] ratio 32 single-text callers / raw batch-32  "
              f"{by_label[f'[{mode}] 32 concurrent single-text callers'] / raw[32]:6.2f}  (target >= 0.7)")
        print(f"[{mode}] ratio bulk through service / raw batch-{bulk}   "
              f"{best_bulk / raw[bulk]:6.2f}  (target >= 0.9)")


if __name__ == "__main__":
    main()
