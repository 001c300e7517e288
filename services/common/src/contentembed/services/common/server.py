"""Server factory and lifecycle shared by all services.

A service supplies its domain part (``Service``); the runtime supplies the rest:
gRPC server with explicit message limits, the one interceptor (API keys, readiness,
admission, error mapping), grpc.health.v1 (NOT_SERVING until ``Service.load`` returns),
server reflection, Prometheus metrics on their own port, structured logs, tracing (spans
over OTLP when ``--otlp-endpoint`` is set) and a graceful SIGTERM (NOT_SERVING, then drain).

Readiness is the runtime's guarantee, not each service's convention: the port opens
first (so probes and launchers see the process), but until ``load()`` has returned every
product call is refused with UNAVAILABLE (reason NOT_READY, with a retry delay). Nothing
a caller sends can run against state that is still being loaded.

Load-failure policy: a service whose ``load()`` raises stays alive and never turns
SERVING. Its product calls answer UNAVAILABLE with reason LOAD_FAILED and the cause (which
names the file or model that failed), the log says the same once, and the metric
``contentembed_service_state`` reads ``load_failed``. Restarting would fail the same way
(a corrupt snapshot, a missing model directory): an operator has to act, and a process
that stays up keeps its logs and metrics readable while readiness probes keep traffic away.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry
from prometheus_client import Enum as EnumMetric

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

from contentembed.services.common.admission import Admission, CountingExecutor
from contentembed.services.common.auth import ApiKeyPolicy, server_credentials
from contentembed.services.common.config import ServiceSettings, load_settings
from contentembed.services.common.errors import Unavailable
from contentembed.services.common.interceptor import RuntimeInterceptor
from contentembed.services.common.logs import configure_logging
from contentembed.services.common.metrics import MetricsEndpoint, RpcMetrics
from contentembed.services.common.tracing import Tracing

log = logging.getLogger(__name__)

SettingsT = TypeVar("SettingsT", bound=ServiceSettings)



# Callers ping every 5 s while their calls run (downstream.KEEPALIVE). A gRPC server by
# default answers pings more often than every 5 minutes without data with too_many_pings
# and closes the connection: a long Embed or an upload would be cut off.
PING_POLICY = [("grpc.http2.min_ping_interval_without_data_ms", 4000)]


def connection_age(max_age_s: float) -> list[tuple[str, int]]:
    """Connections are closed (GOAWAY, calls in flight finish) after ``max_age_s``, so
    clients resolve names again and reach pods added since, e.g. by an autoscaler."""
    return [("grpc.max_connection_age_ms", int(max_age_s * 1000))] if max_age_s > 0 else []


class Service(Protocol):
    """The domain part of a service process."""

    name: str

    def register(self, server: grpc.Server) -> list[str]:
        """Adds servicers to ``server``; returns their full service names."""

    def required_role(self, method: str) -> str | None:
        """The API-key role a full method name needs (auth.SEARCH_ROLE or ADMIN_ROLE);
        None leaves it open. Only consulted when keys are configured."""

    def load(self) -> None:
        """Loads models or data and warms up; health turns SERVING when this returns."""

    def close(self) -> None:
        """Releases resources after the server stopped."""

    # Optional: ``ready() -> bool``, whether a loaded service should take traffic now (an
    # index replica catching up with its primary says no); the health service
    # READINESS_SERVICE follows it, checked every READINESS_PERIOD_S, while "" stays
    # SERVING from the load on (liveness).
    # Optional: ``use_tracing(tracing: Tracing) -> None``. A service that makes spans of
    # its own (the gateway's fan-out, the encoder's batches) takes the runtime's tracer
    # through it, before ``register``; one that does not simply leaves it out.


LOADING, SERVING, LOAD_FAILED, STOPPING = "loading", "serving", "load_failed", "stopping"
# While loading, how long a refused caller is asked to wait before trying again.
NOT_READY_RETRY_S = 1.0
# The health-check service name readiness probes ask: SERVING when the service is loaded
# and (if it says) ready for traffic.
READINESS_SERVICE = "contentembed.readiness"
READINESS_PERIOD_S = 0.5


def channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


# A server receives requests up to this many times --max-message-bytes, so that one over
# the limit reaches the interceptor and is refused there (RESOURCE_EXHAUSTED
# REQUEST_TOO_LARGE, counted) instead of by gRPC (no reason, uncounted).
RECEIVE_SLACK = 2


def server_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", RECEIVE_SLACK * max_message_bytes),
    ]


class ServiceRuntime:
    """Runs one ``Service`` behind a gRPC server; usable in-process (tests) or as a process."""

    def __init__(
        self,
        service: Service,
        settings: ServiceSettings,
        registry: CollectorRegistry,
        span_exporter: SpanExporter | None = None,
    ):
        """``span_exporter`` (tests) receives every span of this runtime as it ends, with
        or without an OTLP endpoint."""
        self.service = service
        self.settings = settings
        self.registry = registry
        self.tracing = Tracing.create(
            service.name, settings.otlp_endpoint, settings.trace_sample_ratio, span_exporter
        )
        use_tracing = getattr(service, "use_tracing", None)
        if use_tracing is not None:
            use_tracing(self.tracing)
        self.health = health.HealthServicer(experimental_non_blocking=True)
        self.port: int = 0
        self.metrics_port: int | None = None
        self.load_error: BaseException | None = None
        self.state_metric = EnumMetric(
            "contentembed_service_state",
            "Lifecycle of the service: loading and load_failed refuse product calls, "
            "serving and stopping (draining) answer them.",
            ["service"],
            states=[LOADING, SERVING, LOAD_FAILED, STOPPING],
            registry=registry,
        ).labels(service.name)
        self._state = LOADING
        self._service_names: list[str] = []
        self._server: grpc.Server | None = None
        self._metrics_endpoint: MetricsEndpoint | None = None
        self._loaded = threading.Event()
        self._stopped = threading.Event()

    @property
    def address(self) -> str:
        return f"{self.settings.host}:{self.port}"

    def start(self) -> None:
        settings = self.settings
        keys = ApiKeyPolicy(settings.api_key_roles, self.service.required_role)
        pool = CountingExecutor(settings.max_workers, thread_name_prefix=f"{self.service.name}-rpc")
        interceptor = RuntimeInterceptor(
            RpcMetrics(self.registry, self.service.name),
            keys,
            self._check_ready,
            Admission(settings.max_workers, settings.max_concurrent_rpcs,
                      settings.max_queue_wait_s, lambda: pool.in_progress,
                      max_streams=settings.max_concurrent_streams),
            self.tracing,
            stream_idle_timeout_s=settings.stream_idle_timeout_s,
            max_request_bytes=settings.max_message_bytes,
        )
        self._server = grpc.server(
            pool,
            interceptors=[interceptor],
            # gRPC binds with SO_REUSEPORT by default: a second server on a port already in
            # use would start "successfully" and share its traffic with the first.
            options=[
                *server_options(settings.max_message_bytes),
                ("grpc.so_reuseport", 0),
                *PING_POLICY,
                *connection_age(settings.max_connection_age_s),
            ],
            # Admission refuses first (with a retry delay, counted); gRPC's own limit, far
            # above it, only bounds what a flood of refused calls waiting for a thread can
            # hold (it refuses without a retry delay).
            maximum_concurrent_rpcs=4 * settings.max_concurrent_rpcs,
        )
        self._service_names = self.service.register(self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        reflection.enable_server_reflection(
            [*self._service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], self._server
        )
        address = f"{settings.host}:{settings.port}"
        if settings.tls_cert_file is not None and settings.tls_key_file is not None:
            credentials = server_credentials(
                settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file
            )
            self.port = self._server.add_secure_port(address, credentials)
        else:
            self.port = self._server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"could not bind {settings.host}:{settings.port}")
        if settings.metrics_port >= 0:
            self._metrics_endpoint = MetricsEndpoint(self.registry, settings.host, settings.metrics_port)
            self.metrics_port = self._metrics_endpoint.port
        self._server.start()
        self._write_port_file()
        log.info(
            "listening",
            extra={
                "address": self.address,
                "metrics_port": self.metrics_port,
                "api_keys": "required" if keys.enabled else "off",
                "tls": "off" if settings.tls_cert_file is None
                else "mutual" if settings.tls_client_ca_file is not None else "on",
                "tracing": settings.otlp_endpoint or "off",
            },
        )
        threading.Thread(target=self._load, name=f"{self.service.name}-load", daemon=True).start()

    @property
    def state(self) -> str:
        return self._state

    def _set_state(self, state: str) -> None:
        self._state = state
        self.state_metric.state(state)

    def _check_ready(self) -> None:
        """The interceptor's readiness gate for product calls."""
        if self._state == LOADING:
            raise Unavailable(
                f"{self.service.name} is still loading; retry shortly",
                reason="NOT_READY",
                retry_after_s=NOT_READY_RETRY_S,
            )
        if self._state == LOAD_FAILED:
            raise Unavailable(
                f"{self.service.name} failed to load and serves nothing: {self.load_error}",
                reason="LOAD_FAILED",
            )

    def _load(self) -> None:
        try:
            self.service.load()
        except BaseException as error:  # noqa: BLE001 - a failed load must never kill the process
            self.load_error = error
            self._set_state(LOAD_FAILED)
            log.exception("load failed; staying NOT_SERVING", extra={"error": str(error)})
        else:
            if not self._stopped.is_set():
                self._set_state(SERVING)
                self._set_health(health_pb2.HealthCheckResponse.SERVING)
                log.info("serving", extra={"services": ",".join(self._service_names)})
                ready = getattr(self.service, "ready", None)
                if ready is not None:
                    self._follow_readiness(ready)
        finally:
            self._loaded.set()

    def wait_until_loaded(self, timeout: float | None = None) -> bool:
        """True once loading finished (successfully or not) within timeout."""
        return self._loaded.wait(timeout)

    def _set_health(self, status: int) -> None:
        self.health.set("", status)
        self.health.set(READINESS_SERVICE, status)
        for name in self._service_names:
            self.health.set(name, status)

    def _follow_readiness(self, ready: Callable[[], bool]) -> None:
        """Keeps READINESS_SERVICE's status on what ``ready`` says until the stop."""
        serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING

        def follow() -> None:
            last = None
            while not self._stopped.wait(READINESS_PERIOD_S):
                try:
                    status = serving if ready() else not_serving
                except Exception:  # noqa: BLE001 - a failing check means not ready
                    log.exception("readiness check failed")
                    status = not_serving
                if status != last:
                    self.health.set(READINESS_SERVICE, status)
                    last = status

        threading.Thread(target=follow, name=f"{self.service.name}-readiness", daemon=True).start()

    def _write_port_file(self) -> None:
        path = self.settings.port_file
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(
            json.dumps({"port": self.port, "metrics_port": self.metrics_port, "pid": os.getpid()})
        )
        os.replace(tmp, path)  # a launcher polling the file never reads half of it

    def stop(self, grace: float | None = None) -> None:
        """NOT_SERVING first (so balancers move away), then drain in-flight calls."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self._state == SERVING:
            # The gate lets calls through while stopping: in-flight and drain-delay calls
            # still run until the server itself stops taking them.
            self._set_state(STOPPING)
        grace = self.settings.shutdown_grace_s if grace is None else grace
        self.health.enter_graceful_shutdown()
        time.sleep(self.settings.drain_delay_s)
        if self._server is not None:
            self._server.stop(grace).wait()
        if self._metrics_endpoint is not None:
            self._metrics_endpoint.close()
        self.service.close()
        # Last: the spans of the drained calls and of close() still go out.
        self.tracing.shutdown()
        log.info("stopped")


def run_service(
    settings_cls: type[SettingsT],
    service_factory: Callable[[SettingsT, CollectorRegistry], Service],
    argv: list[str] | None = None,
) -> int:
    """Process entry point: parse config, start, stop on SIGTERM/SIGINT."""
    settings = load_settings(settings_cls, argv)
    registry = CollectorRegistry()
    service = service_factory(settings, registry)
    configure_logging(service.name, settings.log_level, settings.log_json)
    runtime = ServiceRuntime(service, settings, registry)
    stop_requested = threading.Event()
    received: list[str] = []

    def on_signal(signum: int, _frame: object) -> None:
        # Only set flags here: logging from a signal handler can deadlock on its lock.
        received.append(signal.Signals(signum).name)
        stop_requested.set()

    # Installed before the port opens: a launcher may signal as soon as it sees the port.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    runtime.start()
    stop_requested.wait()
    log.info("signal received, draining", extra={"signal": received[0]})
    runtime.stop()
    return 0
