"""Calling other contentembed services: deadlines, channels and error translation.

A downstream failure becomes a domain error that keeps the canonical code and says
which service failed, so the caller's own interceptor maps it back to a status.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, NamedTuple, TypeVar

import grpc

from contentembed.rpc_status import error_reason, is_size_refusal, retry_delay_s
from contentembed.services.common.auth import channel_credentials
from contentembed.services.common.config import ServiceSettings
from contentembed.services.common.errors import (
    Cancelled,
    ContentEmbedError,
    DeadlineExceeded,
    error_for_code,
)
from contentembed.services.common.server import channel_options
from contentembed.services.common.tracing import Tracing, end_client_span_when_done

ResponseT = TypeVar("ResponseT")
ResultT = TypeVar("ResultT")



def remaining_timeout(deadline: float, downstream: str) -> float:
    """Seconds left until ``deadline`` (a time.monotonic() value)."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise DeadlineExceeded(f"deadline passed before calling {downstream}")
    return remaining


def error_from_rpc(error: grpc.RpcError, downstream: str) -> ContentEmbedError:
    code = error.code()  # type: ignore[attr-defined]
    details = error.details() or code.name  # type: ignore[attr-defined]
    reason = error_reason(error) or None
    if reason is None and is_size_refusal(code.name, "", details):
        # gRPC's own refusal of a message over this channel's limit (an answer bigger than
        # this service receives): the request asked for too much, the peer is healthy.
        reason = "ANSWER_TOO_LARGE"
    return error_for_code(code.name, f"{downstream}: {details}", reason, retry_delay_s(error))


class _CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Sequence[tuple[str, str | bytes]] | None
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None


class PresentApiKey(grpc.UnaryUnaryClientInterceptor, grpc.StreamUnaryClientInterceptor):
    """Adds this service's downstream key to every call on a channel (uploads too)."""

    def __init__(self, key: str) -> None:
        self._header = ("x-api-key", key)

    def _with_key(self, client_call_details: grpc.ClientCallDetails) -> _CallDetails:
        return _CallDetails(
            client_call_details.method,
            client_call_details.timeout,
            (*(client_call_details.metadata or ()), self._header),
            client_call_details.credentials,
            client_call_details.wait_for_ready,
            client_call_details.compression,
        )

    def intercept_unary_unary(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        return continuation(self._with_key(client_call_details), request)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):  # type: ignore[no-untyped-def]
        return continuation(self._with_key(client_call_details), request_iterator)


# gRPC reconnects to a peer that went away with exponential backoff, by default up to
# 120 s between attempts, and fails calls fast meanwhile: a shard down for 15 s was
# still skipped by the gateway 12 s after it was SERVING again (tests/e2e/
# test_crash_loop.py). Capped at 1 s, a restarted downstream is used again within about
# a second of opening its port; a refused local connect costs next to nothing.
RECONNECT_BACKOFF = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]
# A black-holed peer (a lost node, a partition: packets vanish, no RST) is noticed only by
# keepalive: without it the connection stays "up" until TCP's retransmission backoff gives
# up, and a shard cut off for 40 s rejoined 14.5 s after its link came back (0.76 s with
# these pings; tests/e2e/test_multihost.py). Pings go out only while calls are in flight;
# the servers accept them that often (server.PING_POLICY).
KEEPALIVE = [
    ("grpc.keepalive_time_ms", 5000),
    ("grpc.keepalive_timeout_ms", 2000),
    ("grpc.keepalive_permit_without_calls", 0),
]
# Calls are spread over every address the name resolves to: behind a headless Kubernetes
# Service (one address per pod) each encoder pod gets its share of the calls, not only the
# pods that happened to take the gateway's one connection. One address: as before.
LOAD_BALANCING = [("grpc.lb_policy_name", "round_robin")]


def open_channel(endpoint: str, settings: ServiceSettings) -> grpc.Channel:
    """A channel to another service, over TLS (mutual when a client certificate is set)
    whenever a downstream CA is configured, presenting --downstream-api-key if set."""
    options = [
        *channel_options(settings.max_message_bytes), *RECONNECT_BACKOFF, *KEEPALIVE,
        *LOAD_BALANCING,
    ]
    if settings.downstream_tls_ca_file is None:
        channel = grpc.insecure_channel(endpoint, options=options)
    else:
        credentials = channel_credentials(
            settings.downstream_tls_ca_file,
            settings.downstream_tls_cert_file,
            settings.downstream_tls_key_file,
        )
        channel = grpc.secure_channel(endpoint, credentials, options=options)
    if settings.downstream_api_key is None:
        return channel
    return grpc.intercept_channel(channel, PresentApiKey(settings.downstream_api_key))


def start_call(
    tracing: Tracing,
    multi_callable: grpc.UnaryUnaryMultiCallable,
    full_method: str,
    request: Any,
    timeout: float,
    peer: str,
    attributes: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> grpc.Future:
    """Starts a unary call in a CLIENT span that carries the current trace context.

    The span is made here, on the caller's thread, where the request's context is the
    current one; the call itself completes on gRPC's threads, which end the span, so
    the context never has to be found again there."""
    span, metadata = tracing.start_client_call(full_method, peer, attributes)
    try:
        future = multi_callable.future(request, timeout=timeout, metadata=metadata or None, **kwargs)
    except BaseException:
        if span is not None:
            span.end()
        raise
    end_client_span_when_done(span, future)
    return future


class PendingCall(Generic[ResponseT, ResultT]):
    """A started unary call; ``result()`` converts the response or raises a domain error."""

    def __init__(
        self,
        future: grpc.Future,
        convert: Callable[[ResponseT], ResultT],
        downstream: str,
    ) -> None:
        self._future = future
        self._convert = convert
        self.downstream = downstream
        self.started = time.perf_counter()
        self.finished: float | None = None

    def result(self) -> ResultT:
        try:
            response = self._future.result()
        except grpc.FutureCancelledError:
            raise Cancelled(f"call to {self.downstream} was cancelled") from None
        except grpc.RpcError as error:
            raise error_from_rpc(error, self.downstream) from None
        finally:
            self.finished = time.perf_counter()
        return self._convert(response)

    @property
    def latency_ms(self) -> float:
        end = self.finished if self.finished is not None else time.perf_counter()
        return (end - self.started) * 1000.0

    def cancel(self) -> None:
        self._future.cancel()

    def add_done_callback(self, callback: Callable[[PendingCall[ResponseT, ResultT]], None]) -> None:
        """``callback(self)`` once the call has ended (at once if it has), on a gRPC
        thread: it must not block."""
        self._future.add_done_callback(lambda _: callback(self))


def outcomes_of_all(
    calls: Sequence[PendingCall[object, ResultT]],
) -> list[ResultT | ContentEmbedError]:
    """Waits for every call; each result or its failure, in call order."""
    outcomes: list[ResultT | ContentEmbedError] = []
    for call in calls:
        try:
            outcomes.append(call.result())
        except ContentEmbedError as error:
            outcomes.append(error)
    return outcomes


def results_of_all(calls: Sequence[PendingCall[object, ResultT]]) -> list[ResultT]:
    """Waits for every call, then raises the first failure (if any) in call order."""
    outcomes = outcomes_of_all(calls)
    for outcome in outcomes:
        if isinstance(outcome, ContentEmbedError):
            raise outcome
    return outcomes  # type: ignore[return-value]
