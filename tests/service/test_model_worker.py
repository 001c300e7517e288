"""The encoder with its model in a worker process (model_worker=process), through the
real server: the same answers as in a thread, and a worker that dies or hangs costs one
batch, never the service."""

from __future__ import annotations

import functools
import os
import signal
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from contentembed.encoder.v1 import encoder_service_pb2 as pb
from contentembed.encoder.v1 import encoder_service_pb2_grpc as pb_grpc
from contentembed.services.common.errors import FailedPrecondition, Unavailable
from contentembed.services.common.model_worker import WorkerBackend
from contentembed.services.common.protoconv import matrix_from_pb
from contentembed.services.text_encoder.service import TextEncoderService, TextEncoderSettings
from contentembed.services.text_encoder.tfidf import TfidfModel
from tests.conftest import error_reason, running_service, settings_for_test
from tests.support.worker_backends import HANG, FileSpaceBackend, SleepyBackend, failing_backend
from tests.unit.test_tfidf import SEED_DOCS


def parent_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    raise AssertionError(f"no PPid for {pid}")


def embed(address: str, texts: list[str]) -> np.ndarray:
    with grpc.insecure_channel(address) as channel:
        response = pb_grpc.EncoderServiceStub(channel).Embed(
            pb.EmbedRequest(inputs=[pb.EmbedInput(text=t) for t in texts]), timeout=30
        )
    return matrix_from_pb(response.vectors)


@pytest.fixture
def tfidf_file(tmp_path: Path) -> Path:
    path = tmp_path / "tfidf.json"
    TfidfModel.fit(SEED_DOCS).save(path)
    return path


def test_worker_process_answers_as_the_thread_does(tfidf_file: Path) -> None:
    answers = {}
    for mode in ("thread", "process"):
        settings = settings_for_test(
            TextEncoderSettings, backend="tfidf", model=str(tfidf_file), model_worker=mode
        )
        with running_service(TextEncoderService, settings) as runtime:
            assert runtime.load_error is None, runtime.load_error
            service = runtime.service
            answers[mode] = embed(runtime.address, SEED_DOCS)
            # The vocabulary check runs in the worker and keeps its reason and position.
            with pytest.raises(grpc.RpcError) as caught:
                embed(runtime.address, ["coffee", "xyzzy"])
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert error_reason(caught.value) == "NO_KNOWN_TOKENS"
            assert "inputs[1]" in caught.value.details()
            if mode == "process":
                assert isinstance(service.backend, WorkerBackend)
                assert parent_of(service.backend.pid) == os.getpid()
                worker = service.backend.pid
        if mode == "process":  # stopping the service stopped (and reaped) its worker
            assert not Path(f"/proc/{worker}").exists()
    np.testing.assert_array_equal(answers["thread"], answers["process"])


def test_a_killed_worker_costs_one_batch_and_is_replaced(tfidf_file: Path) -> None:
    settings = settings_for_test(
        TextEncoderSettings, backend="tfidf", model=str(tfidf_file), model_worker="process"
    )
    with running_service(TextEncoderService, settings) as runtime:
        before = embed(runtime.address, SEED_DOCS[:3])
        worker = runtime.service.backend.pid
        os.kill(worker, signal.SIGKILL)
        with pytest.raises(grpc.RpcError) as caught:
            embed(runtime.address, SEED_DOCS[:3])
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert error_reason(caught.value) == "MODEL_WORKER_EXITED"
        assert "signal 9" in caught.value.details()
        after = embed(runtime.address, SEED_DOCS[:3])
        replacement = runtime.service.backend.pid
        restarts = runtime.registry.get_sample_value(
            "contentembed_model_worker_restarts_total", {"service": "text-encoder"}
        )
    np.testing.assert_array_equal(before, after)
    assert replacement != worker and restarts == 1.0


def test_a_hung_worker_is_killed_and_replaced() -> None:
    backend = WorkerBackend(functools.partial(SleepyBackend), batch_timeout_s=1.0)
    try:
        hung = backend.pid
        started = time.monotonic()
        with pytest.raises(Unavailable) as caught:
            backend.encode(["ok", HANG])
        assert time.monotonic() - started < 10
        assert caught.value.reason == "MODEL_WORKER_EXITED" and "did not answer" in caught.value.message
        assert not Path(f"/proc/{hung}").exists()  # killed and reaped
        vectors = backend.encode(["ab", "abcd"]).vectors
        assert backend.pid != hung and vectors.shape == (2, 2)
    finally:
        backend.close()


def test_a_load_failure_in_the_worker_is_the_parents() -> None:
    with pytest.raises(FailedPrecondition) as caught:
        WorkerBackend(failing_backend)
    assert caught.value.reason == "NO_WEIGHTS" and "absent.bin" in caught.value.message


def test_a_failed_load_in_the_worker_leaves_the_service_load_failed(tmp_path: Path) -> None:
    settings = settings_for_test(
        TextEncoderSettings, backend="tfidf", model=str(tmp_path / "absent.json"), model_worker="process"
    )
    with running_service(TextEncoderService, settings) as runtime:
        assert isinstance(runtime.load_error, FailedPrecondition)
        assert "is not a file" in str(runtime.load_error)
        with pytest.raises(grpc.RpcError) as caught:
            embed(runtime.address, ["coffee"])
    assert error_reason(caught.value) == "LOAD_FAILED"


def test_a_replacement_worker_on_other_model_files_is_refused_for_good(tmp_path: Path) -> None:
    revision = tmp_path / "revision"
    revision.write_text("aaaa")
    backend = WorkerBackend(functools.partial(FileSpaceBackend, str(revision)))
    try:
        revision.write_text("bbbb")  # the mounted model changes under the running encoder
        os.kill(backend.pid, signal.SIGKILL)
        with pytest.raises(Unavailable, match="signal 9"):
            backend.encode(["x"])
        for _ in range(2):  # refused every time, without loading again
            with pytest.raises(Unavailable) as caught:
                backend.encode(["x"])
            assert caught.value.reason == "MODEL_CHANGED" and backend.pid is None
    finally:
        backend.close()
