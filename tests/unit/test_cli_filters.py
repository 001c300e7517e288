"""`search --filter` expressions become the shards' filter grammar."""

from __future__ import annotations

import pytest

from contentembed.cli.filters import FilterError, parse_filters
from contentembed.services.common.filters import check_filter, matches


def test_expressions_become_equality_in_and_ranges() -> None:
    parsed = parse_filters([
        "category=audio", "brand=Nordvale", "brand=Soundly", "price>=50", "price<250.5",
        "in_stock=true", "size = 42",
    ])
    assert parsed == {
        "category": "audio",
        "brand": {"$in": ["Nordvale", "Soundly"]},
        "price": {"$gte": 50, "$lt": 250.5},
        "in_stock": True,
        "size": 42,
    }
    check_filter(parsed)  # the shards accept what the CLI builds
    item = {"category": "audio", "brand": "Soundly", "price": 99.0, "in_stock": True, "size": 42}
    assert matches(item, parsed)
    assert not matches({**item, "price": 300}, parsed)
    assert not matches({**item, "brand": "Other"}, parsed)


def test_text_that_looks_like_json_objects_stays_text() -> None:
    assert parse_filters(["note=[1,2]", "name=null"]) == {"note": "[1,2]", "name": None}


@pytest.mark.parametrize(
    ("expressions", "message"),
    [
        (["price"], "expected key=value"),
        (["=audio"], "expected key=value"),
        (["price>=cheap"], "needs a number"),
        (["price>=true"], "needs a number"),
        (["$or=1"], "may not start"),
        (["price=3", "price<9"], "both = and a range"),
    ],
)
def test_bad_expressions_are_refused_with_one_line(expressions: list[str], message: str) -> None:
    with pytest.raises(FilterError, match=message):
        parse_filters(expressions)
