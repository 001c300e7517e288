"""Bounds on the metadata stored with an item and on the answers that carry it back.

Metadata comes back with every hit, so what one item may hold decides whether a search
can be answered at all: two items of 9 MiB each made every search with top_k >= 2 exceed
the 16 MiB message limit on a healthy shard. The bounds are checked at ingest (pure:
no grpc, no protobuf); the size is measured as the google.protobuf.Struct the item's
metadata travels in, because that is what each hit costs in an answer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, model_validator

from contentembed.services.common.budget import AnswerSize, MemoryBudget
from contentembed.services.common.config import ServiceSettings
from contentembed.services.common.errors import InvalidArgument, ResourceExhausted
from contentembed.services.common.validation import MAX_ID_BYTES, shown

DEFAULT_MAX_METADATA_BYTES = 8 * 1024
DEFAULT_MAX_METADATA_DEPTH = 8
# protobuf parsers refuse messages nested more than 100 levels deep, and each level of
# metadata costs up to three (map entry, Value, Struct): deeper metadata could be stored
# but never sent back.
MAX_METADATA_DEPTH_CEILING = 20
# One hit without its metadata: the id, the collection name (<= 64 characters), score,
# shard index and the framing of each field, rounded up.
HIT_OVERHEAD_BYTES = MAX_ID_BYTES + 64 + 64
# Everything in a search answer besides its hits: space id, versions, per-shard outcomes.
ANSWER_RESERVE_BYTES = 64 * 1024

StructKind = Literal["METADATA", "FILTER"]


@dataclass(frozen=True)
class MetadataLimits:
    max_bytes: int = DEFAULT_MAX_METADATA_BYTES
    max_depth: int = DEFAULT_MAX_METADATA_DEPTH


def largest_search_answer_bytes(max_top_k: int, max_metadata_bytes: int) -> int:
    """An upper bound on the encoded size of one search answer."""
    return max_top_k * (max_metadata_bytes + HIT_OVERHEAD_BYTES) + ANSWER_RESERVE_BYTES


def check_metadata(
    values: Mapping[str, Any], limits: MetadataLimits, *, what: str, kind: StructKind = "METADATA"
) -> None:
    """Refuses metadata (or a search filter, ``kind="FILTER"``) that is nested deeper or
    encodes larger than the limits, or holds NaN or an infinity: JSON and protobuf's JSON
    mapping have no such numbers, so they could be neither logged nor answered.

    A filter gets the same limits: it matches only items whose metadata holds all of it,
    so one beyond them could never match anything.
    """
    size = _Walk(limits.max_depth, what, kind).struct_size(values, 1)
    if size > limits.max_bytes:
        raise InvalidArgument(
            f"{what} is {size} bytes encoded, above the limit of {limits.max_bytes}",
            reason=f"{kind}_TOO_LARGE",
        )


def check_answer_size(size: int, max_message_bytes: int, *, what: str) -> None:
    """An answer gRPC would refuse to send fails here with a message that says what to
    change, instead of as an opaque RESOURCE_EXHAUSTED from the transport. Searches
    within the limits always fit (see SearchServiceSettings); batches, lookups and items
    stored before the limits existed may not."""
    if size > max_message_bytes:
        raise ResourceExhausted(
            f"the answer would be {size} bytes, above the message limit of "
            f"{max_message_bytes}: {what}",
            reason="ANSWER_TOO_LARGE",
        )


def same_value(a: Any, b: Any) -> bool:
    """JSON equality: unlike Python's ==, true is not 1 and false is not 0 (also inside
    lists and objects), so a filter on a flag never matches a count."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, dict | list) or isinstance(b, dict | list):
        return False  # an object or a list never equals a value of another kind
    return a == b


