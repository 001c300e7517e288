"""Python SDK for contentembed: typed results, deadlines by default, no torch.

Example:
    >>> from contentembed.client import Client, TextDocument, NotFoundError
    >>> with Client("127.0.0.1:50051", timeout=5.0) as client:  # doctest: +SKIP
    ...     client.create_collection("products", exist_ok=True)
    ...     client.upsert_documents("products", [TextDocument("p1", "a gooseneck kettle")])
    ...     client.search("products", text="pour-over coffee gear", top_k=5)

``AsyncClient`` (``contentembed.client.aio``) has the same methods as coroutines.
"""

from contentembed.client.aio import AsyncClient
from contentembed.client.client import DEFAULT_TARGET, Client, client_from_env
from contentembed.client.errors import (
    AbortedError,
    AlreadyExistsError,
    ApiError,
    CancelledError,
    DataLossError,
    DeadlineExceededError,
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    OutOfRangeError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
    UnimplementedError,
    UnknownError,
)
from contentembed.client.types import (
    CollectionCreated,
    CollectionInfo,
    DocumentsResult,
    EncoderSpace,
    Hit,
    ImageDocument,
    Promotion,
    SearchResult,
    ShadowReport,
    ShardEndpoint,
    ShardResult,
    StoredDocument,
    TextDocument,
    UpsertResult,
)

__all__ = [
    "DEFAULT_TARGET",
    "AbortedError",
    "AlreadyExistsError",
    "ApiError",
    "AsyncClient",
    "CancelledError",
    "Client",
    "CollectionCreated",
    "CollectionInfo",
    "DataLossError",
    "DeadlineExceededError",
    "EncoderSpace",
    "FailedPreconditionError",
    "DocumentsResult",
    "Hit",
    "ImageDocument",
    "InternalError",
    "InvalidArgumentError",
    "NotFoundError",
    "OutOfRangeError",
    "PermissionDeniedError",
    "Promotion",
    "ResourceExhaustedError",
    "SearchResult",
    "StoredDocument",
    "ShadowReport",
    "ShardEndpoint",
    "ShardResult",
    "TextDocument",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "UnknownError",
    "UpsertResult",
    "client_from_env",
]
