"""The text-encoder as an operator runs it, with its model in a worker process: SIGTERM
stops both, and SIGKILL of the encoder leaves no orphan worker behind."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import grpc
import pytest

from contentembed.cli.stack import ServiceProcess
from contentembed.encoder.v1 import encoder_service_pb2 as pb
from contentembed.encoder.v1 import encoder_service_pb2_grpc as pb_grpc
from contentembed.services.text_encoder.tfidf import TfidfModel
from tests.unit.test_tfidf import SEED_DOCS

pytestmark = pytest.mark.e2e


def children_of(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


def gone(pid: int, within_s: float) -> bool:
    """True once ``pid`` no longer exists or is a zombie (exited, parent gone or not reaping)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


def start_encoder(tmp_path: Path) -> tuple[ServiceProcess, int]:
    model = tmp_path / "tfidf.json"
    TfidfModel.fit(SEED_DOCS).save(model)
    encoder = ServiceProcess(
        "text-encoder", "contentembed.services.text_encoder",
        ["--port", "0", "--metrics-port", "-1", "--backend", "tfidf", "--model", str(model),
         "--model-worker", "process"],
        tmp_path,
    )
    encoder.start(dict(os.environ))
    deadline = time.monotonic() + 60
    encoder.wait_for_port(deadline)
    encoder.wait_until_serving(deadline)
    with grpc.insecure_channel(encoder.address) as channel:
        response = pb_grpc.EncoderServiceStub(channel).Embed(
            pb.EmbedRequest(inputs=[pb.EmbedInput(text=SEED_DOCS[0])]), timeout=30
        )
    assert response.vectors.count == 1
    workers = children_of(encoder.pid)
    assert len(workers) == 1, f"expected one model worker, found {workers}"
    return encoder, workers[0]


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_stopping_the_encoder_ends_its_worker(tmp_path: Path, how: signal.Signals) -> None:
    encoder, worker = start_encoder(tmp_path)
    try:
        os.kill(encoder.pid, how)
        assert encoder.process is not None
        encoder.process.wait(30)
        assert gone(worker, 15), f"model worker {worker} outlived the encoder ({how.name})"
    finally:
        if encoder.returncode is None:
            encoder.process.kill()
        if not gone(worker, 0.1):
            os.kill(worker, signal.SIGKILL)
    if how == signal.SIGTERM:
        assert encoder.returncode == 0
