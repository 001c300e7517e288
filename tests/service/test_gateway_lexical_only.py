"""Lexical-only collections over real gRPC with no encoder running: two real index shards,
the gateway creating, writing and searching a collection that has no vectors, the
refusals with their codes and reasons, and the CLI end to end (ingest --lexical-only,
collections, search with no --mode, eval --mode lexical).

The gateway needs its encoders to answer at start-up; the only one is stopped before the
collection is even created, so nothing here can have been embedded."""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path

import grpc
import pytest
from typer.testing import CliRunner

from contentembed.admin.v1 import admin_service_pb2 as admin_pb
from contentembed.admin.v1 import admin_service_pb2_grpc as admin_grpc
from contentembed.cli import main
from contentembed.cli.main import app
from contentembed.client import Client, ImageDocument, TextDocument
from contentembed.common.v1 import types_pb2
from contentembed.search.v1 import search_service_pb2 as pb
from contentembed.search.v1 import search_service_pb2_grpc as search_grpc
from contentembed.services.text_encoder.service import TextEncoderService, TextEncoderSettings
from contentembed.services.text_encoder.tfidf import TfidfModel
from tests.conftest import error_reason, running_service, settings_for_test
from tests.service.test_gateway_routing import gateway_over
from tests.support.images import encoded, photo_like

CATALOG = [
    ("cartridge", "AquaPure pitcher replacement cartridge, order code XK-4471", "filter"),
    ("xk4417", "XK4417 fridge water filter", "filter"),
    ("kettle", "gooseneck electric kettle for pour-over coffee", "kitchen"),
    ("tent", "two-person backpacking tent, 1.4 kg", "outdoor"),
    ("stove", "compact camping stove that runs on gas canisters", "outdoor"),
    ("grinder", "burr coffee grinder with 40 settings", "kitchen"),
]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    """A gateway whose only encoder stopped once it was serving."""
    model = tmp_path_factory.mktemp("tfidf") / "tfidf.json"
    TfidfModel.fit(["an unrelated corpus", "of a few words"]).save(model)
    with ExitStack() as stack:
        encoder = running_service(TextEncoderService, settings_for_test(
            TextEncoderSettings, backend="tfidf", model=str(model)))
        gateway = gateway_over(stack, [encoder.__enter__()])
        encoder.__exit__(None, None, None)  # no encoder from here on
        yield gateway


@pytest.fixture(scope="module")
def stubs(gateway):
    channel = grpc.insecure_channel(gateway.address)
    admin = admin_grpc.AdminServiceStub(channel)
    created = admin.CreateCollection(admin_pb.CreateCollectionRequest(
        name="words", lexical=types_pb2.LexicalConfig(enabled=True, lexical_only=True)))
    assert created.created
    with Client(gateway.address) as client:
        result = client.upsert_documents("words", [
            TextDocument(i, text, {"kind": kind}) for i, text, kind in CATALOG
        ])
        assert result.upserted_count == len(CATALOG)
    yield search_grpc.SearchServiceStub(channel), admin
    channel.close()


