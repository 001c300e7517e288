"""The search filter grammar (pure: no grpc, no protobuf), shared by the index, which
applies filters, and the gateway, which refuses a malformed one before fanning out.

    {"key": value, ...}             every key present with an equal value (JSON equality)
    {"key": {"$in": [v, ...]}}      the key's value equals one of the list's
    {"key": {"$gte": n, "$lt": m}}  $gt/$gte/$lt/$lte on numbers, all given must hold
    {"$and": [filter, ...]}         every filter matches
    {"$or": [filter, ...]}          at least one filter matches

An object value whose keys start with "$" is a set of operators on that key (all must
hold); one without is plain equality with that object, as before operators existed.
Nesting is bounded by ``check_metadata(kind="FILTER")`` (FILTER_TOO_DEEP); every other
malformation is INVALID_ARGUMENT, reason BAD_FILTER.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Any

from contentembed.services.common.errors import InvalidArgument
from contentembed.services.common.metadata import same_value
from contentembed.services.common.validation import shown

BAD_FILTER = "BAD_FILTER"
RANGES: dict[str, Callable[[Any, Any], bool]] = {
    "$gt": operator.gt, "$gte": operator.ge, "$lt": operator.lt, "$lte": operator.le,
}
MEMBERSHIP = "$in"
COMBINATORS = ("$and", "$or")


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_operators(value: Any) -> bool:
    return isinstance(value, Mapping) and any(str(k).startswith("$") for k in value)


def _bad(path: str, problem: str) -> InvalidArgument:
    return InvalidArgument(f"{path}: {problem}", reason=BAD_FILTER)


def check_filter(metadata_filter: Mapping[str, Any], path: str = "filter") -> None:
    """Raises BAD_FILTER when the filter does not follow the grammar."""
    for key, condition in metadata_filter.items():
        where = f"{path}.{key}"
        if key in COMBINATORS:
            if not isinstance(condition, list | tuple) or not condition:
                raise _bad(where, f"{key} takes a non-empty list of filters")
            for position, part in enumerate(condition):
                if not isinstance(part, Mapping):
                    raise _bad(f"{where}[{position}]", "must be a filter object")
                check_filter(part, f"{where}[{position}]")
        elif key.startswith("$"):
            raise _bad(where, f"unknown operator {shown(key)} (only $and and $or combine "
                       "filters; put $in and ranges under a key)")
        elif _is_operators(condition):
            _check_operators(where, condition)


def _check_operators(where: str, operators: Mapping[str, Any]) -> None:
    for op, argument in operators.items():
        if op == MEMBERSHIP:
            if not isinstance(argument, list | tuple):
                raise _bad(f"{where}.$in", "takes a list of values")
        elif op in RANGES:
            if not is_number(argument):
                raise _bad(f"{where}.{op}", f"takes a number, got {type(argument).__name__}")
        else:
            raise _bad(where, f"unknown operator {shown(str(op))} (known: $in, $gt, $gte, "
                       "$lt, $lte)")


def matches(metadata: Mapping[str, Any], metadata_filter: Mapping[str, Any]) -> bool:
    """Whether an item's metadata satisfies a filter (one ``check_filter`` accepted)."""
    for key, condition in metadata_filter.items():
        if key == "$and":
            if not all(matches(metadata, part) for part in condition):
                return False
        elif key == "$or":
            if not any(matches(metadata, part) for part in condition):
                return False
        elif key not in metadata:
            return False
        elif _is_operators(condition):
            if not _holds(metadata[key], condition):
                return False
        elif not same_value(metadata[key], condition):
            return False
    return True


def _holds(value: Any, operators: Mapping[str, Any]) -> bool:
    for op, argument in operators.items():
        if op == MEMBERSHIP:
            if not any(same_value(value, candidate) for candidate in argument):
                return False
        elif not (is_number(value) and RANGES[op](value, argument)):
            return False
    return True
