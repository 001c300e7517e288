"""An inverted index of the items' metadata, so that a filter costs what it matches, not
what the collection holds (Qdrant's payload index, for the part of the filter grammar
that equality decides). Pure index code: no grpc.

For every top-level key whose value is a scalar (string, number, boolean, null), the
index keeps the labels holding each value. A filter (common/filters.py) is planned
against it:

- ``{"k": v}`` and ``{"k": {"$in": [...]}}`` with scalar values: exactly the labels of
  those values (JSON equality: ``true`` is not ``1``, ``1`` is ``1.0``);
- several keys, and ``$and``: the intersection of the parts that are planned;
- ``$or``: the union, when every part is planned;
- the rest (ranges, object or list values, an ``$or`` with an unplanned part) is a
  residual filter, checked with ``filters.matches`` on each candidate only.

A filter with no planned part is answered by a scan of every item's metadata. Both the
scan and the candidates' checks run in chunks, with the caller's ``Interrupt`` checked
between them, so a cancelled or late search stops within one chunk.

Memory: one dict entry per distinct (key, value) pair, holding a label (one item) or a
set of labels; labels are the collection's own int objects, not copies. A key with a
distinct value per item (a SKU) costs about 70 bytes per item.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import islice
from typing import Any

from contentembed.services.common.filters import MEMBERSHIP, matches
from contentembed.services.common.interrupt import NEVER, Interrupt

# Labels checked between two looks at the interrupt: well under a millisecond of
# matches() each for the filters the grammar allows.
CHUNK = 1024
# Booleans compare equal to 0 and 1 in Python, but JSON equality keeps them apart.
_TRUE, _FALSE = ("bool", True), ("bool", False)


def _value_key(value: Any) -> Hashable | None:
    """The key a scalar value is indexed under; None for a list or an object."""
    if isinstance(value, bool):
        return _TRUE if value else _FALSE
    if value is None or isinstance(value, str | int | float):
        return ("null",) if value is None else value
    return None


Posting = int | set[int]  # one label, or several


@dataclass(frozen=True)
class FilterPlan:
    """What the index says of a filter: ``candidates`` is every label that may match
    (None: any may; a scan is needed), and ``residual`` what is still to be checked on
    each candidate (None: the candidates are exactly the matches)."""

    candidates: set[int] | None
    residual: Mapping[str, Any] | None


class PayloadIndex:
    """Labels by (top-level key, scalar value) of the items' metadata. Not thread-safe:
    the owning collection calls it under its own locks."""

    def __init__(self) -> None:
        self._postings: dict[str, dict[Hashable, Posting]] = {}

    @classmethod
    def of(cls, items: Iterable[tuple[int, Mapping[str, Any]]]) -> PayloadIndex:
        index = cls()
        for label, metadata in items:
            index.add(label, metadata)
        return index

    def add(self, label: int, metadata: Mapping[str, Any]) -> None:
        for key, value in metadata.items():
            value_key = _value_key(value)
            if value_key is None:
                continue
            values = self._postings.setdefault(key, {})
            posting = values.get(value_key)
            if posting is None:
                values[value_key] = label
            elif isinstance(posting, set):
                posting.add(label)
            elif posting != label:
                values[value_key] = {posting, label}

    def remove(self, label: int, metadata: Mapping[str, Any]) -> None:
        for key, value in metadata.items():
            value_key = _value_key(value)
            values = self._postings.get(key) if value_key is not None else None
            if values is None:
                continue
            posting = values.get(value_key)
            if isinstance(posting, set):
                posting.discard(label)
                if len(posting) == 1:
                    values[value_key] = next(iter(posting))
            elif posting == label:
                del values[value_key]
                if not values:
                    del self._postings[key]

    def _labels(self, key: str, value_keys: Iterable[Hashable]) -> set[int]:
        values = self._postings.get(key, {})
        labels: set[int] = set()
        for value_key in value_keys:
            posting = values.get(value_key)
            if isinstance(posting, set):
                labels |= posting
            elif posting is not None:
                labels.add(posting)
        return labels

    def plan(self, metadata_filter: Mapping[str, Any]) -> FilterPlan:
        """The candidates and the residual filter of a filter ``check_filter`` accepted."""
        candidates, exact, residual = self._plan_all(metadata_filter)
        if candidates is None:
            return FilterPlan(None, metadata_filter)
        return FilterPlan(candidates, None if exact else residual)

    def _plan_all(
        self, metadata_filter: Mapping[str, Any]
    ) -> tuple[set[int] | None, bool, dict[str, Any]]:
        """(candidates or None, whether they are exact, the clauses they do not decide)
        of a filter whose clauses must all hold."""
        bounds: list[set[int]] = []
        residual: dict[str, Any] = {}
        for key, condition in metadata_filter.items():
            candidates, exact = self._plan_clause(key, condition)
            if candidates is not None:
                if not candidates:
                    return set(), True, {}  # nothing can match
                bounds.append(candidates)
            if not exact:
                residual[key] = condition
        if not bounds:
            return None, False, residual
        bounds.sort(key=len)
        candidates = bounds[0].intersection(*bounds[1:])
        return candidates, not residual, residual

    def _plan_clause(self, key: str, condition: Any) -> tuple[set[int] | None, bool]:
        if key == "$and":
            return self._plan_parts(condition, intersect=True)
        if key == "$or":
            return self._plan_parts(condition, intersect=False)
        if isinstance(condition, Mapping) and any(str(k).startswith("$") for k in condition):
            members = condition.get(MEMBERSHIP)
            if members is None:
                return None, False  # ranges only: not decided by equality
            value_keys = [_value_key(member) for member in members]
            if any(value_key is None for value_key in value_keys):
                return None, False  # a list or object member matches unindexed values
            return self._labels(key, value_keys), len(condition) == 1
        value_key = _value_key(condition)
        if value_key is None:
            return None, False
        return self._labels(key, [value_key]), True

    def _plan_parts(
        self, parts: Iterable[Mapping[str, Any]], *, intersect: bool
    ) -> tuple[set[int] | None, bool]:
        """``$and`` (intersect) or ``$or`` of filters: an ``$or`` is bounded only when
        every part is; an ``$and`` by any part that is."""
        bounds: list[set[int]] = []
        exact = True
        for part in parts:
            candidates, part_exact, _ = self._plan_all(part)
            if candidates is None:
                if not intersect:
                    return None, False
                exact = False
                continue
            if intersect and not candidates:
                return set(), True
            bounds.append(candidates)
            exact = exact and part_exact
        if not bounds:
            return None, False
        if not intersect:
            return set().union(*bounds), exact
        bounds.sort(key=len)
        return bounds[0].intersection(*bounds[1:]), exact


def matching_labels(
    index: PayloadIndex,
    metadata: Mapping[int, Mapping[str, Any]],
    metadata_filter: Mapping[str, Any],
    interrupt: Interrupt = NEVER,
) -> list[int]:
    """The labels whose metadata matches the filter: the index's candidates, checked
    against the residual filter, or every item's metadata scanned when the index
    decides nothing. ``metadata`` holds every item that has any (an item without
    metadata matches no filter that has a clause)."""
    plan = index.plan(metadata_filter)
    if plan.candidates is not None and plan.residual is None:
        return sorted(plan.candidates)
    residual = plan.residual
    assert residual is not None
    if plan.candidates is None:
        pairs: Iterator[tuple[int, Mapping[str, Any]]] = iter(metadata.items())
    else:
        pairs = ((label, metadata[label]) for label in sorted(plan.candidates))
    return _checked(pairs, residual, interrupt)


def _checked(
    pairs: Iterator[tuple[int, Mapping[str, Any]]],
    metadata_filter: Mapping[str, Any],
    interrupt: Interrupt,
) -> list[int]:
    found: list[int] = []
    while chunk := list(islice(pairs, CHUNK)):
        interrupt.check()
        found.extend(label for label, values in chunk if matches(values, metadata_filter))
    return sorted(found)