def refused(call) -> tuple[str, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code().name, error_reason(caught.value)


def test_created_with_no_space_and_summarised_as_lexical_only(stubs) -> None:
    _, admin = stubs
    summary = admin.GetCollection(admin_pb.GetCollectionRequest(name="words")).collection
    assert (summary.space_id, summary.dim, summary.item_count) == ("", 0, len(CATALOG))
    assert summary.lexical.enabled and summary.lexical.lexical_only


def test_text_searches_are_lexical_with_no_encoder(stubs) -> None:
    search, _ = stubs
    for mode in (pb.RETRIEVAL_MODE_UNSPECIFIED, pb.RETRIEVAL_MODE_LEXICAL):
        answer = search.Search(pb.SearchRequest(
            collection="words", text="XK-4471", top_k=3, retrieval=pb.RetrievalOptions(mode=mode)))
        assert answer.mode == pb.RETRIEVAL_MODE_LEXICAL
        assert [h.id for h in answer.hits][0] == "cartridge"
        assert answer.hits[0].lexical_rank == 1 and not answer.hits[0].HasField("dense_score")
    batch = search.SearchBatch(pb.SearchBatchRequest(
        collection="words", texts=["coffee grinder", "camping tent"], top_k=2))
    assert [r.hits[0].id for r in batch.results] == ["grinder", "tent"]
    filtered = search.Search(pb.SearchRequest(
        collection="words", text="coffee", top_k=5, filter={"kind": "kitchen"}))
    assert {h.id for h in filtered.hits} == {"kettle", "grinder"}


def test_documents_come_back_with_their_text_and_no_vector(stubs) -> None:
    search, _ = stubs
    found = search.GetDocuments(pb.GetDocumentsRequest(
        collection="words", ids=["kettle"], with_vectors=True)).documents
    assert found[0].text == CATALOG[2][1] and not found[0].HasField("vector")


@pytest.mark.parametrize(
    ("request_", "code", "reason"),
    [
        (pb.SearchRequest(collection="words", text="tent",
                          retrieval=pb.RetrievalOptions(mode=pb.RETRIEVAL_MODE_DENSE)),
         "FAILED_PRECONDITION", "DENSE_NOT_ENABLED"),
        (pb.SearchRequest(collection="words", text="tent",
                          retrieval=pb.RetrievalOptions(mode=pb.RETRIEVAL_MODE_HYBRID)),
         "FAILED_PRECONDITION", "DENSE_NOT_ENABLED"),
        (pb.SearchRequest(collection="words", item_id="tent"),
         "FAILED_PRECONDITION", "DENSE_NOT_ENABLED"),
        (pb.SearchRequest(collection="words",
                          image=types_pb2.Image(data=encoded(photo_like(1)))),
         "FAILED_PRECONDITION", "DENSE_NOT_ENABLED"),
    ],
)
def test_whatever_needs_vectors_is_refused(stubs, request_, code, reason) -> None:
    search, _ = stubs
    assert refused(lambda: search.Search(request_)) == (code, reason)


def test_writes_and_versions_that_do_not_apply_are_refused(stubs, gateway) -> None:
    search, admin = stubs
    with Client(gateway.address) as client:
        with pytest.raises(Exception) as caught:
            client.upsert_documents("words", [ImageDocument("pic", encoded(photo_like(2)))])
        assert getattr(caught.value, "reason", "") == "TEXT_REQUIRED"
    assert refused(lambda: search.SearchBatch(pb.SearchBatchRequest(
        collection="words", texts=["tent"],
        retrieval=pb.RetrievalOptions(mode=pb.RETRIEVAL_MODE_DENSE)))) == (
        "FAILED_PRECONDITION", "DENSE_NOT_ENABLED")
    assert refused(lambda: admin.CreateCollection(admin_pb.CreateCollectionRequest(
        name="bad", lexical=types_pb2.LexicalConfig(lexical_only=True)))) == (
        "INVALID_ARGUMENT", "BAD_LEXICAL_CONFIG")
    assert refused(lambda: admin.CreateCollection(admin_pb.CreateCollectionRequest(
        name="bad", space_id="some-space",
        lexical=types_pb2.LexicalConfig(enabled=True, lexical_only=True)))) == (
        "INVALID_ARGUMENT", "BAD_LEXICAL_CONFIG")
    assert refused(lambda: admin.SetCandidate(admin_pb.SetCandidateRequest(
        collection="words", version="v1", shadow_fraction=0.5))) == (
        "FAILED_PRECONDITION", "LEXICAL_ONLY")
    assert refused(lambda: admin.BeginVersion(admin_pb.BeginVersionRequest(
        collection="words", version="v1", space_id="some-space"))) == (
        "FAILED_PRECONDITION", "LEXICAL_ONLY")


def cli(gateway, *args: str):
    return CliRunner().invoke(app, [*args, "-t", gateway.address])


def test_cli_ingest_lexical_only_then_search_collections_and_eval(
    gateway, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(main.console, "_width", 200)  # no folded lines or cells
    rows = [{"id": i, "text": text, "metadata": {"kind": kind}} for i, text, kind in CATALOG]
    catalog = tmp_path / "shop.jsonl"
    catalog.write_text("".join(json.dumps(row) + "\n" for row in rows))
    done = cli(gateway, "ingest", str(catalog), "-c", "shop", "--lexical-only",
               "--language", "english")
    assert done.exit_code == 0, done.output
    assert "lexical only" in done.output and "lexical index in english" in done.output
    assert cli(gateway, "ingest", str(catalog), "-c", "shop", "--lexical-only").exit_code == 0

    # Another kind, either way round: a clear error, exit 1, nothing written.
    hybrid = cli(gateway, "ingest", str(catalog), "-c", "shop", "--hybrid")
    assert hybrid.exit_code == 1 and "lexical-only" in hybrid.output
    with Client(gateway.address) as client:
        # The gateway kept the stopped encoder's route: a dense collection can be created.
        client.create_collection("dense")
    dense = cli(gateway, "ingest", str(catalog), "-c", "dense", "--lexical-only")
    assert dense.exit_code == 1 and "dense only, not lexical-only" in dense.output
    found = cli(gateway, "search", "XK-4471", "-c", "shop", "--json")
    assert found.exit_code == 0, found.output
    answer = json.loads(found.output)
    assert answer["hits"][0]["id"] == "cartridge" and answer["mode"] == "lexical"

    listed = cli(gateway, "collections")
    assert listed.exit_code == 0, listed.output
    line = next(row for row in listed.output.splitlines() if "shop" in row)
    assert "english (only)" in line and "lexical only" in line

    queries = tmp_path / "q.jsonl"
    queries.write_text("".join(json.dumps(q) + "\n" for q in [
        {"id": "1", "text": "XK-4471 cartridge", "relevant": ["cartridge"]},
        {"id": "2", "text": "coffee grinder", "relevant": ["grinder"]},
    ]))
    evaluated = cli(gateway, "eval", str(queries), "-c", "shop", "--mode", "lexical", "--json")
    assert evaluated.exit_code == 0, evaluated.output
    assert '"lexical"' in evaluated.output
