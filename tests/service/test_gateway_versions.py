"""Versions through the gateway: topology, pending versions that capture the writes made
while a build runs, candidates in another space that receive every write, publishing
over the wire, and search by version (exact or not). Real encoders and shards on port 0."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import grpc
import numpy as np
import pytest

from contentembed.client import ApiError, Client
from contentembed.index.v1 import index_service_pb2 as index_pb
from contentembed.index.v1 import index_service_pb2_grpc as index_grpc
from contentembed.pipeline.publish import Publisher, read_bundle
from contentembed.services.gateway.service import GatewayService, GatewaySettings
from contentembed.services.index.service import IndexService, IndexSettings
from contentembed.services.text_encoder.service import TextEncoderService, TextEncoderSettings
from tests.conftest import running_service, settings_for_test
from tests.service.test_gateway import DOCUMENTS
from tests.support.bundles import write_bundle
from tests.support.tiny_models import save_tiny_clip


class Stack:
    def __init__(self, minilm, clip, shards, gateway, root: Path) -> None:
        self.minilm, self.clip, self.shards, self.gateway, self.root = minilm, clip, shards, gateway, root

    def space(self, encoder) -> str:
        return encoder.service.backend.space.space_id

    def vectors(self, encoder, texts: list[str]) -> np.ndarray:
        return encoder.service.backend.encode(texts).vectors

    def publish(self, collection: str, version: str, encoder, documents: list[dict]) -> None:
        """What `contentembed publish` does with a bundle built from these documents."""
        directory = write_bundle(
            self.root / f"{collection}-{version}", collection, version, self.space(encoder),
            [d["id"] for d in documents], self.vectors(encoder, [d["text"] for d in documents]),
            len(self.shards),
        )
        bundle = read_bundle(directory)
        with Publisher([s.address for s in self.shards]) as publisher:
            new = not publisher.collection_exists(collection)
            publisher.install(bundle, collection, new, publisher.upload(bundle, collection, lambda n: None))

    def begin_on_shards(self, collection: str, version: str, encoder) -> None:
        """BeginVersion straight on the shards, as another gateway replica would."""
        for shard in self.shards:
            with grpc.insecure_channel(shard.address) as channel:
                index_grpc.IndexServiceStub(channel).BeginVersion(index_pb.BeginVersionRequest(
                    collection=collection, version=version, space_id=self.space(encoder),
                    dim=encoder.service.backend.space.dim))


@pytest.fixture(scope="module")
def stack(text_encoder, tmp_path_factory):
    root = tmp_path_factory.mktemp("versions")
    clip_dir = save_tiny_clip(root / "tiny-clip")
    with ExitStack() as exit_stack:
        clip = exit_stack.enter_context(running_service(TextEncoderService, settings_for_test(
            TextEncoderSettings, backend="clip", model=str(clip_dir), max_batch_size=16)))
        assert clip.load_error is None, clip.load_error
        shards = [
            exit_stack.enter_context(running_service(IndexService, settings_for_test(
                IndexSettings, shard_index=n, shard_count=2, data_dir=root / f"shard-{n}")))
            for n in range(2)
        ]
        gateway = exit_stack.enter_context(running_service(GatewayService, settings_for_test(
            GatewaySettings, encoder_endpoints=[text_encoder.address, clip.address],
            index_endpoints=[s.address for s in shards], downstream_wait_s=60.0)))
        yield Stack(text_encoder, clip, shards, gateway, root)


@pytest.fixture
def client(stack):
    with Client(stack.gateway.address, timeout=60.0) as client:
        yield client


def ids_of(result) -> list[str]:
    return [hit.id for hit in result.hits]


def test_the_gateway_lists_its_encoders_and_shards(stack, client) -> None:
    spaces = client.list_spaces()
    assert {(s.modality, s.space_id, s.address) for s in spaces} == {
        ("text", stack.space(stack.minilm), stack.minilm.address),
        ("text", stack.space(stack.clip), stack.clip.address),
    }
    assert {s.dim for s in spaces} == {384, 16}
    assert all(s.model_id and s.max_batch_size for s in spaces)
    assert [(s.shard_index, s.address) for s in client.list_shards()] == [
        (n, shard.address) for n, shard in enumerate(stack.shards)
    ]
    with pytest.raises(ApiError) as caught:  # two text encoders: which one?
        client.create_collection("ambiguous", modality="text")
    assert (caught.value.code, caught.value.reason) == ("FAILED_PRECONDITION", "SPACE_REQUIRED")


def test_a_pending_version_receives_the_writes_made_while_its_bundle_was_built(stack, client) -> None:
    catalog = DOCUMENTS[:10]
    client.create_collection("pending", space_id=stack.space(stack.minilm))
    client.upsert_documents("pending", catalog)
    # The build starts: its version opens in the new model's space, then the catalog is read.
    created = client.begin_version("pending", "v2", stack.space(stack.clip)).created
    assert created and client.get_collection("pending").pending_versions == ["v2"]
    client.upsert_documents("pending", [{"id": "late", "text": "solar lantern for the garden"}])
    client.upsert_documents("pending", [{"id": catalog[0]["id"], "text": "a changed description"}])
    assert client.delete_documents("pending", ["tent"]) == 1
    with pytest.raises(ApiError) as caught:  # no bundle yet: nothing to search
        client.search("pending", text="lantern", version="v2")
    assert caught.value.reason == "VERSION_PENDING"

    stack.publish("pending", "v2", stack.clip, catalog)  # the catalog as read at the start
    info = client.get_collection("pending")
    assert "v2" in info.versions and info.pending_versions == [] and info.version == "live"
    everything = client.search("pending", text="garden", version="v2", exact=True, top_k=50)
    assert everything.space_id == stack.space(stack.clip)
    assert sorted(ids_of(everything)) == sorted({d["id"] for d in catalog} - {"tent"} | {"late"})
    # The online rewrite of an item wins over the catalog's older text.
    changed = stack.vectors(stack.clip, ["a changed description"])[0]
    exact = client.search("pending", text="a changed description", version="v2", exact=True, top_k=1)
    assert exact.hits[0].id == catalog[0]["id"]
    assert exact.hits[0].score == pytest.approx(float(changed @ changed), abs=1e-4)


def test_a_candidate_in_another_space_receives_writes_and_rollback_keeps_them(stack, client) -> None:
    client.create_collection("shop", space_id=stack.space(stack.minilm))
    client.upsert_documents("shop", DOCUMENTS)
    stack.publish("shop", "v2", stack.clip, DOCUMENTS)
    client.set_candidate("shop", "v2", shadow_fraction=0.0)
    client.upsert_documents("shop", [{"id": "during", "text": "inflatable paddle board"}])

    promotion = client.promote_candidate("shop")
    assert (promotion.previous_version, promotion.version) == ("live", "v2")
    promoted = client.search("shop", text="inflatable paddle board", top_k=1)
    assert promoted.space_id == stack.space(stack.clip) and ids_of(promoted) == ["during"]

    client.upsert_documents("shop", [{"id": "after", "text": "insulated water bottle"}])
    assert client.rollback_collection("shop") == "live"
    back = client.search("shop", text="insulated water bottle", top_k=1)
    assert back.space_id == stack.space(stack.minilm) and ids_of(back) == ["after"]
    assert ids_of(client.search("shop", text="inflatable paddle board", top_k=1)) == ["during"]


def test_a_version_whose_space_has_no_encoder_blocks_writes_until_it_is_retired(stack, client) -> None:
    client.create_collection("orphan", space_id=stack.space(stack.minilm))
    stack.publish("orphan", "v2", stack.clip, DOCUMENTS[:4])
    with running_service(GatewayService, settings_for_test(
        GatewaySettings, encoder_endpoints=[stack.minilm.address],
        index_endpoints=[s.address for s in stack.shards], downstream_wait_s=60.0,
    )) as minilm_only, Client(minilm_only.address, timeout=60.0) as other:
        with pytest.raises(ApiError) as caught:
            other.upsert_documents("orphan", DOCUMENTS[:2])
        assert (caught.value.code, caught.value.reason) == ("FAILED_PRECONDITION", "NO_ENCODER_FOR_SPACE")
        assert "v2" in caught.value.message and "retire" in caught.value.message
        with pytest.raises(ApiError) as caught:
            other.delete_version("orphan", "live")  # the serving one stays
        assert caught.value.reason == "VERSION_SERVING"
        assert "v2" not in other.delete_version("orphan", "v2").versions
        assert other.upsert_documents("orphan", DOCUMENTS[:2]).upserted_count == 2


def test_a_version_opened_behind_the_gateways_back_still_gets_the_next_write(stack, client) -> None:
    client.create_collection("replicas", space_id=stack.space(stack.minilm))
    client.upsert_documents("replicas", DOCUMENTS[:3])  # the gateway now holds a write plan
    stack.begin_on_shards("replicas", "v2", stack.clip)  # another gateway replica did this
    client.upsert_documents("replicas", [{"id": "next", "text": "folding camping chair"}])
    stack.publish("replicas", "v2", stack.clip, DOCUMENTS[:3])
    found = client.search("replicas", text="folding camping chair", version="v2", exact=True, top_k=1)
    assert ids_of(found) == ["next"]


def test_exact_search_of_a_version_equals_brute_force_over_the_same_vectors(stack, client) -> None:
    client.create_collection("exact", space_id=stack.space(stack.minilm))
    client.upsert_documents("exact", DOCUMENTS)
    items = stack.vectors(stack.minilm, [d["text"] for d in DOCUMENTS])
    query = stack.vectors(stack.minilm, ["something to cook coffee with"])[0]
    scores = items @ query
    order = np.argsort(-scores)[:5]
    result = client.search("exact", text="something to cook coffee with", exact=True, top_k=5,
                           version="live")
    assert ids_of(result) == [DOCUMENTS[n]["id"] for n in order]
    assert [h.score for h in result.hits] == pytest.approx(scores[order].tolist(), abs=1e-5)


def test_eval_through_the_gateway_equals_numpy_over_the_same_vectors(stack, client, tmp_path) -> None:
    import json

    from typer.testing import CliRunner

    from contentembed.cli.main import app
    from contentembed.pipeline.evaluation import hit_at, ndcg, reciprocal_rank

    client.create_collection("evaluated", space_id=stack.space(stack.minilm))
    client.upsert_documents("evaluated", DOCUMENTS)
    labelled = [
        ("music on the go", ["earbuds", "headphones"]),
        ("making coffee", ["espresso"]),
        ("sleeping in the mountains", ["sleeping-bag", "tent"]),
        ("lifting weights at home", ["dumbbells"]),
        ("a quiet flight", ["kettle"]),  # a query whose relevant item ranks low
    ]
    queries = tmp_path / "queries.jsonl"
    queries.write_text("".join(
        json.dumps({"id": str(n), "text": text, "relevant": relevant}) + "\n"
        for n, (text, relevant) in enumerate(labelled)
    ))
    done = CliRunner().invoke(app, ["eval", str(queries), "-c", "evaluated", "--json",
                                    "-t", stack.gateway.address])
    assert done.exit_code == 0, done.output
    figures = json.loads(done.output.strip().splitlines()[-1])

    items = stack.vectors(stack.minilm, [d["text"] for d in DOCUMENTS])
    ids = [d["id"] for d in DOCUMENTS]
    rankings = [
        [ids[n] for n in np.argsort(-(items @ query), kind="stable")]
        for query in stack.vectors(stack.minilm, [text for text, _ in labelled])
    ]
    relevant = [frozenset(r) for _, r in labelled]
    expected = {
        **{f"recall@{k}": np.mean([hit_at(r, rel, k) for r, rel in zip(rankings, relevant)])
           for k in (1, 5, 10)},
        "mrr@10": np.mean([reciprocal_rank(r, rel) for r, rel in zip(rankings, relevant)]),
        "ndcg@10": np.mean([ndcg(r, rel) for r, rel in zip(rankings, relevant)]),
    }
    for key, value in expected.items():
        assert figures[key] == pytest.approx(value, abs=1e-9), key
    assert figures["ann_recall@10"] == 1.0  # 12 items: HNSW finds them all
    assert (figures["queries"], figures["version"]) == (len(labelled), "live")
    assert 0 < figures["recall@1"] < figures["recall@10"]  # the numbers are not degenerate


def test_a_collection_is_created_by_model_name(stack, client) -> None:
    minilm = next(s for s in client.list_spaces() if s.space_id == stack.space(stack.minilm))
    info, created = client.create_collection("by-model", model=minilm.model_id)
    assert created and info.space_id == minilm.space_id
    clip = next(s for s in client.list_spaces() if s.space_id == stack.space(stack.clip))
    assert client.create_collection("by-clip", model=clip.model_id).collection.space_id == clip.space_id
    with pytest.raises(ApiError) as caught:
        client.create_collection("by-nothing", model="no-such-model")
    assert (caught.value.code, caught.value.reason) == ("FAILED_PRECONDITION", "NO_ENCODER_FOR_MODEL")
    assert minilm.model_id in caught.value.message
    with pytest.raises(ApiError):
        client.get_collection("by-nothing")  # nothing was created


def test_hits_carry_the_metadata_fields_asked_for(stack, client) -> None:
    client.create_collection("fields", space_id=stack.space(stack.minilm))
    client.upsert_documents("fields", [
        {"id": "k", "text": "gooseneck kettle", "metadata": {"price": 39, "brand": "Fellow", "tags": ["tea"]}},
    ])
    full = client.search("fields", text="kettle", top_k=1).hits[0]
    assert full.metadata == {"price": 39, "brand": "Fellow", "tags": ["tea"]}
    some = client.search("fields", text="kettle", top_k=1, metadata_fields=["brand", "absent"]).hits[0]
    assert (some.id, some.metadata) == ("k", {"brand": "Fellow"})
    bare = client.search("fields", text="kettle", top_k=1, omit_metadata=True).hits[0]
    assert (bare.id, bare.metadata, bare.score) == ("k", {}, pytest.approx(full.score))
