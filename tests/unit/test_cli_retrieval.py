"""`search`, `eval`, `ingest` and `build` options for hybrid retrieval: how they parse, what
reaches the gateway, and how per-retriever ranks, modes and the union ceiling are shown.
The gateway is a recording one on port 0 (tests/support/recording_gateway.py)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from contentembed.cli.main import app
from contentembed.cli.retrieval import expand_modes, ranks, retrieval_kwargs
from contentembed.client import Hit
from contentembed.pipeline.evaluation import LabelledQuery, evaluate, union_recall
from contentembed.search.v1 import search_service_pb2 as search_pb
from tests.support.recording_gateway import RecordingGateway, recording_gateway

UNREACHABLE = "127.0.0.1:1"  # nothing listens: a command that gets there has gone too far


@pytest.fixture
def gateway() -> Iterator[tuple[RecordingGateway, str]]:
    with recording_gateway() as running:
        yield running


def run(*args: str):
    return CliRunner().invoke(app, list(args))


def test_eval_modes_expand_in_order_once_each() -> None:
    assert expand_modes(None) == [None] and expand_modes([]) == [None]
    assert expand_modes(["hybrid", "dense"]) == ["hybrid", "dense"]
    assert expand_modes(["lexical", "all", "dense"]) == ["lexical", "dense", "hybrid"]


def test_options_become_sdk_arguments_with_defaults_left_to_the_gateway() -> None:
    assert retrieval_kwargs() == {"mode": None, "fusion": None, "alpha": None, "rrf_k": 0,
                                  "depth": 0}
    assert retrieval_kwargs("hybrid", "minmax", 0.0, 20, 200) == {
        "mode": "hybrid", "fusion": "minmax", "alpha": 0.0, "rrf_k": 20, "depth": 200,
    }


def test_ranks_name_the_retriever_that_missed() -> None:
    assert ranks(Hit("a", 1.0, {}, 0, dense_rank=3, lexical_rank=1)) == "3/1"
    assert ranks(Hit("a", 1.0, {}, 0, lexical_rank=2)) == "–/2"


@pytest.mark.parametrize("args", [
    ["--mode", "bm25"], ["--fusion", "mean"], ["--alpha", "1.5"], ["--rrf-k", "-1"],
    ["--rrf-k", "10001"], ["--depth", "-5"],
])
def test_search_refuses_bad_retrieval_options_before_calling(args) -> None:
    done = run("search", "kettle", *args, "-t", UNREACHABLE)
    assert done.exit_code == 2  # a usage error, not the unreachable gateway's
    assert f"Invalid value for '{args[0]}'" in done.output, done.output


def test_language_without_hybrid_is_refused_for_ingest_and_build(tmp_path: Path) -> None:
    catalog = tmp_path / "c.jsonl"
    catalog.write_text(json.dumps({"id": "a", "text": "a kettle"}) + "\n")
    for command in (["ingest", str(catalog)],
                    ["build", str(catalog), "-c", "c", "--out", str(tmp_path / "b")]):
        done = run(*command, "--language", "german", "-t", UNREACHABLE)
        assert done.exit_code == 1 and "--hybrid" in done.output, done.output


def test_ingest_hybrid_into_a_dense_collection_stops_before_writing(gateway, tmp_path) -> None:
    servicer, address = gateway
    catalog = tmp_path / "c.jsonl"
    catalog.write_text(json.dumps({"id": "a", "text": "a kettle"}) + "\n")
    done = run("ingest", str(catalog), "-c", "dense", "--hybrid", "-t", address)
    assert done.exit_code == 1, done.output
    assert "without a lexical index" in done.output
    assert [type(r).__name__ for r in servicer.requests] == ["GetCollectionRequest"]


def test_ingest_hybrid_in_another_language_stops_too(gateway, tmp_path) -> None:
    servicer, address = gateway
    catalog = tmp_path / "c.jsonl"
    catalog.write_text(json.dumps({"id": "a", "text": "a kettle"}) + "\n")
    done = run("ingest", str(catalog), "-c", "docs", "--hybrid", "--language", "German",
               "-t", address)
    assert done.exit_code == 1 and "hybrid in english, not german" in done.output, done.output


def test_search_table_shows_mode_and_each_retrievers_rank_and_score(gateway) -> None:
    servicer, address = gateway
    done = run("search", "kettle", "-c", "docs", "--mode", "hybrid", "--fusion", "minmax",
               "--alpha", "0.3", "--rrf-k", "20", "--depth", "40", "-t", address)
    assert done.exit_code == 0, done.output
    (request,) = servicer.requests
    assert request.retrieval.mode == search_pb.RETRIEVAL_MODE_HYBRID
    assert request.retrieval.fusion == search_pb.FUSION_METHOD_MINMAX
    assert request.retrieval.alpha == pytest.approx(0.3)
    assert (request.retrieval.rrf_k, request.retrieval.depth) == (20, 40)
    assert "dense/lexical" in done.output and "hybrid (minmax)" in done.output
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in done.output.splitlines()
            if line.count("│") > 6]
    cells = {row[2]: row for row in rows}  # by the dense/lexical rank column
    # #, score, dense/lexical, dense, lexical, id, ...
    assert cells["2/1"][:6] == ["1", "0.900", "2/1", "0.800", "7.500", "both"]
    assert cells["–/2"][:6] == ["2", "0.500", "–/2", "–", "6.000", "words"]
    assert cells["1/–"][:6] == ["3", "0.400", "1/–", "0.000", "–", "meaning"]


def test_search_json_and_html_carry_the_retrievers(gateway, tmp_path) -> None:
    _, address = gateway
    page = tmp_path / "hits.html"
    done = run("search", "kettle", "-c", "docs", "--json", "--html", str(page), "-t", address)
    assert done.exit_code == 0, done.output
    result = json.loads(done.stdout[done.stdout.index("{"):])
    assert (result["mode"], result["fusion"]) == ("hybrid", "minmax")
    first, words, _ = result["hits"]
    assert (first["dense_rank"], first["lexical_rank"]) == (2, 1)
    assert (words["dense_score"], words["dense_rank"], words["lexical_rank"]) == (None, None, 2)
    html = page.read_text()
    assert "hybrid (minmax)" in html
    assert 'data-id="both" data-score="0.900000" data-dense-rank="2" data-lexical-rank="1"' in html
    assert "dense – · lexical #2 6.000" in html
    # BM25 and fusion scores have no fixed scale: the bars are relative to the best hit.
    widths = [float(w) for w in re.findall(r'class="bar" style="width: ([0-9.]+)px', html)]
    assert widths[0] == pytest.approx(320.0) and widths[1] == pytest.approx(320 * 0.5 / 0.9, abs=0.1)


def test_dense_answers_keep_the_plain_table(gateway) -> None:
    servicer, address = gateway
    servicer.rankings[search_pb.RETRIEVAL_MODE_DENSE] = ["a", "b"]
    done = run("search", "kettle", "-c", "docs", "--mode", "dense", "-t", address)
    assert done.exit_code == 0, done.output
    assert "dense/lexical" not in done.output and "dense · space s" in done.output


QUERIES = [  # (text, relevant): each mode finds a different share of them
    ("q1", ["a"]), ("q2", ["b"]), ("q3", ["z"]), ("q4", ["y"]),
]


def write_queries(path: Path) -> Path:
    path.write_text("".join(json.dumps({"id": str(n), "text": text, "relevant": relevant}) + "\n"
                            for n, (text, relevant) in enumerate(QUERIES)))
    return path


def test_eval_reports_modes_side_by_side_with_the_union_ceiling(gateway, tmp_path) -> None:
    servicer, address = gateway
    # Every query gets the same list per mode: dense finds a and b, lexical finds a and z,
    # hybrid a; together dense and lexical hold a, b and z: 3 of the 4 queries.
    servicer.rankings = {
        search_pb.RETRIEVAL_MODE_DENSE: ["a", "b", "c"],
        search_pb.RETRIEVAL_MODE_LEXICAL: ["z", "d", "a"],
        search_pb.RETRIEVAL_MODE_HYBRID: ["a", "q", "r"],
    }
    queries = write_queries(tmp_path / "q.jsonl")
    done = run("eval", str(queries), "-c", "docs", "--mode", "all", "--fusion", "rrf",
               "--rrf-k", "10", "--json", "-t", address)
    assert done.exit_code == 0, done.output
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert (figures["version"], figures["queries"]) == ("live", 4)
    modes = figures["modes"]
    assert list(modes) == ["dense", "lexical", "hybrid"]
    assert modes["dense"]["recall@1"] == 0.25 and modes["dense"]["recall@5"] == 0.5
    assert modes["lexical"]["recall@1"] == 0.25 and modes["lexical"]["mrr@10"] == pytest.approx(
        (1 + 1 / 3) / 4)
    assert modes["hybrid"]["recall@10"] == 0.25 and modes["hybrid"]["fusion"] == "rrf"
    # HNSW against exact only for dense (the recording gateway answers both alike).
    assert modes["dense"]["ann_recall@10"] == 1.0
    assert modes["lexical"]["ann_recall@10"] is None and modes["hybrid"]["ann_recall@10"] is None
    assert figures["union_recall@10"] == 0.75

    searches = [r for r in servicer.requests if isinstance(r, search_pb.SearchRequest)]
    exact = [r for r in searches if r.exact]
    assert len(exact) == 4 and {r.retrieval.mode for r in exact} == {search_pb.RETRIEVAL_MODE_DENSE}
    hybrid = [r for r in searches if r.retrieval.mode == search_pb.RETRIEVAL_MODE_HYBRID]
    assert len(hybrid) == 4 and all(r.retrieval.rrf_k == 10 for r in hybrid)
    assert all(r.retrieval.fusion == search_pb.FUSION_METHOD_RRF for r in hybrid)
    # Fusion options are the hybrid runs' only.
    assert all(not r.retrieval.rrf_k for r in searches if r not in hybrid)


def test_eval_table_marks_ann_recall_not_measured(gateway, tmp_path) -> None:
    servicer, address = gateway
    servicer.rankings = {search_pb.RETRIEVAL_MODE_DENSE: ["a"],
                         search_pb.RETRIEVAL_MODE_LEXICAL: ["z"]}
    done = run("eval", str(write_queries(tmp_path / "q.jsonl")), "-c", "docs",
               "--mode", "dense", "--mode", "lexical", "-t", address)
    assert done.exit_code == 0, done.output
    ann = next(line for line in done.output.splitlines() if "ann_recall@10" in line)
    assert [c.strip() for c in ann.split("│")[1:-1]] == ["ann_recall@10", "1.000", "n/a"]
    assert "union ceiling (live)" in done.output and "0.500 of the queries" in done.output


def test_eval_without_modes_keeps_its_flat_json(gateway, tmp_path) -> None:
    servicer, address = gateway
    servicer.rankings = {0: ["a", "b"]}  # unspecified: the gateway's default (dense here)
    done = run("eval", str(write_queries(tmp_path / "q.jsonl")), "-c", "dense", "--json",
               "-t", address)
    assert done.exit_code == 0, done.output
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["version"] == "live" and figures["recall@1"] == 0.25
    assert figures["ann_recall@10"] == 1.0 and "modes" not in figures


def test_eval_lexical_needs_text_queries(tmp_path) -> None:
    (tmp_path / "q.png").write_bytes(b"\x89PNG")
    queries = tmp_path / "q.jsonl"
    queries.write_text(json.dumps({"image": "q.png", "relevant": ["a"]}) + "\n")
    done = run("eval", str(queries), "--mode", "hybrid", "-t", UNREACHABLE)
    assert done.exit_code == 1 and "needs text queries" in done.output, done.output


def test_union_recall_counts_a_relevant_id_in_either_top_list() -> None:
    queries = [LabelledQuery("1", "x", frozenset({"a"})), LabelledQuery("2", "y", frozenset({"b"})),
               LabelledQuery("3", "z", frozenset({"c"}))]
    dense = evaluate("v", queries, lambda q, exact: {"x": ["a"], "y": [], "z": []}[q], ann=False)
    lexical = evaluate("v", queries, lambda q, exact: {"x": [], "y": ["b"], "z": []}[q], ann=False)
    assert dense.ann_recall is None
    assert union_recall(queries, dense, lexical) == pytest.approx(2 / 3)
