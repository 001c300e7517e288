"""The one interceptor that maps domain errors to canonical gRPC codes and records
RPC metrics. Nothing escapes a contentembed handler as UNKNOWN."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from contentembed.services.common.errors import ERROR_DOMAIN, ContentEmbedError
from contentembed.services.common.metrics import RpcMetrics

log = logging.getLogger(__name__)

# Only our own services: health and reflection have their own status conventions.
OWN_METHOD_PREFIX = "/contentembed."


def status_for_error(error: ContentEmbedError) -> status_pb2.Status:
    info = any_pb2.Any()
    info.Pack(
        error_details_pb2.ErrorInfo(
            reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata
        )
    )
    details = [info]
    if error.retry_after_s is not None:
        retry = any_pb2.Any()
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(error.retry_after_s * 1e9))
        retry.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        details.append(retry)
    return status_pb2.Status(
        code=code_pb2.Code.Value(error.code), message=error.message, details=details
    )


class ErrorMappingInterceptor(grpc.ServerInterceptor):
    def __init__(self, metrics: RpcMetrics) -> None:
        self._metrics = metrics

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or handler.unary_unary is None or not method.startswith(
            OWN_METHOD_PREFIX
        ):
            return handler
        behavior = handler.unary_unary
        short_method = method.rsplit("/", 1)[-1]

        def mapped(request: Any, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            code = "OK"
            try:
                return behavior(request, context)
            except ContentEmbedError as error:
                code = error.code
                log.info(
                    "rpc failed",
                    extra={"method": short_method, "code": code, "error": error.message},
                )
                context.abort_with_status(rpc_status.to_status(status_for_error(error)))
            except Exception:
                code = "INTERNAL"
                log.exception("unexpected error", extra={"method": short_method})
                context.abort_with_status(
                    rpc_status.to_status(
                        status_for_error(
                            ContentEmbedError(
                                f"internal error in {short_method}; the server logged the cause"
                            )
                        )
                    )
                )
            finally:
                self._metrics.observe(short_method, code, time.perf_counter() - started)

        return grpc.unary_unary_rpc_method_handler(
            mapped,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
