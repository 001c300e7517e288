"""Request checks shared by the gateway and the index (pure: no grpc)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from contentembed.services.common.errors import InvalidArgument

COLLECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
MAX_ID_BYTES = 256


def validate_collection_name(name: str) -> None:
    if not COLLECTION_NAME.match(name):
        raise InvalidArgument(
            f"collection name {name!r} must be 1-64 characters of [A-Za-z0-9_-] "
            "starting with a letter or digit",
            reason="BAD_COLLECTION_NAME",
        )


def validate_ids(ids: Sequence[str], *, what: str = "ids") -> None:
    """Non-empty, at most MAX_ID_BYTES of UTF-8, unique within the request."""
    seen: dict[str, int] = {}
    for position, item_id in enumerate(ids):
        if not item_id:
            raise InvalidArgument(f"{what}[{position}]: id is empty", reason="EMPTY_ID")
        if len(item_id.encode("utf-8")) > MAX_ID_BYTES:
            raise InvalidArgument(
                f"{what}[{position}]: id is longer than {MAX_ID_BYTES} bytes", reason="ID_TOO_LONG"
            )
        if item_id in seen:
            raise InvalidArgument(
                f"{what}[{position}]: duplicate id {item_id!r} (also at {seen[item_id]})",
                reason="DUPLICATE_ID",
            )
        seen[item_id] = position


def validate_top_k(top_k: int, max_top_k: int) -> None:
    if not 1 <= top_k <= max_top_k:
        raise InvalidArgument(
            f"top_k must be between 1 and {max_top_k}, got {top_k}", reason="TOP_K_OUT_OF_RANGE"
        )
