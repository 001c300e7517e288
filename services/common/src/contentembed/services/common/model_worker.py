"""The model in its own process (``--model-worker process``), off the RPC handlers' GIL.

In one process, every gRPC handler thread and the model's Python side (tokenizing,
sentence-transformers' bookkeeping, one kernel launch per torch op) take turns on one
GIL. ``WorkerBackend`` runs the real backend in a child process and forwards
``encode``/``check`` to it over a socket pair, one batch per round trip: the batcher,
deadlines and the RPC edge are unchanged.

What it buys, measured (docs/benchmarks.md): isolation, not throughput. A model that
crashes, is OOM-killed or hangs costs one batch and is replaced, while the encoder keeps
answering. Throughput with 32 single-text callers was the same as with the model in a
thread, on 2 CPU cores and on an H100, where the worker's own timing showed its small
batches slowing under RPC load although no RPC thread shares its GIL. It is therefore
not the default.

Why a pipe and not shared memory: a batch crosses it twice, as the inputs (texts, or
decoded images of at most ``max_decoded_side`` pixels a side) and as ``n x dim`` float32
vectors back. For 64 texts that is some 50 KB each way: the boundary measured 0.4-0.6 ms
a batch (bench/bench_model_worker.py), against model calls of 10 ms and more.

Process lifecycle, each case deliberate:
- The child is *spawned* (never forked): the parent runs gRPC threads, and a fork would
  copy their locks in whatever state they were in.
- The child loads the model and reports the backend's name, space and token limit, or the
  load error, which the parent raises as its own ``load()`` failure (the runtime's
  LOAD_FAILED policy then applies unchanged).
- The parent going away, even by SIGKILL, closes the pipe; the child's next read ends, and
  it exits. It ignores SIGINT and SIGTERM: a Ctrl-C or a pod's SIGTERM reaches the whole
  process group, and the parent must be the one to drain and then stop it.
- The child dying (the kernel's OOM killer, a driver fault) fails the batch in flight with
  UNAVAILABLE (reason MODEL_WORKER_EXITED, with a retry delay) and the next batch starts a
  new child first. A child that does not answer within ``batch_timeout_s`` is killed and
  treated the same way: a hung GPU call must not hold every queued caller forever.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler
from typing import Any, Generic, TypeVar

from contentembed.services.common.errors import Unavailable
from contentembed.services.common.models import EmbeddingBackend, Embeddings
from contentembed.services.common.spaces import Space

log = logging.getLogger(__name__)

InputT = TypeVar("InputT")

# How long a fresh child may take to import torch and load its model.
DEFAULT_LOAD_TIMEOUT_S = 600.0
# A model call that takes longer than this is taken for hung; the child is replaced.
DEFAULT_BATCH_TIMEOUT_S = 120.0
# What a caller whose batch was lost is told to wait before retrying: about a model load.
RESTART_RETRY_S = 5.0
STOP_GRACE_S = 10.0


@dataclass(frozen=True)
class _Loaded:
    name: str
    space: Space
    max_input_tokens: int
    checks_inputs: bool


def _child(conn: Connection) -> None:
    """The child's whole life: load, then answer one request at a time until EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        factory, torch_threads = conn.recv()
        if torch_threads:
            import torch

            torch.set_num_threads(torch_threads)
        backend = factory()
        checks = type(backend).check is not EmbeddingBackend.check
        conn.send(("ok", _Loaded(backend.name, backend.space, backend.max_input_tokens, checks)))
    except BaseException as error:  # noqa: BLE001 - the parent reports any load failure
        conn.send(("error", _portable(error)))
        return
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if request is None:
            return
        operation, inputs = request
        try:
            if operation == "encode":
                started = time.perf_counter()
                embeddings = backend.encode(inputs)
                reply: tuple[Any, ...] = (
                    "ok", embeddings.vectors, embeddings.truncated, time.perf_counter() - started
                )
            else:
                backend.check(inputs)
                reply = ("ok",)
        except BaseException as error:  # noqa: BLE001 - the parent raises it for the batch
            reply = ("error", _portable(error))
        try:
            conn.send(reply)
        except (BrokenPipeError, OSError):
            return


def _portable(error: BaseException) -> BaseException:
    """The error itself when it survives the pipe's pickling (ours do), else its text."""
    try:
        # The pickler the Connection itself uses; the round trip is of our own object.
        ForkingPickler.loads(ForkingPickler.dumps(error))
        return error
    except Exception:  # noqa: BLE001 - any unpicklable error is reported by its text
        return RuntimeError(f"{type(error).__name__}: {error}")