# -- the encoded size of a google.protobuf.Struct, computed from the dict ---------------
# Struct = repeated map entry (field 1) {key: string (1), value: Value (2)}; Value is a
# oneof: null (1, varint), number (2, fixed64), string (3), bool (4, varint),
# struct (5), list (6); ListValue = repeated Value (1). Each field costs a one-byte tag.
def _varint_size(value: int) -> int:
    return max(1, (value.bit_length() + 6) // 7)


def _field_size(body: int) -> int:
    """A length-delimited field: tag, length, body."""
    return 1 + _varint_size(body) + body


@dataclass(frozen=True)
class _Walk:
    """What every level of the walk needs to report a problem."""

    max_depth: int
    what: str
    kind: StructKind

    def too_deep(self) -> InvalidArgument:
        return InvalidArgument(
            f"{self.what} is nested more than {self.max_depth} levels deep",
            reason=f"{self.kind}_TOO_DEEP",
        )

    def struct_size(self, values: Mapping[str, Any], depth: int) -> int:
        if depth > self.max_depth:
            raise self.too_deep()
        size = 0
        for key, value in values.items():
            entry = _field_size(len(key.encode("utf-8"))) + _field_size(
                self.value_size(key, value, depth)
            )
            size += _field_size(entry)
        return size

    def value_size(self, key: str, value: Any, depth: int) -> int:
        """The encoded Value; ``key`` is the nearest object key, for the message."""
        if value is None or isinstance(value, bool):
            return 2
        if isinstance(value, int | float):
            if not math.isfinite(value):
                raise InvalidArgument(
                    f"{self.what}: {shown(key)} holds {value}, which is not a JSON number",
                    reason=f"{self.kind}_NOT_FINITE",
                )
            return 9
        if isinstance(value, str):
            return _field_size(len(value.encode("utf-8")))
        if isinstance(value, Mapping):
            return _field_size(self.struct_size(value, depth + 1))
        if isinstance(value, list | tuple):
            if depth + 1 > self.max_depth:
                raise self.too_deep()
            return _field_size(
                sum(_field_size(self.value_size(key, v, depth + 1)) for v in value)
            )
        raise InvalidArgument(
            f"{self.what}: {shown(key)} holds a {type(value).__name__}, not a JSON value",
            reason=f"{self.kind}_NOT_JSON",
        )


class SearchServiceSettings(ServiceSettings):
    """Settings of a service that answers searches. Together they must keep the largest
    answer (max_top_k hits, each with the largest metadata and id) within
    max_message_bytes: a configuration where it would not is refused at start-up."""

    max_top_k: int = Field(
        1000,
        ge=1,
        description="Largest top_k a search may ask for. max_top_k x (max_metadata_bytes + "
        f"{HIT_OVERHEAD_BYTES}) + {ANSWER_RESERVE_BYTES} must not exceed max_message_bytes.",
    )
    max_metadata_bytes: int = Field(
        DEFAULT_MAX_METADATA_BYTES,
        ge=64,
        description="Largest metadata of one item, measured as the encoded protobuf Struct; "
        "larger is refused with METADATA_TOO_LARGE. Every hit carries its item's metadata, so "
        f"max_top_k x (this + {HIT_OVERHEAD_BYTES}) + {ANSWER_RESERVE_BYTES} must not exceed "
        "max_message_bytes: the service refuses to start otherwise.",
    )
    max_answer_memory_bytes: int = Field(
        256 << 20,
        ge=1 << 20,
        description="Memory the answers being built at once may hold together (each counts "
        "about three times its encoded size while it is built); a call that would pass it is "
        "refused with RESOURCE_EXHAUSTED MEMORY_BUDGET_EXCEEDED and a retry delay.",
    )
    max_metadata_depth: int = Field(
        DEFAULT_MAX_METADATA_DEPTH,
        ge=1,
        le=MAX_METADATA_DEPTH_CEILING,
        description="Deepest nesting of objects and lists in one item's metadata (and in a "
        "search filter); deeper is refused with METADATA_TOO_DEEP. At most "
        f"{MAX_METADATA_DEPTH_CEILING}: protobuf parsers refuse messages nested deeper "
        "than 100 levels, and each level costs up to three.",
    )

    @model_validator(mode="after")
    def _largest_answer_fits(self) -> SearchServiceSettings:
        largest = largest_search_answer_bytes(self.max_top_k, self.max_metadata_bytes)
        if largest > self.max_message_bytes:
            raise ValueError(
                f"a search answer may take {largest} bytes (max_top_k {self.max_top_k} hits "
                f"with max_metadata_bytes {self.max_metadata_bytes} each), more than "
                f"max_message_bytes {self.max_message_bytes}: lower max_top_k or "
                "max_metadata_bytes, or raise max_message_bytes"
            )
        return self

    @property
    def metadata_limits(self) -> MetadataLimits:
        return MetadataLimits(self.max_metadata_bytes, self.max_metadata_depth)

    def answer_size(self, advice: str, budget: MemoryBudget | None) -> AnswerSize:
        """Counts an answer's hits (or items) against max_message_bytes (ANSWER_TOO_LARGE
        with ``advice``) and the process's answer memory as they are built; the few
        fields besides them are left to the exact check of the finished answer."""
        return AnswerSize(self.max_message_bytes, advice, budget)
