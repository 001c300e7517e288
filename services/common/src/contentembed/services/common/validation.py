"""Request checks shared by the gateway and the index (pure: no grpc)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from contentembed.services.common.errors import InvalidArgument

COLLECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
MAX_ID_BYTES = 256
MAX_SPACE_ID_BYTES = 256
# How much of a caller's string an error message repeats. The status message travels in
# the trailers (percent-encoded, and again inside grpc-status-details-bin), whose limit
# is 8 KiB by default: echoing a long input whole turns a clear INVALID_ARGUMENT into an
# opaque RESOURCE_EXHAUSTED, and it fills logs with whatever the caller chose to send.
SHOWN_CHARS = 64


def shown(value: str, limit: int = SHOWN_CHARS) -> str:
    """repr() of a caller-supplied string for an error message, cut to about ``limit``
    characters with an ellipsis and the original length when it is longer."""
    # Only a prefix is repr()'d: escapes make a repr up to 10x longer than its input.
    text = repr(value[: limit + 1])
    if len(value) <= limit and len(text) <= limit + 2:
        return text
    return f"{text[:limit]}… ({len(value)} characters)"


def validate_collection_name(name: str) -> None:
    if not COLLECTION_NAME.match(name):
        raise InvalidArgument(
            f"collection name {shown(name)} must be 1-64 characters of [A-Za-z0-9_-] "
            "starting with a letter or digit",
            reason="BAD_COLLECTION_NAME",
        )


def validate_space_id(space_id: str) -> None:
    """A space id is stored with a collection and returned with every answer about it."""
    if len(space_id.encode("utf-8")) > MAX_SPACE_ID_BYTES:
        raise InvalidArgument(
            f"space_id {shown(space_id)} is longer than {MAX_SPACE_ID_BYTES} bytes",
            reason="BAD_SPACE_ID",
        )


def validate_ids(ids: Sequence[str], *, what: str = "ids", unique: bool = True) -> None:
    """Non-empty, at most MAX_ID_BYTES of UTF-8 and, when ``unique``, unique within the
    request (deletes and lookups accept repeats: they are harmless there)."""
    seen: dict[str, int] = {}
    for position, item_id in enumerate(ids):
        if not item_id:
            raise InvalidArgument(f"{what}[{position}]: id is empty", reason="EMPTY_ID")
        if len(item_id.encode("utf-8")) > MAX_ID_BYTES:
            raise InvalidArgument(
                f"{what}[{position}]: id {shown(item_id)} is longer than {MAX_ID_BYTES} bytes",
                reason="ID_TOO_LONG",
            )
        if unique and item_id in seen:
            raise InvalidArgument(
                f"{what}[{position}]: duplicate id {shown(item_id)} (also at {seen[item_id]})",
                reason="DUPLICATE_ID",
            )
        seen[item_id] = position


def validate_top_k(top_k: int, max_top_k: int) -> None:
    if not 1 <= top_k <= max_top_k:
        raise InvalidArgument(
            f"top_k must be between 1 and {max_top_k}, got {top_k}", reason="TOP_K_OUT_OF_RANGE"
        )
