"""The model-release loop as a user runs it, through the CLI against real processes:
build → publish → candidate with shadow → shadow-report → eval → promote → rollback, with
online writes made while the new version was being built, and a publish that meets a
shard that is down."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from contentembed.cli.catalog import DEMO_CATALOG, read_labelled_queries
from contentembed.cli.stack import LocalStack
from contentembed.client import Client
from tests.support.processes import kill, service

pytestmark = pytest.mark.e2e
CLI = [sys.executable, "-m", "contentembed.cli.main"]
REWRITTEN = 20  # catalog rows whose description v2 changes


def cli(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    done = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)
    if check:
        assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
    return done


def last_json(done: subprocess.CompletedProcess):
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    stack = LocalStack(run_dir=tmp_path_factory.mktemp("loop"), shard_count=2)
    stack.start(timeout=240)
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def catalogs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("catalogs")
    rows = [json.loads(line) for line in DEMO_CATALOG.read_text().splitlines() if line.strip()]
    v2 = [dict(row) for row in rows]
    for row in v2[:REWRITTEN]:
        row["text"] = f"{row['text']} Now also sold refurbished with a two-year warranty."
    for path, content in ((root / "v1.jsonl", rows), (root / "v2.jsonl", v2)):
        path.write_text("".join(json.dumps(row) + "\n" for row in content))
    return root / "v1.jsonl", root / "v2.jsonl"


def shadow_queries(stack: LocalStack, wanted: int) -> dict:
    deadline = time.monotonic() + 60
    while True:
        report = json.loads(cli("shadow-report", "loop", "--json", "-t", stack.gateway_address).stdout)
        if report["queries"] >= wanted or time.monotonic() > deadline:
            return report
        time.sleep(0.5)


def test_build_publish_shadow_eval_promote_rollback(stack, catalogs, tmp_path) -> None:
    target = ["-t", stack.gateway_address]
    v1_catalog, v2_catalog = catalogs
    built = last_json(cli("build", str(v1_catalog), "-c", "loop", "--out", str(tmp_path / "v1"),
                          "--json", *target))
    assert (built["items"], built["rejects"]) == (300, 0)
    published = last_json(cli("publish", built["bundle"], "-c", "loop", "--json", *target))
    assert published["serving"] and published["version"] == built["version"]
    assert sum(s["items"] for s in published["shards"]) == 300
    v1 = built["version"]

    # v2 is built while the collection keeps taking writes.
    v2 = last_json(cli("build", str(v2_catalog), "-c", "loop", "--out", str(tmp_path / "v2"),
                       "--json", *target))["version"]
    with Client(stack.gateway_address, timeout=60) as client:
        assert client.get_collection("loop").pending_versions == [v2]
        client.upsert_documents("loop", [{"id": "online-1", "text": "a hand-cranked emergency radio"}])
        assert client.delete_documents("loop", ["p001-anc-headphones"]) == 1
    published = last_json(cli("publish", str(tmp_path / "v2"), "-c", "loop", "--json", *target))
    assert not published["serving"]
    listing = cli("versions", "loop", *target).stdout
    assert v2 in listing and "loaded" in listing

    cli("candidate", "loop", v2, "--shadow", "1.0", *target)
    labelled = read_labelled_queries()
    with Client(stack.gateway_address, timeout=60) as client:
        for item in labelled[:10]:
            assert client.search("loop", text=item.query, top_k=5).version == v1
    report = shadow_queries(stack, 10)
    assert report["queries"] >= 10 and report["candidate_version"] == v2
    assert 0.5 < report["mean_overlap_at_k"] <= 1.0  # 20 of 300 descriptions changed

    queries = tmp_path / "queries.jsonl"
    queries.write_text("".join(
        json.dumps({"id": str(n), "text": q.query, "relevant": [q.expected_id]}) + "\n"
        for n, q in enumerate(labelled)
    ))
    figures = last_json(cli("eval", str(queries), "-c", "loop", "--version", v1, "--version", v2,
                            "--json", *target))
    assert [f["version"] for f in figures] == [v1, v2]
    assert all(f["queries"] == len(labelled) for f in figures)
    assert figures[0]["recall@5"] >= 0.9 and figures[0]["ann_recall@10"] >= 0.9

    assert v2 in cli("promote", "loop", *target).stdout
    with Client(stack.gateway_address, timeout=60) as client:
        radio = client.search("loop", text="a hand-cranked emergency radio", top_k=3)
        assert radio.version == v2 and radio.hits[0].id == "online-1"  # written mid-build
        gone = client.search("loop", text="over-ear noise cancelling headphones", top_k=20,
                             exact=True)
        assert "p001-anc-headphones" not in [h.id for h in gone.hits]  # deleted mid-build
    assert v1 in cli("rollback", "loop", *target).stdout
    with Client(stack.gateway_address, timeout=60) as client:
        radio = client.search("loop", text="a hand-cranked emergency radio", top_k=3)
        assert radio.version == v1 and radio.hits[0].id == "online-1"


def test_publish_with_a_shard_down_changes_nothing_and_completes_once_it_is_back(
    stack, catalogs, tmp_path
) -> None:
    target = ["-t", stack.gateway_address]
    v1_catalog, _ = catalogs
    with Client(stack.gateway_address, timeout=60) as client:
        client.create_collection("steady", exist_ok=True)
        client.upsert_documents("steady", [{"id": "a", "text": "a tent"}, {"id": "b", "text": "a stove"}])
    built = last_json(cli("build", str(v1_catalog), "-c", "steady", "--out", str(tmp_path / "b"),
                          "--json", "--version", "v9", *target))
    kill(stack, "index-1")
    failed = cli("publish", built["bundle"], "-c", "steady", *target, check=False)
    assert failed.returncode == 1
    assert "no shard changed" in failed.stderr and "shard 1" in failed.stderr
    stack.poll()  # restarts the shard, as `up` does
    service(stack, "index-1").wait_until_serving(time.monotonic() + 120)
    with Client(stack.gateway_address, timeout=60) as client:
        deadline = time.monotonic() + 30
        while True:
            try:
                info = client.get_collection("steady")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        assert info.version == "live" and "v9" not in info.versions
        assert client.search("steady", text="camping stove", top_k=1).hits[0].id == "b"
    published = last_json(cli("publish", built["bundle"], "-c", "steady", "--json", *target))
    assert not published["serving"]
    with Client(stack.gateway_address, timeout=60) as client:
        info = client.get_collection("steady")
    assert info.version == "live" and "v9" in info.versions
