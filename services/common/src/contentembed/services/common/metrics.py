"""Prometheus metrics on a per-process registry, served on their own HTTP port."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, start_http_server

# Latency buckets from 0.5 ms to 30 s: encoder calls on CPU sit in the 10-100 ms range,
# index calls well under a millisecond.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0
)


class RpcMetrics:
    """RPC latency per method and status code."""

    def __init__(self, registry: CollectorRegistry, service: str) -> None:
        self.service = service
        self.rpc_duration = Histogram(
            "contentembed_rpc_duration_seconds",
            "Server-side RPC latency by method and canonical status code.",
            ["service", "method", "code"],
            registry=registry,
            buckets=LATENCY_BUCKETS,
        )

    def observe(self, method: str, code: str, seconds: float) -> None:
        self.rpc_duration.labels(self.service, method, code).observe(seconds)


class MetricsEndpoint:
    """The /metrics HTTP server; ``port`` is the bound one (useful with port 0)."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self._server, self._thread = start_http_server(port, addr=host, registry=registry)
        self.port: int = self._server.server_port

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
