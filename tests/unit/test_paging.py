"""Page tokens are opaque and signed: what one listing issued pages it, anything else
(written by hand, edited, another listing's, another secret's) is BAD_PAGE_TOKEN."""

from __future__ import annotations

import pytest

from contentembed.services.common.errors import InvalidArgument
from contentembed.services.common.paging import PageTokens, page_size_of


def test_a_token_reads_back_in_its_own_listing_only() -> None:
    tokens = PageTokens(b"s" * 32)
    token = tokens.issue("ListItems/a", "item-0042 ünïcode")
    assert tokens.read("ListItems/a", token) == "item-0042 ünïcode"
    assert tokens.read("ListItems/a", "") == ""
    for scope, bad in [("ListItems/b", token), ("ListItems/a", token.replace(".", ".x")),
                       ("ListItems/a", "aXRlbS0wMDQy"), ("ListItems/a", "***.***")]:
        with pytest.raises(InvalidArgument) as caught:
            tokens.read(scope, bad)
        assert caught.value.reason == "BAD_PAGE_TOKEN"
    # Replicas with the same secret read each other's; a restart without one does not.
    assert PageTokens(b"s" * 32).read("ListItems/a", token) == "item-0042 ünïcode"
    with pytest.raises(InvalidArgument):
        PageTokens().read("ListItems/a", token)


def test_page_sizes() -> None:
    assert page_size_of(0) == 100 and page_size_of(7) == 7
    for bad in (-1, 1001):
        with pytest.raises(InvalidArgument) as caught:
            page_size_of(bad)
        assert caught.value.reason == "BAD_PAGE_SIZE"
