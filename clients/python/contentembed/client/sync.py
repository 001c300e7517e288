"""Compatibility module: the SDK's names where they were before the split.

New code imports from :mod:`contentembed.client` (or ``client.client``, ``client.errors``,
``client.types``); the status helpers live in :mod:`contentembed.rpc_status`.
"""

from __future__ import annotations

from contentembed.client._protocol import MODALITIES, MODALITY_NAMES
from contentembed.client.client import (
    DEFAULT_TARGET,
    DEFAULT_TIMEOUT_S,
    MAX_MESSAGE_BYTES,
    Client,
    channel_from_env,
    client_from_env,
    open_channel,
    trace_headers,
)
from contentembed.client.errors import ApiError
from contentembed.client.types import (
    CollectionInfo,
    EncoderSpace,
    Hit,
    SearchResult,
    ShadowReport,
    ShardEndpoint,
    ShardResult,
)
from contentembed.rpc_status import call_status, error_reason, retry_delay_s

__all__ = [
    "DEFAULT_TARGET",
    "DEFAULT_TIMEOUT_S",
    "MAX_MESSAGE_BYTES",
    "MODALITIES",
    "MODALITY_NAMES",
    "ApiError",
    "Client",
    "CollectionInfo",
    "EncoderSpace",
    "Hit",
    "SearchResult",
    "ShadowReport",
    "ShardEndpoint",
    "ShardResult",
    "call_status",
    "channel_from_env",
    "client_from_env",
    "error_reason",
    "open_channel",
    "retry_delay_s",
    "trace_headers",
]
