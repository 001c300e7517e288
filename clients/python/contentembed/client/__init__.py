"""Python SDK for contentembed: typed results, deadlines by default, no torch."""

from contentembed.client.sync import (
    ApiError,
    Client,
    CollectionInfo,
    EncoderSpace,
    Hit,
    SearchResult,
    ShadowReport,
    ShardEndpoint,
    ShardResult,
)

__all__ = [
    "ApiError",
    "Client",
    "CollectionInfo",
    "EncoderSpace",
    "Hit",
    "SearchResult",
    "ShadowReport",
    "ShardEndpoint",
    "ShardResult",
]
