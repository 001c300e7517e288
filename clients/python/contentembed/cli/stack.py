"""Starts the services as local processes, the way ``contentembed up`` runs them.

One process per service on loopback, logs to files, ports reported through port
files (so port 0 works), health polled until every service is SERVING; afterwards
``LocalStack.poll`` restarts a service that exited, on the port it had.

Children must not outlive the launcher. On Linux each child asks the kernel for SIGTERM
when its parent goes away (PR_SET_PDEATHSIG), which covers a SIGKILLed launcher. The
kernel sends it when the *thread* that forked the child exits, not the process: every
child, restarts included, must therefore be spawned from a thread that lives as long as
the launcher (``contentembed up`` spawns them all from its main thread). A child spawned
from any other thread (a test's helper thread, a supervisor someone runs in a worker)
does not ask for the signal: it would be stopped as soon as that thread ended, which a
crash-loop test found the hard way. Elsewhere (macOS, BSD) there is no such request; children then outlive a SIGKILLed
launcher, and only the signal-driven ordered stop ends them.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

HOST = "127.0.0.1"
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


class StackError(RuntimeError):
    pass


def die_with_launcher() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGTERM when the launcher dies; None
    where the platform has no such request (see the module docstring for the thread
    caveat)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    launcher_pid = os.getpid()  # before the fork: in the child getpid() is the child
    sigterm = int(signal.SIGTERM)

    def in_child() -> None:
        # Runs between fork and exec in a copy of a threaded process: two system calls and
        # nothing that could wait for a lock some other thread held at the fork.
        prctl(PR_SET_PDEATHSIG, sigterm, 0, 0, 0)
        if os.getppid() != launcher_pid:
            # The launcher died before prctl ran, so no signal will ever come: go now.
            os._exit(1)

    return in_child


def port_is_free(port: int) -> bool:
    """True when ``port`` can be bound on loopback now. SO_REUSEADDR like the services
    (gRPC and the metrics server), so a port in TIME_WAIT counts as free; without
    SO_REUSEPORT, so a gRPC server (which sets it) still counts as taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports that are free now."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((HOST, 0))
            port = probe.getsockname()[1]
        if port not in ports and port_is_free(port):
            ports.append(port)
    return ports


def with_option(args: list[str], flag: str, value: str) -> list[str]:
    """``args`` with ``flag``'s value replaced (or the flag appended)."""
    if flag in args:
        position = args.index(flag) + 1
        return [*args[:position], value, *args[position + 1:]]
    return [*args, flag, value]


@dataclass
class RestartBudget:
    """At most ``limit`` restarts within any ``window_s`` seconds."""

    limit: int
    window_s: float
    times: deque[float] = field(default_factory=deque)

    def spend(self, now: float) -> int | None:
        """Records a restart and returns its number within the window, or None when
        the budget is used up."""
        while self.times and now - self.times[0] > self.window_s:
            self.times.popleft()
        if len(self.times) >= self.limit:
            return None
        self.times.append(now)
        return len(self.times)


