"""Python SDK for contentembed: typed results, deadlines by default, no torch."""

from contentembed.client.sync import (
    ApiError,
    Client,
    CollectionInfo,
    Hit,
    SearchResult,
    ShadowReport,
    ShardResult,
)

__all__ = ["ApiError", "Client", "CollectionInfo", "Hit", "SearchResult", "ShadowReport", "ShardResult"]
