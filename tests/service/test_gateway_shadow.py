"""Shadow traffic, canary and promotion of a candidate bundle through the gateway."""

from __future__ import annotations

from contextlib import ExitStack, contextmanager

import grpc
import numpy as np
import pytest

from contentembed.client import ApiError, Client, Promotion
from contentembed.encoder.v1 import encoder_service_pb2 as encoder_pb
from contentembed.encoder.v1 import encoder_service_pb2_grpc as encoder_grpc
from contentembed.index.v1 import index_service_pb2 as index_pb
from contentembed.index.v1 import index_service_pb2_grpc as index_grpc
from contentembed.services.common.protoconv import vector_to_pb
from contentembed.services.common.sharding import shard_for_id
from contentembed.services.gateway.merge import Hit, merge_top_k
from contentembed.services.gateway.rollout import overlap_at_k
from contentembed.services.gateway.service import GatewayService, GatewaySettings
from contentembed.services.index.collection import HnswCollection
from contentembed.services.index.dense import HnswParams
from contentembed.services.index.service import IndexService, IndexSettings
from tests.conftest import running_service, settings_for_test
from tests.service.test_gateway import DOCUMENTS

QUERIES = ["wireless music", "coffee at home", "sleeping outdoors", "get fit", "hot drinks",
           "beach sound", "trail running", "cook outside", "strength training", "quiet flight"]
# The candidate describes some products differently, so its rankings differ.
REWRITTEN = {"speaker": "a loud party speaker with lights", "kettle": "a teapot for loose leaf tea",
             "tent": "a festival shelter", "yoga-mat": "a rug for stretching"}


def embed(address: str, texts: list[str]) -> np.ndarray:
    with grpc.insecure_channel(address) as channel:
        response = encoder_grpc.EncoderServiceStub(channel).Embed(
            encoder_pb.EmbedRequest(inputs=[encoder_pb.EmbedInput(text=t) for t in texts]))
    return np.frombuffer(response.vectors.data, "<f4").reshape(response.vectors.count, -1)


@contextmanager
def rollout_stack(text_encoder, root):
    """Gateway over two shards holding "shop" live and a loaded candidate "v2"."""
    space = text_encoder.service.backend.space.space_id
    texts = [REWRITTEN.get(d["id"], d["text"]) for d in DOCUMENTS]
    vectors = embed(text_encoder.address, texts)
    with ExitStack() as stack:
        shards = []
        for shard in range(2):
            bundle_root = root / f"shard-{shard}"
            mine = [n for n, d in enumerate(DOCUMENTS) if shard_for_id(d["id"], 2) == shard]
            candidate = HnswCollection("shop", space, vectors.shape[1], HnswParams())
            candidate.upsert([DOCUMENTS[n]["id"] for n in mine], vectors[mine], [{}] * len(mine))
            candidate.write_snapshot(bundle_root / "v2")
            shards.append(stack.enter_context(running_service(IndexService, settings_for_test(
                IndexSettings, shard_index=shard, shard_count=2, bundle_root=bundle_root))))
        gateway = stack.enter_context(running_service(GatewayService, settings_for_test(
            GatewaySettings, encoder_endpoints=[text_encoder.address],
            index_endpoints=[s.address for s in shards], downstream_wait_s=30.0)))
        with Client(gateway.address) as client:
            client.create_collection("shop")
            client.upsert_documents("shop", DOCUMENTS)
        for shard in shards:
            with grpc.insecure_channel(shard.address) as channel:
                index_grpc.IndexServiceStub(channel).LoadBundle(
                    index_pb.LoadBundleRequest(collection="shop", version="v2", path="v2"))
        yield gateway, shards


@pytest.fixture(scope="module")
def rollout(text_encoder, tmp_path_factory):
    with rollout_stack(text_encoder, tmp_path_factory.mktemp("rollout")) as stack:
        yield stack


def candidate_answer(shards, vector: np.ndarray, top_k: int) -> list[str]:
    """What the candidate answers, computed without the gateway: every shard, merged."""
    answers = []
    for shard_index, shard in enumerate(shards):
        with grpc.insecure_channel(shard.address) as channel:
            response = index_grpc.IndexServiceStub(channel).Search(index_pb.SearchRequest(
                collection="shop", query=vector_to_pb(vector), top_k=top_k, version="v2"))
        answers.append([Hit(h.id, h.score, shard_index) for h in response.hits])
    return [hit.id for hit in merge_top_k(answers, top_k)]


def test_shadow_never_changes_answers_and_its_overlap_matches_offline(rollout, text_encoder) -> None:
    gateway, shards = rollout
    with Client(gateway.address) as client:
        before = [[h.id for h in client.search("shop", text=q, top_k=4).hits] for q in QUERIES]
        client.set_candidate("shop", "v2", shadow_fraction=1.0)
        during = [client.search("shop", text=q, top_k=4) for q in QUERIES]
        assert gateway.service.gateway.wait_for_shadow()
        report = client.shadow_report("shop")
        client.set_candidate("shop", "")
    assert [[h.id for h in r.hits] for r in during] == before
    assert all(r.version == "live" for r in during)
    vectors = embed(text_encoder.address, QUERIES)
    offline = np.mean([overlap_at_k(p, candidate_answer(shards, v, 4)) for p, v in zip(before, vectors)])
    assert (report.queries, report.failures) == (len(QUERIES), 0)
    assert report.mean_overlap_at_k == pytest.approx(offline, abs=1e-9)
    assert 0 < report.mean_overlap_at_k < 1  # the rewrite really changed some rankings
    assert (report.primary_version, report.candidate_version) == ("live", "v2")


