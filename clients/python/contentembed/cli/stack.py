"""Starts the services as local processes, the way ``contentembed up`` runs them.

One process per service on loopback, logs to files, ports reported through port
files (so port 0 works), health polled until every service is SERVING.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

HOST = "127.0.0.1"


class StackError(RuntimeError):
    pass


@dataclass
class ServiceProcess:
    name: str
    module: str
    args: list[str]
    run_dir: Path
    process: subprocess.Popen[bytes] | None = None
    port: int = 0
    metrics_port: int | None = None
    pid: int = 0

    @property
    def log_path(self) -> Path:
        return self.run_dir / "logs" / f"{self.name}.log"

    @property
    def port_file(self) -> Path:
        return self.run_dir / "ports" / f"{self.name}.json"

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def start(self, env: dict[str, str]) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.port_file.unlink(missing_ok=True)
        command = [
            sys.executable, "-m", self.module, *self.args,
            "--host", HOST, "--port-file", str(self.port_file),
        ]
        with self.log_path.open("ab") as log:
            # A session of its own: Ctrl-C reaches the launcher, which stops the
            # services in order (gateway first) instead of all at once.
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self.pid = self.process.pid

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise StackError(
                f"{self.name} exited with code {self.process.returncode}; "
                f"last lines of {self.log_path}:\n{self.log_tail()}"
            )

    def wait_for_port(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            self.check_alive()
            if self.port_file.exists():
                ports = json.loads(self.port_file.read_text())
                self.port, self.metrics_port = ports["port"], ports["metrics_port"]
                return
            time.sleep(0.05)
        raise StackError(f"{self.name} did not open its port in time; log: {self.log_path}")

    def wait_until_serving(self, deadline: float) -> None:
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                self.check_alive()
                try:
                    status = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0).status
                    if status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.2)
        raise StackError(f"{self.name} was not SERVING in time; last log lines:\n{self.log_tail()}")

    def stop(self, timeout: float) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclass
class LocalStack:
    """text-encoder + image-encoder + N index shards + gateway. Port 0: any free port."""

    run_dir: Path
    shard_count: int = 2
    gateway_port: int = 0
    encoder_port: int = 0
    index_base_port: int = 0
    metrics_base_port: int = 0
    text_model: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    services: list[ServiceProcess] = field(default_factory=list)

    def _port(self, base: int, offset: int) -> str:
        return str(base + offset if base else 0)

    def _metrics(self, offset: int) -> list[str]:
        return ["--metrics-port", self._port(self.metrics_base_port, offset)]

    @property
    def gateway(self) -> ServiceProcess:
        return self.services[-1]

    @property
    def gateway_address(self) -> str:
        return self.gateway.address

    def start(self, timeout: float = 300.0) -> None:
        if self.shard_count < 1:
            raise StackError("at least one index shard is needed")
        deadline = time.monotonic() + timeout
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **self.extra_env}
        encoder_args = ["--port", self._port(self.encoder_port, 0), *self._metrics(1)]
        if self.text_model:
            encoder_args += ["--model", self.text_model]
        image_args = ["--port", self._port(self.encoder_port, 1), *self._metrics(2)]
        encoders = [
            ServiceProcess("text-encoder", "contentembed.services.text_encoder", encoder_args, self.run_dir),
            # The pixels baseline needs no weights; --backend clip with a mounted CLIP
            # directory puts text and images in one space.
            ServiceProcess("image-encoder", "contentembed.services.image_encoder", image_args, self.run_dir),
        ]
        backends = list(encoders)
        for shard in range(self.shard_count):
            backends.append(
                ServiceProcess(
                    f"index-{shard}",
                    "contentembed.services.index",
                    [
                        "--port", self._port(self.index_base_port, shard),
                        *self._metrics(3 + shard),
                        "--shard-index", str(shard),
                        "--shard-count", str(self.shard_count),
                        # Durable by default: what was ingested is there after a restart.
                        # Keyed by the shard count too: ids hash to other shards when it changes.
                        "--data-dir",
                        str(self.run_dir / "data" / f"{self.shard_count}-shards" / f"index-{shard}"),
                    ],
                    self.run_dir,
                )
            )
        self.services = list(backends)
        try:
            for service in backends:
                service.start(env)
            for service in backends:
                service.wait_for_port(deadline)
            gateway = ServiceProcess(
                "gateway",
                "contentembed.services.gateway",
                [
                    "--port", self._port(self.gateway_port, 0),
                    *self._metrics(0),
                    "--encoder-endpoints", ",".join(e.address for e in encoders),
                    "--index-endpoints", ",".join(s.address for s in backends[len(encoders):]),
                ],
                self.run_dir,
            )
            self.services.append(gateway)
            gateway.start(env)
            gateway.wait_for_port(deadline)
            for service in self.services:
                service.wait_until_serving(deadline)
        except BaseException:
            self.stop()
            raise

    def check_alive(self) -> None:
        for service in self.services:
            service.check_alive()

    def stop(self, timeout: float = 20.0) -> None:
        """Gateway first, so no new query reaches a shard that is going away."""
        for service in reversed(self.services):
            service.stop(timeout)

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
