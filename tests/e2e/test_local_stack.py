"""End to end: the services as real processes, started the way `contentembed up` does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from contentembed.cli.catalog import DEMO_CATALOG, read_labelled_queries
from contentembed.cli.main import ingest_documents
from contentembed.cli.stack import LocalStack
from contentembed.client import ApiError, Client

pytestmark = pytest.mark.e2e
CLI = [sys.executable, "-m", "contentembed.cli.main"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    stack = LocalStack(run_dir=tmp_path_factory.mktemp("stack"), shard_count=2)
    stack.start(timeout=240)
    try:
        with Client(stack.gateway_address, timeout=60) as client:
            ingest_documents(client, "products", DEMO_CATALOG, 64, show_progress=False)
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def client(stack):
    with Client(stack.gateway_address) as client:
        yield client


def test_every_process_reports_serving(stack) -> None:
    assert [s.name for s in stack.services] == [
        "text-encoder", "image-encoder", "index-0", "index-1", "gateway"
    ]
    for service in stack.services:
        with grpc.insecure_channel(service.address) as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest()).status
        assert status == health_pb2.HealthCheckResponse.SERVING, service.name


def test_demo_catalog_is_fully_ingested_across_shards(client) -> None:
    info = client.get_collection("products")
    catalog_size = sum(1 for line in DEMO_CATALOG.read_text().splitlines() if line.strip())
    assert info.item_count == catalog_size == 300
    assert info.shard_count == 2


def test_paraphrased_queries_find_their_items(client) -> None:
    labelled = read_labelled_queries()
    assert len(labelled) >= 20
    misses = []
    for item in labelled:
        ids = [hit.id for hit in client.search("products", text=item.query, top_k=5).hits]
        if item.expected_id not in ids:
            misses.append((item.query, item.expected_id, ids))
    recall = 1 - len(misses) / len(labelled)
    assert recall >= 0.9, misses


@pytest.mark.parametrize(
    ("kwargs", "code", "mentions"),
    [
        ({"collection": "products", "text": "", "top_k": 5}, "INVALID_ARGUMENT", "empty"),
        ({"collection": "products", "text": "a tent", "top_k": -1}, "INVALID_ARGUMENT", "top_k"),
        ({"collection": "products", "text": "a tent", "top_k": 10_000_000}, "INVALID_ARGUMENT", "top_k"),
        ({"collection": "no-such-collection", "text": "a tent", "top_k": 5}, "NOT_FOUND", "no-such-collection"),
    ],
)
def test_bad_input_gets_clear_errors_and_services_stay_up(stack, client, kwargs, code, mentions) -> None:
    with pytest.raises(ApiError) as caught:
        client.search(**kwargs)
    assert caught.value.code == code
    assert mentions in caught.value.message
    stack.check_alive()
    assert len(client.search("products", text="a tent for two", top_k=3).hits) == 3


def test_cli_search_prints_ranked_json(stack) -> None:
    out = subprocess.run(
        [*CLI, "search", "keep my coffee hot on the commute", "--json", "-k", "3",
         "--target", stack.gateway_address],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout
    result = json.loads(out)
    scores = [hit["score"] for hit in result["hits"]]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True)
    assert result["space_id"].startswith("all-MiniLM-L6-v2@")


def test_cli_ingest_rejects_a_bad_catalog_line_and_writes_the_rest(stack, tmp_path: Path) -> None:
    catalog = tmp_path / "bad.jsonl"
    catalog.write_text('{"id": "x1", "text": "fine"}\n{"id": "x2"}\n{"id": "x3", "text": "also fine"}\n')
    run = subprocess.run(
        [*CLI, "ingest", str(catalog), "--collection", "cli-test", "--target", stack.gateway_address],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert "upserted 2 documents" in run.stdout and "1 rows rejected" in run.stdout
    (reject,) = map(json.loads, (tmp_path / "bad.rejects.jsonl").read_text().splitlines())
    assert (reject["line"], reject["id"]) == (2, "x2") and "text" in reject["reason"]


def test_sigterm_drains_and_exits_cleanly(tmp_path: Path) -> None:
    # A one-shard index process on its own: SIGTERM -> NOT_SERVING, drain, exit 0.
    port_file = tmp_path / "index.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "contentembed.services.index", "--port", "0", "--metrics-port", "-1",
         "--port-file", str(port_file)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=os.environ.copy(),
    )
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists():
            assert process.poll() is None, process.stdout.read().decode()
            assert time.monotonic() < deadline, "index never opened its port"
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        log = process.stdout.read().decode()
        assert "draining" in log and '"stopped"' in log
    finally:
        if process.poll() is None:
            process.kill()


def test_stopped_encoder_gives_deadline_exceeded_within_the_deadline(stack) -> None:
    encoder = next(s for s in stack.services if s.name == "text-encoder")
    os.kill(encoder.pid, signal.SIGSTOP)
    try:
        with Client(stack.gateway_address) as client:
            started = time.monotonic()
            with pytest.raises(ApiError) as caught:
                # A query never asked before: the embedding cache cannot answer it.
                client.search("products", text=f"frozen encoder probe {time.time()}", top_k=3, timeout=1.0)
            elapsed = time.monotonic() - started
        assert caught.value.code == "DEADLINE_EXCEEDED"
        assert elapsed < 1.0 + 0.5
    finally:
        os.kill(encoder.pid, signal.SIGCONT)
    with Client(stack.gateway_address) as client:
        assert client.search("products", text="a tent for two", top_k=1).hits
