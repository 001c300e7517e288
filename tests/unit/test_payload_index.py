"""The payload index: a filter answered from it matches exactly what matches() finds by
scanning every item, it stays right through replacements and deletes, its cost follows
the matches, and a scan stops when the caller's interrupt says so."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contentembed.services.common.errors import Cancelled, DeadlineExceeded
from contentembed.services.common.filters import check_filter, matches
from contentembed.services.common.interrupt import Interrupt
from contentembed.services.index import payload
from contentembed.services.index.payload import PayloadIndex, matching_labels

KEYS = ["a", "b", "c"]
SCALARS = st.one_of(
    st.sampled_from(["x", "y", "z", ""]),
    st.integers(-2, 2),
    st.sampled_from([0.0, 1.0, 1.5, -0.0]),
    st.booleans(),
    st.none(),
)
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=2), st.dictionaries(st.sampled_from(["w"]), SCALARS, max_size=1))
METADATA = st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=3)


def clauses(depth: int) -> st.SearchStrategy[dict]:
    operators = st.one_of(
        st.fixed_dictionaries({"$in": st.lists(VALUES, max_size=4)}),
        st.fixed_dictionaries({"$gte": st.integers(-2, 2)}),
        st.fixed_dictionaries({"$in": st.lists(SCALARS, max_size=3), "$lt": st.integers(-1, 3)}),
    )
    leaf = st.dictionaries(st.sampled_from(KEYS), st.one_of(VALUES, operators), min_size=1, max_size=2)
    if depth == 0:
        return leaf
    nested = st.lists(clauses(depth - 1), min_size=1, max_size=3)
    return st.one_of(
        leaf,
        st.fixed_dictionaries({"$and": nested}),
        st.fixed_dictionaries({"$or": nested}),
        st.builds(lambda a, b: {**a, "$or": b}, leaf, nested),
    )


@settings(max_examples=300, deadline=None)
@given(st.lists(METADATA, max_size=25), clauses(2), st.data())
def test_matches_what_a_scan_finds(items: list[dict], metadata_filter: dict, data) -> None:
    check_filter(metadata_filter)
    stored = {label: values for label, values in enumerate(items) if values}
    index = PayloadIndex.of(stored.items())
    # Replace and delete some, as writes do.
    for label in data.draw(st.lists(st.sampled_from(sorted(stored)), max_size=5)) if stored else []:
        if label not in stored:
            continue
        index.remove(label, stored.pop(label))
        replacement = data.draw(METADATA)
        if replacement:
            stored[label] = replacement
            index.add(label, replacement)
    expected = sorted(label for label, values in stored.items() if matches(values, metadata_filter))
    assert matching_labels(index, stored, metadata_filter) == expected


def test_json_equality_is_kept() -> None:
    stored = {0: {"a": True}, 1: {"a": 1}, 2: {"a": 1.0}, 3: {"a": None}, 4: {"a": "1"}}
    index = PayloadIndex.of(stored.items())
    assert matching_labels(index, stored, {"a": 1}) == [1, 2]
    assert matching_labels(index, stored, {"a": True}) == [0]
    assert matching_labels(index, stored, {"a": None}) == [3]
    assert matching_labels(index, stored, {"a": {"$in": ["1", False]}}) == [4]


def test_membership_costs_what_it_matches(monkeypatch) -> None:
    """700 values of $in over 10k items: decided by the index, no item's metadata is
    checked (the scan did 10k x 700 comparisons)."""
    stored = {label: {"category": f"c{label % 1000}", "n": label} for label in range(10_000)}
    index = PayloadIndex.of(stored.items())
    checked = []
    monkeypatch.setattr(payload, "matches", lambda *a: checked.append(a) or True)
    wanted = [f"c{value}" for value in range(0, 1400, 2)]  # 700 values, 500 present
    labels = matching_labels(index, stored, {"category": {"$in": wanted}})
    assert len(labels) == 5000 and checked == []
    # A residual clause is checked on the candidates only.
    labels = matching_labels(index, stored, {"category": "c4", "n": {"$lt": 5000}})
    assert len(checked) == 10


def test_a_scan_stops_when_interrupted() -> None:
    stored = {label: {"n": label} for label in range(50_000)}
    index = PayloadIndex.of(stored.items())
    calls = []

    def is_active() -> bool:
        calls.append(1)
        return len(calls) < 3

    with pytest.raises(Cancelled):
        matching_labels(index, stored, {"n": {"$gt": 10}}, Interrupt(is_active=is_active))
    assert len(calls) == 3  # stopped at the third chunk, not after all 49
    with pytest.raises(DeadlineExceeded):
        matching_labels(index, stored, {"n": {"$gt": 10}}, Interrupt(deadline=time.monotonic()))


def test_single_and_shared_postings_shrink_back() -> None:
    index = PayloadIndex()
    index.add(1, {"a": "x"})
    index.add(2, {"a": "x"})
    index.remove(1, {"a": "x"})
    index.remove(2, {"a": "x"})
    assert index._postings == {}
