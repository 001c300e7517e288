"""The search filter grammar: equality, $in, ranges, $and/$or, and what is refused."""

from __future__ import annotations

import pytest

from contentembed.services.common.errors import InvalidArgument
from contentembed.services.common.filters import check_filter, matches
from contentembed.services.common.metadata import MetadataLimits, check_metadata

ITEM = {"lang": "en", "price": 12.5, "stock": 3, "flag": True, "tags": ["a", "b"],
        "dims": {"w": 1}}


@pytest.mark.parametrize(
    ("metadata_filter", "expected"),
    [
        ({}, True),
        ({"lang": "en"}, True),
        ({"lang": "en", "stock": 3}, True),  # every key must match
        ({"lang": "en", "stock": 4}, False),
        ({"missing": "x"}, False),
        ({"flag": 1}, False),  # JSON equality: true is not 1
        ({"tags": ["a", "b"]}, True),
        ({"dims": {"w": 1}}, True),  # an object without $ keys is plain equality
        ({"lang": {"$in": ["de", "en"]}}, True),
        ({"lang": {"$in": ["de"]}}, False),
        ({"lang": {"$in": []}}, False),
        ({"flag": {"$in": [1]}}, False),
        ({"missing": {"$in": ["x"]}}, False),
        ({"price": {"$gte": 12.5, "$lt": 13}}, True),
        ({"price": {"$gt": 12.5}}, False),
        ({"price": {"$lte": 12.5}}, True),
        ({"stock": {"$lt": 3}}, False),
        ({"lang": {"$gt": 0}}, False),  # a range never matches a non-number
        ({"flag": {"$gte": 0}}, False),  # nor a boolean
        ({"stock": {"$in": [3, 4], "$gte": 3}}, True),  # operators on one key combine
        ({"stock": {"$in": [3, 4], "$gt": 3}}, False),
        ({"$and": [{"lang": "en"}, {"stock": {"$gt": 1}}]}, True),
        ({"$and": [{"lang": "en"}, {"stock": {"$gt": 5}}]}, False),
        ({"$or": [{"lang": "de"}, {"stock": {"$gt": 1}}]}, True),
        ({"$or": [{"lang": "de"}, {"stock": {"$gt": 5}}]}, False),
        ({"lang": "en", "$or": [{"stock": 9}, {"flag": True}]}, True),
        ({"$or": [{"$and": [{"lang": "en"}, {"price": {"$lt": 10}}]}, {"tags": ["a", "b"]}]}, True),
    ],
)
def test_matches(metadata_filter: dict, expected: bool) -> None:
    check_filter(metadata_filter)
    assert matches(ITEM, metadata_filter) is expected


@pytest.mark.parametrize(
    ("metadata_filter", "said"),
    [
        ({"$not": [{"lang": "en"}]}, "unknown operator"),
        ({"lang": {"$eq": "en"}}, "unknown operator"),
        ({"lang": {"$in": "en"}}, "takes a list"),
        ({"price": {"$gt": "10"}}, "takes a number"),
        ({"price": {"$lt": True}}, "takes a number"),
        ({"price": {"$lt": None}}, "takes a number"),
        ({"$and": {"lang": "en"}}, "non-empty list"),
        ({"$or": []}, "non-empty list"),
        ({"$or": ["en"]}, "filter object"),
        ({"$and": [{"x": {"$in": 1}}]}, "filter.$and[0].x.$in"),
    ],
)
def test_malformed_filters_are_bad_filter(metadata_filter: dict, said: str) -> None:
    with pytest.raises(InvalidArgument, match=r"\S") as caught:
        check_filter(metadata_filter)
    assert caught.value.reason == "BAD_FILTER"
    assert said in caught.value.message


def test_too_deep_filter_is_refused_by_the_metadata_bounds() -> None:
    deep: dict = {"k": 1}
    for _ in range(10):
        deep = {"$or": [deep]}
    with pytest.raises(InvalidArgument) as caught:
        check_metadata(deep, MetadataLimits(max_depth=8), what="filter", kind="FILTER")
    assert caught.value.reason == "FILTER_TOO_DEEP"
