"""Bounds on per-item metadata and on the answers that carry it (pure checks)."""

from __future__ import annotations

import random

import pytest
from google.protobuf import struct_pb2

from contentembed.services.common.errors import InvalidArgument, ResourceExhausted
from contentembed.services.common.metadata import (
    MetadataLimits,
    check_answer_size,
    check_metadata,
    largest_search_answer_bytes,
    same_value,
)
from contentembed.services.common.protoconv import struct_to_dict
from contentembed.services.gateway.service import GatewaySettings
from contentembed.services.index.service import IndexSettings

LIMITS = MetadataLimits(max_bytes=1024, max_depth=3)


def random_json(rng: random.Random, depth: int = 1):
    roll = rng.random()
    if depth > 4 or roll < 0.5:
        return rng.choice([None, True, False, 1.5, -3, "", "x" * rng.randint(0, 300), "é" * rng.randint(0, 90)])
    if roll < 0.75:
        return {"k" * rng.randint(0, 200) + str(i): random_json(rng, depth + 1) for i in range(rng.randint(0, 12))}
    return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 20))]


def test_the_measured_size_is_the_encoded_struct_size() -> None:
    """What a hit costs in an answer, to the byte, without building the protobuf."""
    rng = random.Random(7)
    for _ in range(200):
        values = {str(i) * rng.randint(0, 3): random_json(rng) for i in range(rng.randint(0, 8))}
        struct = struct_pb2.Struct()
        struct.update(values)
        size = struct.ByteSize()
        check_metadata(values, MetadataLimits(max_bytes=size, max_depth=8), what="m")
        if size:
            with pytest.raises(InvalidArgument, match=f"is {size} bytes"):
                check_metadata(values, MetadataLimits(max_bytes=size - 1, max_depth=8), what="m")


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ({"blob": "x" * 2000}, "TOO_LARGE"),
        ({"a": {"b": {"c": {"d": 1}}}}, "TOO_DEEP"),
        ({"a": [[[1]]]}, "TOO_DEEP"),
        ({"a": {"b": [1]}, "c": [{"d": [1]}]}, "TOO_DEEP"),
        ({"price": float("nan")}, "NOT_FINITE"),
        ({"a": [1, {"b": float("-inf")}]}, "NOT_FINITE"),
        ({"when": object()}, "NOT_JSON"),
    ],
)
def test_limits_and_json_numbers(values, reason) -> None:
    for kind in ("METADATA", "FILTER"):
        with pytest.raises(InvalidArgument) as caught:
            check_metadata(values, LIMITS, what="items[2].metadata", kind=kind)
        assert caught.value.reason == f"{kind}_{reason}"
        assert caught.value.message.startswith("items[2].metadata")


def test_within_the_limits_passes() -> None:
    check_metadata({"a": {"b": [1, "x", None, True]}, "c": 2.5}, LIMITS, what="m")
    check_metadata({}, LIMITS, what="m")


def test_messages_do_not_repeat_long_keys() -> None:
    with pytest.raises(InvalidArgument) as caught:
        check_metadata({"k" * 10_000: float("inf")}, MetadataLimits(10**6, 3), what="m")
    assert len(caught.value.message) < 200


def test_struct_conversion_keeps_what_the_checks_must_see() -> None:
    struct = struct_pb2.Struct()
    struct.update({"n": float("nan"), "l": [1, None, {"x": "y"}], "t": True})
    values = struct_to_dict(struct)
    assert values["l"] == [1.0, None, {"x": "y"}] and values["t"] is True
    with pytest.raises(InvalidArgument) as caught:
        check_metadata(values, LIMITS, what="m")
    assert caught.value.reason == "METADATA_NOT_FINITE"


def test_json_equality_does_not_take_true_for_one() -> None:
    assert same_value(1, 1.0) and same_value({"a": [1, "x"]}, {"a": [1.0, "x"]})
    assert not same_value(True, 1) and not same_value(0, False)
    assert not same_value([True], [1]) and not same_value({"a": 1}, {"a": True})
    assert not same_value({"a": 1}, [1]) and not same_value("1", 1)


def test_answer_size_check() -> None:
    check_answer_size(100, 100, what="lower top_k")
    with pytest.raises(ResourceExhausted) as caught:
        check_answer_size(101, 100, what="lower top_k")
    assert caught.value.reason == "ANSWER_TOO_LARGE" and "lower top_k" in caught.value.message


@pytest.mark.parametrize("settings_cls", [IndexSettings, GatewaySettings])
def test_settings_keep_the_largest_answer_within_the_message_limit(settings_cls) -> None:
    defaults = settings_cls()
    largest = largest_search_answer_bytes(defaults.max_top_k, defaults.max_metadata_bytes)
    assert largest <= defaults.max_message_bytes
    with pytest.raises(ValueError, match="max_message_bytes"):
        settings_cls(max_metadata_bytes=16 * 1024)  # 1000 hits of 16 KiB: over 16 MiB
    with pytest.raises(ValueError, match="max_message_bytes"):
        settings_cls(max_top_k=5000)
    assert settings_cls(max_metadata_bytes=16 * 1024, max_message_bytes=32 << 20).max_metadata_bytes == 16 * 1024
    assert settings_cls(max_metadata_bytes=64 * 1024, max_top_k=100).max_top_k == 100
    with pytest.raises(ValueError):
        settings_cls(max_metadata_depth=50)  # deeper than protobuf parsers accept
