"""Writes over in-memory encoders and shards: every version's space gets every document,
embedded in chunks of its encoder's batch size, routed to the shard of its id."""

from __future__ import annotations

import pytest

from contentembed.services.common.errors import FailedPrecondition, InvalidArgument, Unavailable
from contentembed.services.common.sharding import shard_for_id
from contentembed.services.gateway.ingest import Document
from tests.support.gateway_fakes import FakeEncoder, FakeShard, fake_gateway, soon

DOCUMENTS = [Document(f"doc-{i}", f"text number {i}", {"n": i}) for i in range(7)]


def two_space_stack(batch: int = 3):
    """A collection serving v1 (space-a) with a pending v2 (space-b), on two shards."""
    encoders = [FakeEncoder("space-a", max_batch_size=batch), FakeEncoder("space-b", max_batch_size=batch)]
    shards = [FakeShard(0), FakeShard(1)]
    for shard in shards:
        shard.add_collection("shop", "v1", "space-a")
        shard.add_version("shop", "v2", "space-b", pending=True)
    return encoders, shards, fake_gateway(encoders, shards)


def test_each_space_is_embedded_in_chunks_of_its_encoders_batch_size() -> None:
    encoders, _, gateway = two_space_stack(batch=3)
    written, truncated = gateway.upsert_documents("shop", DOCUMENTS, soon())
    assert (written, truncated) == (7, [])
    for encoder in encoders:
        assert [len(batch) for batch in encoder.batches] == [3, 3, 1]
        assert [c for batch in encoder.batches for c in batch] == [d.content for d in DOCUMENTS]


def test_each_shard_gets_its_ids_once_per_space_with_that_spaces_vectors() -> None:
    _, shards, gateway = two_space_stack()
    gateway.upsert_documents("shop", DOCUMENTS, soon())
    for shard in shards:
        mine = tuple(d.id for d in DOCUMENTS if shard_for_id(d.id, 2) == shard.shard_index)
        upserts = [args for method, args in shard.calls if method == "upsert"]
        assert sorted(upserts) == [("shop", "space-a", mine), ("shop", "space-b", mine)]
        items = shard.collections["shop"].items
        assert set(items["v1"]) == set(items["v2"]) == set(mine)
        some = mine[0]
        assert float(items["v1"][some][0] @ items["v2"][some][0]) < 0.99  # two spaces


def test_a_version_opened_during_the_write_is_replanned_and_gets_the_write() -> None:
    encoders = [FakeEncoder("space-a"), FakeEncoder("space-c")]
    shards = [FakeShard(0), FakeShard(1)]
    for shard in shards:
        shard.add_collection("shop", "v1", "space-a")
    gateway = fake_gateway(encoders, shards)
    gateway.write_plans.plan("shop", soon())  # a plan from before the build began
    for shard in shards:
        shard.before_upsert = lambda s=shard: s.add_version("shop", "v3", "space-c", pending=True)
    assert gateway.upsert_documents("shop", DOCUMENTS, soon())[0] == 7
    for shard in shards:
        items = shard.collections["shop"].items
        assert set(items["v3"]) == set(items["v1"]) and items["v1"]
    assert len(encoders[1].batches) == 1  # the new space embedded once, on the re-plan


def test_versions_that_keep_changing_give_up_with_a_retryable_error() -> None:
    _, shards, gateway = two_space_stack()

    def churn(shard: FakeShard) -> None:
        shard.collections["shop"].changes += 1
        shard.before_upsert = lambda: churn(shard)

    churn(shards[0])
    with pytest.raises(Unavailable) as caught:
        gateway.upsert_documents("shop", DOCUMENTS, soon())
    assert caught.value.reason == "VERSIONS_CHANGED" and caught.value.retry_after_s


def test_a_version_whose_encoder_is_gone_refuses_the_write_and_names_it() -> None:
    _, shards, _ = two_space_stack()
    gateway = fake_gateway([FakeEncoder("space-a")], shards)  # no encoder of space-b
    with pytest.raises(FailedPrecondition) as caught:
        gateway.upsert_documents("shop", DOCUMENTS, soon())
    assert "v2" in caught.value.message and "retire" in caught.value.message
    assert not any(method == "upsert" for shard in shards for method, _ in shard.calls)


@pytest.mark.parametrize(
    ("documents", "reason"),
    [([], "EMPTY_BATCH"), ([Document("a", "  ")], "EMPTY_TEXT"),
     ([Document("a", "x" * 20_000)], "INPUT_TOO_LARGE")],
)
def test_bad_documents_are_refused_before_any_write(documents, reason) -> None:
    encoders, shards, gateway = two_space_stack()
    with pytest.raises(InvalidArgument) as caught:
        gateway.upsert_documents("shop", documents, soon())
    assert caught.value.reason == reason
    assert not any(e.batches for e in encoders)
