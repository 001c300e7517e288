"""`search --filter` expressions to the metadata filter the shards understand.

``key=value`` is equality (the value read as a JSON number, true, false or null when it is
one, else as text); the same key given twice with ``=`` means any of the values (``$in``).
``key>=n``, ``key>n``, ``key<=n``, ``key<n`` are numeric ranges; several on one key must all
hold. Different keys must all match.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

EXPRESSION = re.compile(r"^(?P<key>[^<>=]+?)(?P<op>>=|<=|>|<|=)(?P<value>.*)$")
RANGES = {">=": "$gte", ">": "$gt", "<=": "$lte", "<": "$lt"}


class FilterError(ValueError):
    pass


def _scalar(text: str) -> Any:
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if value is None or isinstance(value, (bool, int, float)) else text


def parse_filters(expressions: Iterable[str]) -> dict[str, Any]:
    equal: dict[str, list[Any]] = {}
    ranges: dict[str, dict[str, float]] = {}
    for expression in expressions:
        match = EXPRESSION.match(expression)
        if match is None or not match["key"].strip():
            raise FilterError(
                f"--filter {expression!r}: expected key=value, key>=n, key>n, key<=n or key<n"
            )
        key, op, raw = match["key"].strip(), match["op"], match["value"].strip()
        if key.startswith("$"):
            raise FilterError(f"--filter {expression!r}: keys may not start with '$'")
        if op == "=":
            equal.setdefault(key, []).append(_scalar(raw))
            continue
        number = _scalar(raw)
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            raise FilterError(f"--filter {expression!r}: {op} needs a number, got {raw!r}")
        ranges.setdefault(key, {})[RANGES[op]] = number
    both = sorted(set(equal) & set(ranges))
    if both:
        raise FilterError(f"--filter: {both[0]!r} has both = and a range; use one or the other")
    result: dict[str, Any] = {
        key: values[0] if len(values) == 1 else {"$in": values} for key, values in equal.items()
    }
    result.update(ranges)
    return result