def test_canary_share_is_within_statistical_bounds(rollout) -> None:
    gateway, _ = rollout
    with Client(gateway.address) as client:
        client.set_candidate("shop", "v2", canary_weight=0.3)
        versions = [client.search("shop", text=QUERIES[n % 10], top_k=2).version for n in range(400)]
        report = client.shadow_report("shop")
        client.set_candidate("shop", "")
    share = versions.count("v2") / len(versions)
    assert set(versions) == {"live", "v2"}
    assert abs(share - 0.3) < 4 * np.sqrt(0.3 * 0.7 / 400)  # 4 sigma: fails ~1 in 15,000 runs
    assert report.canary_queries == versions.count("v2")


def test_promote_and_rollback_flip_every_shard(rollout) -> None:
    gateway, _ = rollout
    with Client(gateway.address) as client:
        with pytest.raises(ApiError) as caught:
            client.promote_candidate("shop")
        assert caught.value.code == "FAILED_PRECONDITION"
        client.set_candidate("shop", "v2", shadow_fraction=0.5)
        assert client.promote_candidate("shop") == Promotion(previous_version="live", version="v2")
        promoted = client.search("shop", text="coffee", top_k=1)
        assert promoted.version == "v2" and promoted.versions == ["v2"]
        info = client.get_collection("shop")
        assert info.version == "v2" and info.serving_versions == ["v2"]
        assert client.rollback_collection("shop") == "live"
        assert client.search("shop", text="coffee", top_k=1).version == "live"


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"version": "v9"}, "FAILED_PRECONDITION"),
        ({"version": "live"}, "FAILED_PRECONDITION"),
        ({"version": "v2", "shadow_fraction": 1.5}, "INVALID_ARGUMENT"),
        ({"version": "v2", "canary_weight": -0.1}, "INVALID_ARGUMENT"),
    ],
)
def test_bad_candidates_are_refused(rollout, kwargs, code) -> None:
    gateway, _ = rollout
    with Client(gateway.address) as client:
        with pytest.raises(ApiError) as caught:
            client.set_candidate("shop", **kwargs)
        assert caught.value.code == code
        with pytest.raises(ApiError) as caught:
            client.shadow_report("shop")
        assert caught.value.code == "NOT_FOUND"


def test_a_promotion_that_fails_on_one_shard_is_undone_on_the_others(text_encoder, tmp_path) -> None:
    with rollout_stack(text_encoder, tmp_path) as (gateway, shards):
        with Client(gateway.address, timeout=5) as client:
            client.set_candidate("shop", "v2", shadow_fraction=0.0)
            shards[1].stop(grace=0)
            with pytest.raises(ApiError) as caught:
                client.promote_candidate("shop")
            assert caught.value.code == "UNAVAILABLE"
        with grpc.insecure_channel(shards[0].address) as channel:
            info = index_grpc.IndexServiceStub(channel).GetCollection(
                index_pb.GetCollectionRequest(name="shop")).collection
        assert info.version == "live"  # flipped, then flipped back
        assert "shop" in gateway.service.gateway.candidates  # kept for a retry


def test_deleting_a_collection_forgets_its_candidate(text_encoder, tmp_path) -> None:
    with rollout_stack(text_encoder, tmp_path) as (gateway, _):
        with Client(gateway.address) as client:
            client.set_candidate("shop", "v2", canary_weight=1.0)
            client.delete_collection("shop")
            client.create_collection("shop")
            client.upsert_documents("shop", DOCUMENTS[:3])
            assert client.search("shop", text="coffee", top_k=1).version == "live"


def test_a_second_gateway_and_a_restarted_one_carry_on_the_same_canary(text_encoder, tmp_path) -> None:
    """The candidate is kept on the shards: a gateway started beside the first (or after
    it went away) canaries it from its first refresh, with no call to it."""
    with rollout_stack(text_encoder, tmp_path) as (gateway, shards):
        with Client(gateway.address) as client:
            client.set_candidate("shop", "v2", canary_weight=1.0)
        for _ in range(2):  # beside the first, then again as if restarted
            with running_service(GatewayService, settings_for_test(
                GatewaySettings, encoder_endpoints=[text_encoder.address],
                index_endpoints=[s.address for s in shards], downstream_wait_s=30.0,
            )) as second, Client(second.address) as other:
                assert {other.search("shop", text=q, top_k=2).version for q in QUERIES} == {"v2"}
                assert other.shadow_report("shop").candidate_version == "v2"
        with Client(gateway.address) as client:
            client.set_candidate("shop", "")