@dataclass(frozen=True)
class StackEvent:
    """Something supervision did, worth a line on the operator's terminal."""

    service: str
    text: str
    restarted: bool = False

    def __str__(self) -> str:
        return self.text


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
    # Where it listens and is reached; ``launcher`` goes before the interpreter on its
    # command line (a test runs a service in a network namespace of its own with
    # ["ip", "netns", "exec", NAME], which execs it: the pid is still the service's).
    host: str = HOST
    launcher: list[str] = field(default_factory=list)

    @property
    def log_path(self) -> Path:
        return self.run_dir / "logs" / f"{self.name}.log"

    @property
    def port_file(self) -> Path:
        return self.run_dir / "ports" / f"{self.name}.json"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def returncode(self) -> int | None:
        """The exit status once the process ended (negative: killed by that signal)."""
        return None if self.process is None else self.process.poll()

    def start(self, env: dict[str, str]) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.port_file.unlink(missing_ok=True)
        command = [
            *self.launcher, sys.executable, "-m", self.module, *self.args,
            "--host", self.host, "--port-file", str(self.port_file),
        ]
        with self.log_path.open("ab") as log:
            # A session of its own: Ctrl-C reaches the launcher, which stops the
            # services in order (gateway first) instead of all at once.
            self.process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=(
                    die_with_launcher()
                    if threading.current_thread() is threading.main_thread()
                    else None
                ),
            )
        self.pid = self.process.pid

    def restart(self, env: dict[str, str]) -> None:
        """Starts it again on the ports it had bound, so the endpoints the gateway was
        given (and metric scrape targets) stay valid when they were picked with port 0."""
        if self.port:
            self.args = with_option(self.args, "--port", str(self.port))
        if self.metrics_port:
            self.args = with_option(self.args, "--metrics-port", str(self.metrics_port))
        self.start(env)

    def is_serving(self, timeout: float = 0.5) -> bool:
        """One health check, without waiting: False while it is still starting."""
        with grpc.insecure_channel(self.address) as channel:
            try:
                response = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=timeout
                )
            except grpc.RpcError:
                return False
        return response.status == health_pb2.HealthCheckResponse.SERVING

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

    def load_failed(self) -> bool:
        """True once the service reports a failed load (it then stays alive, never
        SERVING): waiting longer would not help. Read from its /metrics, when it has one."""
        if not self.metrics_port or self.metrics_port < 0:
            return False
        url = f"http://{self.host}:{self.metrics_port}/metrics"  # plain http on loopback
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:  # nosec B310
                text = response.read().decode()
        except OSError:
            return False
        return any(
            line.startswith("contentembed_service_state{")
            and 'contentembed_service_state="load_failed"' in line
            and line.endswith(" 1.0")
            for line in text.splitlines()
        )

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
                if self.load_failed():
                    raise StackError(
                        f"{self.name} failed to load and will not serve; last log lines:\n"
                        f"{self.log_tail()}"
                    )
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
    """text-encoder + image-encoder + N index shards + gateway. Port 0: any free port.

    After ``start``, call ``poll`` regularly from the thread that called ``start`` (see
    the module docstring on why that thread matters): it restarts a service that exited,
    at most ``max_restarts`` times within ``restart_window_s`` seconds per service.
    """

    run_dir: Path
    shard_count: int = 2
    # Replicas per shard: each shard a replica group (a lease file in the run directory
    # decides its primary). Replica 0 keeps the data directory of an unreplicated shard.
    replicas: int = 1
    gateway_port: int = 0
    encoder_port: int = 0
    index_base_port: int = 0
    metrics_base_port: int = 0
    text_model: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    services: list[ServiceProcess] = field(default_factory=list)
    max_restarts: int = 5
    restart_window_s: float = 60.0
    # Wraps every spawn. ``contentembed up`` passes StopSignals.held, so that a stop
    # signal never unwinds between starting a child and recording it.
    spawn_guard: Callable[[], AbstractContextManager[object]] = nullcontext
    _budgets: dict[str, RestartBudget] = field(default_factory=dict, repr=False)
    _recovering: set[str] = field(default_factory=set, repr=False)
    _stopped: bool = field(default=False, repr=False)

    def _port(self, base: int, offset: int) -> int:
        return base + offset if base else 0

    def configured_ports(self) -> dict[str, tuple[int, int]]:
        """Each service's (gRPC, metrics) port as configured; 0 lets it pick a free one."""
        metrics = self.metrics_base_port
        ports = {
            "gateway": (self.gateway_port, self._port(metrics, 0)),
            "text-encoder": (self._port(self.encoder_port, 0), self._port(metrics, 1)),
            "image-encoder": (self._port(self.encoder_port, 1), self._port(metrics, 2)),
        }
        for shard, replica, name in self.index_processes():
            offset = shard * self.replicas + replica
            ports[name] = (self._port(self.index_base_port, offset), self._port(metrics, 3 + offset))
        return ports

    def index_processes(self) -> list[tuple[int, int, str]]:
        """(shard, replica, process name) of every index process, in shard order."""
        return [
            (shard, replica, f"index-{shard}" if self.replicas == 1 else f"index-{shard}-{replica}")
            for shard in range(self.shard_count) for replica in range(self.replicas)
        ]

    def check_ports_free(self) -> None:
        """Raises StackError naming every fixed port that is taken (or wanted twice).

        A gRPC server binds with SO_REUSEPORT, so a service would share a port with a
        leftover one instead of failing; checking first is what keeps a new stack from
        quietly splitting traffic with an old one."""
        owners: dict[int, str] = {}
        problems: list[str] = []
        for name, (grpc_port, metrics_port) in self.configured_ports().items():
            for port, kind in ((grpc_port, "gRPC"), (metrics_port, "metrics")):
                if port <= 0:
                    continue
                wanted_by = f"{name} {kind}"
                if port in owners:
                    problems.append(f"port {port} is wanted by both {owners[port]} and {wanted_by}")
                    continue
                owners[port] = wanted_by
                if not port_is_free(port):
                    problems.append(f"port {HOST}:{port} ({wanted_by}) is already in use")
        if problems:
            raise StackError(
                "\n".join(problems) + "\nnothing was started (is another `contentembed up` "
                "still running? `ss -ltnp` shows who holds a port)"
            )

    @property
    def gateway(self) -> ServiceProcess:
        return self.services[-1]

    @property
    def gateway_address(self) -> str:
        return self.gateway.address

    def child_env(self) -> dict[str, str]:
        return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **self.extra_env}

    def _spawn(self, service: ServiceProcess, restart: bool = False) -> None:
        with self.spawn_guard():
            if restart:
                service.restart(self.child_env())
            else:
                service.start(self.child_env())

    def start(self, timeout: float = 300.0) -> None:
        if self.shard_count < 1 or self.replicas < 1:
            raise StackError("at least one index shard, of at least one replica, is needed")
        self.check_ports_free()
        self._stopped = False
        deadline = time.monotonic() + timeout
        ports = self.configured_ports()

        def port_args(name: str) -> list[str]:
            grpc_port, metrics_port = ports[name]
            return ["--port", str(grpc_port), "--metrics-port", str(metrics_port)]

        encoder_args = port_args("text-encoder")
        if self.text_model:
            encoder_args += ["--model", self.text_model]
        image_args = port_args("image-encoder")
        encoders = [
            ServiceProcess("text-encoder", "contentembed.services.text_encoder", encoder_args, self.run_dir),
            # The pixels baseline needs no weights; --backend clip with a mounted CLIP
            # directory puts text and images in one space.
            ServiceProcess("image-encoder", "contentembed.services.image_encoder", image_args, self.run_dir),
        ]
        backends = list(encoders)
        if self.replicas > 1 and not self.index_base_port:
            # Each replica is told the others' addresses before any of them listens.
            for name, port in zip([n for _, _, n in self.index_processes()],
                                  free_ports(self.shard_count * self.replicas)):
                ports[name] = (port, ports[name][1])
        data = self.run_dir / "data" / f"{self.shard_count}-shards"
        for shard, replica, name in self.index_processes():
            args = [
                *port_args(name),
                "--shard-index", str(shard),
                "--shard-count", str(self.shard_count),
                # Durable by default: what was ingested is there after a restart.
                # Keyed by the shard count too: ids hash to other shards when it changes.
                "--data-dir", str(data / (f"index-{shard}" if replica == 0 else name)),
            ]
            if self.replicas > 1:
                peers = [f"{other}={HOST}:{ports[other_name][0]}"
                         for s, other, other_name in self.index_processes()
                         if s == shard and other != replica]
                args += ["--replica-id", str(replica), "--replica-peers", ",".join(peers),
                         "--replica-lease-file", str(data / f"lease-{shard}.json")]
            backends.append(ServiceProcess(name, "contentembed.services.index", args, self.run_dir))
        self.services = list(backends)
        try:
            for service in backends:
                self._spawn(service)
            for service in backends:
                service.wait_for_port(deadline)
            gateway = ServiceProcess(
                "gateway",
                "contentembed.services.gateway",
                [
                    *port_args("gateway"),
                    "--encoder-endpoints", ",".join(e.address for e in encoders),
                    "--index-endpoints", self.index_endpoints(backends[len(encoders):]),
                ],
                self.run_dir,
            )
            self.services.append(gateway)
            self._spawn(gateway)
            gateway.wait_for_port(deadline)
            for service in self.services:
                service.wait_until_serving(deadline)
        except BaseException:
            self.stop()
            raise

    def index_endpoints(self, shards: list[ServiceProcess]) -> str:
        """The gateway's --index-endpoints: shards in order, a shard's replicas joined by |."""
        return ",".join(
            "|".join(process.address for process in shards[first:first + self.replicas])
            for first in range(0, len(shards), self.replicas)
        )

    def check_alive(self) -> None:
        for service in self.services:
            service.check_alive()

    def poll(self) -> list[StackEvent]:
        """One supervision step: restarts each service that exited (the launcher did not
        ask it to) and reports those that are SERVING again. Raises StackError, with the
        service's last log lines, once a service used up its restarts; the caller then
        stops the stack."""
        if self._stopped:
            return []  # what exits now was stopped on purpose
        events: list[StackEvent] = []
        for service in self.services:
            code = service.returncode
            if code is None:
                if service.name in self._recovering and service.is_serving(timeout=0.2):
                    self._recovering.discard(service.name)
                    events.append(StackEvent(
                        service.name, f"{service.name} is SERVING again on {service.address}"
                    ))
                continue
            budget = self._budgets.setdefault(
                service.name, RestartBudget(self.max_restarts, self.restart_window_s)
            )
            attempt = budget.spend(time.monotonic())
            if attempt is None:
                raise StackError(
                    f"{service.name} exited with code {code} again; its restart budget "
                    f"({self.max_restarts} per {self.restart_window_s:g} s) is used up, giving up. "
                    f"Last lines of {service.log_path}:\n{service.log_tail()}"
                )
            self._spawn(service, restart=True)
            self._recovering.add(service.name)
            events.append(StackEvent(
                service.name,
                f"{service.name} exited with code {code}; restarting "
                f"({attempt} of {self.max_restarts}) on {service.address}, pid {service.pid}",
                restarted=True,
            ))
        return events

    def stop(self, timeout: float = 20.0) -> None:
        """Gateway first, so no new query reaches a shard that is going away; then the
        shards, then the encoders. Each gets SIGTERM, ``timeout`` seconds to drain (the
        services' own grace is 10 s), then SIGKILL."""
        self._stopped = True
        for service in reversed(self.services):
            service.stop(timeout)

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