class WorkerBackend(EmbeddingBackend[InputT], Generic[InputT]):
    """An ``EmbeddingBackend`` whose model runs in a child process.

    ``factory`` builds the real backend in the child; it must be picklable (a module-level
    function, or a ``functools.partial`` of one with plain arguments). Calls are one at a
    time (a lock around each round trip): the batcher sends one batch at a time anyway,
    and ``check`` is only forwarded for backends that define one (TF-IDF's vocabulary).
    """

    def __init__(
        self,
        factory: Callable[[], EmbeddingBackend[InputT]],
        *,
        torch_threads: int = 0,
        load_timeout_s: float = DEFAULT_LOAD_TIMEOUT_S,
        batch_timeout_s: float = DEFAULT_BATCH_TIMEOUT_S,
        on_restart: Callable[[], None] | None = None,
        on_encoded: Callable[[float], None] | None = None,
    ) -> None:
        """``on_encoded`` gets the model time of each batch as the child measured it: the
        batcher's own timing minus it is what the process boundary costs."""
        self._factory = factory
        self._torch_threads = torch_threads
        self._load_timeout_s = load_timeout_s
        self._batch_timeout_s = batch_timeout_s
        self._on_restart = on_restart or (lambda: None)
        self._on_encoded = on_encoded or (lambda seconds: None)
        self._lock = threading.Lock()
        self._closed = False
        self._process: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._space: Space | None = None  # set by the first load; every restart must match
        self._changed: Unavailable | None = None  # a restart found other model files
        loaded = self._start()
        self._space = loaded.space
        self.name = loaded.name
        self.space = loaded.space
        self.max_input_tokens = loaded.max_input_tokens
        self._checks_inputs = loaded.checks_inputs

    @property
    def pid(self) -> int | None:
        """The child's process id (None between a crash and its replacement)."""
        return self._process.pid if self._process is not None else None

    def _start(self) -> _Loaded:
        # A fresh interpreter running this module, not multiprocessing's spawn: spawn
        # re-imports the parent's main script in the child, which breaks (or reruns) any
        # program that embeds the service without a __main__ guard.
        parent_socket, child_socket = socket.socketpair()
        with child_socket:
            process = subprocess.Popen(
                [sys.executable, "-m", __name__, str(child_socket.fileno())],
                pass_fds=(child_socket.fileno(),),
                # The parent's import path, so the child finds the same code (tests, -m runs).
                env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
            )
        # Only the child holds its end now: the child's exit reads as EOF here.
        parent_end = Connection(parent_socket.detach())
        try:
            parent_end.send((self._factory, self._torch_threads))
            if not parent_end.poll(self._load_timeout_s):
                raise TimeoutError(f"the model worker did not load within {self._load_timeout_s:.0f} s")
            status, payload = parent_end.recv()
            if status != "ok":
                raise payload
            if self._space is not None and payload.space != self._space:
                # Same files, same space; anything else would mix two models' vectors.
                raise Unavailable(
                    f"the restarted model worker loaded space {payload.space.space_id}, not "
                    f"{self._space.space_id}; the model files changed under a running encoder",
                    reason="MODEL_CHANGED",
                )
        except BaseException:
            process.kill()
            process.wait()
            parent_end.close()
            raise
        self._process, self._conn = process, parent_end
        log.info("model worker loaded", extra={"pid": process.pid, "backend": payload.name})
        return payload

    def _call(self, request: tuple[str, list[InputT]]) -> tuple[Any, ...]:
        with self._lock:
            if self._closed:
                raise Unavailable("shutting down", reason="SHUTTING_DOWN")
            if self._changed is not None:  # reloading again would find the same files
                raise self._changed
            if self._conn is None:  # the last child died: replace it before this batch
                self._restart()
            assert self._conn is not None
            try:
                self._conn.send(request)
                if not self._conn.poll(self._batch_timeout_s):
                    raise TimeoutError
                reply = self._conn.recv()
            except (EOFError, OSError, TimeoutError) as error:
                raise self._lost(error) from None
        if reply[0] == "error":
            raise reply[1]
        return reply

    def _lost(self, error: BaseException) -> Unavailable:
        """The child died or hung: reap it, and tell this batch's callers to retry."""
        assert self._process is not None
        hung = isinstance(error, TimeoutError)
        if hung:
            self._process.kill()
        try:
            code: int | None = self._process.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:  # the pipe broke but the child lingers
            self._process.kill()
            code = self._process.wait()
        how = (f"did not answer within {self._batch_timeout_s:.0f} s and was killed" if hung
               else f"was killed by signal {-code}" if code is not None and code < 0
               else f"exited with status {code}")
        log.error("model worker lost; the next batch starts a new one",
                  extra={"pid": self._process.pid, "how": how})
        if self._conn is not None:
            self._conn.close()
        self._process, self._conn = None, None
        return Unavailable(
            f"the model worker process {how}; this batch was not computed and a new "
            "worker is starting",
            reason="MODEL_WORKER_EXITED",
            retry_after_s=RESTART_RETRY_S,
        )

    def _restart(self) -> None:
        started = time.monotonic()
        self._on_restart()
        try:
            self._start()
        except Unavailable as error:
            if error.reason == "MODEL_CHANGED":
                self._changed = error
            raise
        log.info("model worker restarted", extra={"seconds": round(time.monotonic() - started, 1)})

    def check(self, inputs: list[InputT]) -> None:
        if self._checks_inputs:
            self._call(("check", inputs))

    def encode(self, inputs: list[InputT]) -> Embeddings:
        _, vectors, truncated, seconds = self._call(("encode", inputs))
        self._on_encoded(seconds)
        return Embeddings(vectors, truncated)

    def close(self) -> None:
        """Asks the child to exit after its current batch; kills it past the grace."""
        self._closed = True
        # A batch still in flight gets the grace period to finish; past it, the child is
        # killed under it (its callers hear UNAVAILABLE).
        idle = self._lock.acquire(timeout=STOP_GRACE_S)
        try:
            process, conn = self._process, self._conn
            if process is None or conn is None:
                return
            if idle:
                try:
                    conn.send(None)
                except (BrokenPipeError, OSError):
                    pass
                try:
                    process.wait(STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    pass
            if process.poll() is None:
                process.kill()
                process.wait()
            conn.close()
        finally:
            if idle:
                self._lock.release()



def main() -> None:
    """The child's entry point: ``python -m ...model_worker FD`` with the socket as FD."""
    _child(Connection(int(sys.argv[1])))


if __name__ == "__main__":
    # Through the module's own name: run as __main__, the classes it sends back would be
    # pickled as __main__._Loaded, which the parent cannot resolve.
    from contentembed.services.common import model_worker

    model_worker.main()
