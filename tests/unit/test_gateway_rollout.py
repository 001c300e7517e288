"""Candidates over in-memory shards: the canary share, shadow copies that never change an
answer, and a failed promotion undone."""

from __future__ import annotations

import pytest

from contentembed.services.common.errors import FailedPrecondition, Unavailable
from contentembed.services.gateway.ingest import Document
from contentembed.services.gateway.search import Query
from tests.support.gateway_fakes import FakeEncoder, FakeShard, fake_gateway, soon

DOCUMENTS = [Document(f"doc-{i}", f"item {i}") for i in range(6)]


def stack(shards: int = 2, **config):
    """``shop`` serving ``live`` (space-a) with a loaded ``v2`` in space-b."""
    encoders = [FakeEncoder("space-a"), FakeEncoder("space-b")]
    fakes = [FakeShard(i) for i in range(shards)]
    for shard in fakes:
        shard.add_collection("shop", "live", "space-a")
        shard.add_version("shop", "v2", "space-b")
    gateway = fake_gateway(encoders, fakes, **config)
    gateway.upsert_documents("shop", DOCUMENTS, soon())
    return gateway, fakes


def ask(gateway, text: str = "item 3"):
    return gateway.search(Query("shop", text, 3, soon()))


def test_the_canary_share_is_answered_by_the_candidate() -> None:
    gateway, _ = stack(seed=7)
    gateway.set_candidate("shop", "v2", 0.0, 0.25, soon())
    answers = [ask(gateway) for _ in range(400)]
    canary = sum(a.versions == ["v2"] for a in answers)
    assert 0.18 < canary / 400 < 0.32
    assert {tuple(a.versions) for a in answers} == {("live",), ("v2",)}
    assert gateway.candidates.get("shop").stats.canary_queries == canary
    assert all(a.space_id == ("space-b" if a.version == "v2" else "space-a") for a in answers)


def test_no_candidate_means_no_canary_and_an_evaluation_never_takes_one() -> None:
    gateway, _ = stack(seed=1)
    assert all(ask(gateway).version == "live" for _ in range(20))
    gateway.set_candidate("shop", "v2", 1.0, 1.0, soon())
    evaluation = gateway.search(Query("shop", "item 3", 3, soon(), version="live"))
    assert evaluation.version == "live"
    assert gateway.candidates.get("shop").stats.canary_queries == 0


def test_shadow_copies_never_change_the_answer() -> None:
    gateway, _ = stack(seed=3)
    before = [ask(gateway, f"item {i}") for i in range(6)]
    gateway.set_candidate("shop", "v2", 1.0, 0.0, soon())
    during = [ask(gateway, f"item {i}") for i in range(6)]
    assert gateway.wait_for_shadow()
    assert [[(h.id, h.score) for h in a.hits] for a in during] == [
        [(h.id, h.score) for h in a.hits] for a in before]
    assert all(a.versions == ["live"] for a in during)
    stats = gateway.candidates.get("shop").stats
    assert stats.queries == 6 and stats.failures == 0


def test_a_failing_shadow_copy_is_counted_and_the_answer_still_served() -> None:
    gateway, shards = stack(seed=3)
    gateway.set_candidate("shop", "v2", 1.0, 0.0, soon())
    original = shards[1].search

    def fail_candidate(collection, query, space_id, top_k, deadline, version="", *more, **named):
        if version == "v2":
            shards[1].fail["search"] = [Unavailable("shard 1 lost the candidate")]
        return original(collection, query, space_id, top_k, deadline, version, *more, **named)

    shards[1].search = fail_candidate
    answer = ask(gateway)
    assert answer.hits and not answer.partial
    assert gateway.wait_for_shadow()
    assert gateway.candidates.get("shop").stats.failures == 1


def test_a_failed_promotion_flips_the_flipped_shards_back_and_keeps_the_candidate() -> None:
    gateway, shards = stack(shards=3)
    gateway.set_candidate("shop", "v2", 0.0, 0.0, soon())
    ask(gateway)  # the collection's space is now known
    shards[2].fail["activate_version"] = [Unavailable("shard 2 restarting")]
    with pytest.raises(Unavailable):
        gateway.promote("shop", soon())
    assert [s.collections["shop"].serving for s in shards] == ["live"] * 3
    undo = [args for s in shards[:2] for method, args in s.calls if method == "activate_version"]
    assert undo.count(("shop", "live")) == 2
    assert "shop" in gateway.candidates
    assert ask(gateway).versions == ["live"]

    assert gateway.promote("shop", soon()) == ("live", "v2")  # the retry
    assert "shop" not in gateway.candidates
    answer = ask(gateway)
    assert answer.versions == ["v2"] and answer.space_ids == ["space-b"]
    assert gateway.get_collection("shop", soon()).serving_versions == ["v2"]


def test_a_candidate_must_be_loaded_and_not_already_serving() -> None:
    gateway, shards = stack()
    for shard in shards:
        shard.add_version("shop", "v3", "space-b", pending=True)
    for version, reason in (("v3", "VERSION_PENDING"), ("live", "ALREADY_SERVING")):
        with pytest.raises(FailedPrecondition) as caught:
            gateway.set_candidate("shop", version, 0.5, 0.0, soon())
        assert caught.value.reason == reason


def test_a_failed_begin_version_deletes_what_it_opened_elsewhere() -> None:
    gateway, shards = stack()
    shards[1].fail["begin_version"] = [Unavailable("shard 1 down")]
    with pytest.raises(Unavailable):
        gateway.begin_version("shop", "v9", "space-a", soon())
    assert all("v9" not in s.collections["shop"].version_spaces for s in shards)
