"""Shared fixtures: real services on port 0, in this process."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@contextmanager
def running_service(
    service_cls: Callable[[Any, CollectorRegistry], Any],
    settings: Any,
    load_timeout: float = 120.0,
    span_exporter: Any = None,
) -> Iterator[Any]:
    """Starts a service through the shared runtime on port 0 and stops it afterwards;
    ``span_exporter`` receives the spans of its runtime."""
    from contentembed.services.common.server import ServiceRuntime

    registry = CollectorRegistry()
    runtime = ServiceRuntime(service_cls(settings, registry), settings, registry, span_exporter)
    runtime.start()
    try:
        assert runtime.wait_until_loaded(load_timeout), "service did not finish loading"
        yield runtime
    finally:
        runtime.stop(grace=0.5)


@pytest.fixture
def channel_to() -> Iterator[Callable[[str], grpc.Channel]]:
    channels: list[grpc.Channel] = []

    def open_channel(address: str) -> grpc.Channel:
        channel = grpc.insecure_channel(address)
        channels.append(channel)
        return channel

    yield open_channel
    for channel in channels:
        channel.close()


def settings_for_test(settings_cls: type, **overrides: Any) -> Any:
    """Validated settings on loopback with free ports (init values win over environment)."""
    base = {"host": "127.0.0.1", "port": 0, "metrics_port": 0, "shutdown_grace_s": 0.5}
    return settings_cls(**{**base, **overrides})


def error_reason(error: grpc.RpcError) -> str:
    from contentembed.rpc_status import error_reason as reason_of

    reason = reason_of(error)
    assert reason, f"error carries no google.rpc.Status with ErrorInfo: {error}"
    return reason
