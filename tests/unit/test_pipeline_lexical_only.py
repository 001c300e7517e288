"""``ingest --lexical-only`` against an existing collection: it must be lexical-only (in
the language asked for), and ``--hybrid`` must not apply to a lexical-only one."""

from __future__ import annotations

import pytest

from contentembed.client import CollectionInfo
from contentembed.pipeline.hybrid import NotHybrid, check_hybrid, check_lexical_only


def info(lexical: bool, lexical_only: bool = False, language: str = "english") -> CollectionInfo:
    return CollectionInfo(
        name="c", space_id="" if lexical_only else "s", dim=0 if lexical_only else 8,
        item_count=0, shard_count=1, version="v0", lexical=lexical,
        lexical_language=language if lexical else "", lexical_only=lexical_only,
    )


def test_a_lexical_only_collection_passes_in_its_language() -> None:
    check_lexical_only(info(True, True), None)
    check_lexical_only(info(True, True), "English")
    with pytest.raises(NotHybrid, match="--language english"):
        check_lexical_only(info(True, True), "german")


@pytest.mark.parametrize(("existing", "kind"), [(info(False), "dense only"),
                                                (info(True), "hybrid")])
def test_another_kind_is_refused_with_what_it_is(existing, kind) -> None:
    with pytest.raises(NotHybrid, match=kind):
        check_lexical_only(existing, None)


def test_hybrid_does_not_apply_to_a_lexical_only_collection() -> None:
    with pytest.raises(NotHybrid, match="--lexical-only instead"):
        check_hybrid(info(True, True), None)
