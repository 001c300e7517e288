"""`contentembed build` against real encoders: bundles that verify, load into a real index
server, equal across slicings, survive a SIGKILL and reuse a previous bundle."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from contentembed.index.v1 import index_service_pb2 as pb
from contentembed.index.v1 import index_service_pb2_grpc as pb_grpc
from contentembed.pipeline.build import (
    BuildError,
    BuildOptions,
    merge_only,
    run_build,
    verify_bundle,
)
from contentembed.pipeline.catalog import DEMO_CATALOG
from contentembed.pipeline.embedders import LocalOptions
from contentembed.services.common.sharding import shard_for_id
from contentembed.services.image_encoder.service import ImageEncoderService, ImageEncoderSettings
from contentembed.services.index.collection import HnswCollection
from contentembed.services.index.persistence import verify_manifest
from contentembed.services.index.service import IndexService, IndexSettings
from tests.conftest import running_service, settings_for_test
from tests.support.images import encoded, photo_like

CLI = [sys.executable, "-m", "contentembed.cli.main"]
CHUNK = 16  # = the text_encoder fixture's max_batch_size: one Embed call per chunk
SHARDS = 2


def quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def image_encoder():
    settings = settings_for_test(ImageEncoderSettings, backend="pixels", max_batch_size=8)
    with running_service(ImageEncoderService, settings) as runtime:
        assert runtime.load_error is None, runtime.load_error
        yield runtime


@pytest.fixture(scope="module")
def image_catalog(tmp_path_factory) -> Path:
    """Three dozen generated images, one undecodable file and one missing file."""
    root = tmp_path_factory.mktemp("images")
    (root / "img").mkdir()
    rows = []
    for i in range(36):
        (root / "img" / f"{i}.png").write_bytes(encoded(photo_like(i)))
        rows.append({"id": f"img-{i:03d}", "image": f"img/{i}.png", "metadata": {"n": i}})
    (root / "img" / "bad.png").write_bytes(b"these bytes are no image")
    rows.insert(10, {"id": "img-bad", "image": "img/bad.png"})
    rows.append({"id": "img-missing", "image": "img/nope.png"})
    path = root / "catalog.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def text_options(text_encoder, out: Path, **changes) -> BuildOptions:
    options = BuildOptions(
        catalog=DEMO_CATALOG, collection="products", out=out, shards=SHARDS, chunk_size=CHUNK,
        encoders=[text_encoder.address], offline=True, progress=False,
    )
    return replace(options, **changes)


@pytest.fixture(scope="module")
def demo_bundle(text_encoder, tmp_path_factory):
    """The demo catalog built once, uninterrupted: the reference for the other tests."""
    root = tmp_path_factory.mktemp("bundles")
    started = time.perf_counter()
    outcome = run_build(text_options(text_encoder, root / "demo"), quiet)
    elapsed = time.perf_counter() - started
    print(f"\ndemo build: {outcome.embedded} rows in {elapsed:.1f} s "
          f"({outcome.embedded / elapsed:.0f} items/s)")
    assert outcome.embedded == 300 and outcome.result is not None
    return outcome.result


def load_parts(bundle: Path) -> dict[int, HnswCollection]:
    manifest = verify_bundle(bundle)
    parts = {}
    for part in manifest["parts"]:
        directory = bundle / part["dir"]
        parts[part["shard"]] = HnswCollection.from_snapshot(
            directory, verify_manifest(directory), manifest["collection"]
        )
    return parts


def part_ids(part: HnswCollection) -> list[str]:
    return part.list_ids("", 100_000)[0]


def test_demo_and_image_bundles_verify_search_and_load_into_an_index(
    demo_bundle, text_encoder, image_encoder, image_catalog, tmp_path, channel_to
) -> None:
    manifest = verify_bundle(demo_bundle.bundle)  # every sha256 in the manifest matches
    assert manifest["items"] == 300 and manifest["rejects"] == 0
    assert manifest["shard_count"] == SHARDS and manifest["modalities"] == ["text"]
    assert manifest["space"]["model_id"] == "all-MiniLM-L6-v2"
    assert demo_bundle.version == manifest["version"] and demo_bundle.version.startswith("b-")
    parts = load_parts(demo_bundle.bundle)
    content = json.loads((demo_bundle.bundle / "content.json").read_text())
    assert len(content) == 300
    for shard, part in parts.items():
        ids = part_ids(part)
        assert ids and all(shard_for_id(i, SHARDS) == shard for i in ids)
        assert part.version == demo_bundle.version and part.seq == 1
        for item in part.get(ids[:: max(1, len(ids) // 10)]):
            assert part.search(item.vector, 1)[0].id == item.id
    assert sum(len(part_ids(p)) for p in parts.values()) == 300
    first = parts[0].get(part_ids(parts[0])[:1])[0]
    assert "category" in first.metadata

    # Images through the remote pixels encoder: the bad file is found by bisection.
    images = run_build(replace(text_options(text_encoder, tmp_path / "bundles" / "images"),
                               catalog=image_catalog, collection="pictures",
                               encoders=[image_encoder.address], chunk_size=8), quiet)
    assert images.result is not None
    assert (images.result.items, images.result.rejects) == (36, 2)
    rejects = [json.loads(line) for line in (tmp_path / "bundles" / "images" / "rejects.jsonl")
               .read_text().splitlines()]
    assert [(r["line"], r["id"]) for r in rejects] == [(11, "img-bad"), (38, "img-missing")]
    assert "the encoder refused it" in rejects[0]["reason"] and "not a readable" in rejects[0]["reason"]
    assert "missing" in rejects[1]["reason"]
    image_parts = load_parts(tmp_path / "bundles" / "images")
    for part in image_parts.values():
        for item in part.get(part_ids(part)):
            assert part.search(item.vector, 1)[0].id == item.id

    # The same backends in-process (--local) write the same bundle, byte for byte.
    local = run_build(replace(text_options(text_encoder, tmp_path / "local-images"),
                              catalog=image_catalog, collection="pictures", encoders=[],
                              local=LocalOptions(image_backend="pixels"), chunk_size=8), quiet)
    assert local.result is not None and local.result.digest == images.result.digest

    # Each part loads into a real index server from its bundle root.
    for shard in range(SHARDS):
        settings = settings_for_test(IndexSettings, data_dir=tmp_path / f"data-{shard}",
                                     bundle_root=tmp_path / "bundles", shard_index=shard,
                                     shard_count=SHARDS)
        with running_service(IndexService, settings) as runtime:
            stub = pb_grpc.IndexServiceStub(channel_to(runtime.address))
            loaded = stub.LoadBundle(pb.LoadBundleRequest(
                collection="pictures", version=images.version, path=f"images/shard-{shard:04d}"))
            assert loaded.item_count == len(part_ids(image_parts[shard]))
            item = image_parts[shard].get(part_ids(image_parts[shard])[:1])[0]
            from contentembed.common.v1 import types_pb2

            query = types_pb2.Vector(data=np.asarray(item.vector, "<f4").tobytes(),
                                     dim=len(item.vector))
            hits = stub.Search(pb.SearchRequest(collection="pictures", query=query, top_k=1,
                                                version=images.version)).hits
            assert hits[0].id == item.id


def test_three_slices_and_a_merge_equal_a_single_build(demo_bundle, text_encoder, tmp_path) -> None:
    options = text_options(text_encoder, tmp_path / "sliced")
    embedded = 0
    for index in range(3):
        outcome = run_build(replace(options, slice=(index, 3)), quiet)
        assert outcome.result is None
        embedded += outcome.embedded
        assert (tmp_path / "sliced.work" / f"slice-{index}-of-3" / "complete.json").is_file()
    assert embedded == 300 and not (tmp_path / "sliced").exists()
    merged = merge_only(replace(options, merge_only=True), quiet).result
    assert merged is not None and merged.version == demo_bundle.version
    single, sliced = load_parts(demo_bundle.bundle), load_parts(tmp_path / "sliced")
    for shard in range(SHARDS):
        ids = part_ids(single[shard])
        assert part_ids(sliced[shard]) == ids
        a = np.stack([i.vector for i in single[shard].get(ids)])
        b = np.stack([i.vector for i in sliced[shard].get(ids)])
        assert np.abs(a - b).max() < 1e-6


def test_merge_names_a_missing_slice(text_encoder, tmp_path) -> None:
    from contentembed.pipeline.build import SlicesMissing

    options = text_options(text_encoder, tmp_path / "partial", chunk_size=64)
    run_build(replace(options, slice=(1, 3)), quiet)
    with pytest.raises(SlicesMissing, match=r"slice 0/3 is missing.*slice 2/3 is missing") as caught:
        merge_only(replace(options, merge_only=True), quiet)
    assert (caught.value.missing, caught.value.count) == ([0, 2], 3)
    assert not (tmp_path / "partial").exists()
    assert not list(tmp_path.glob("partial.staging*"))


def test_cli_merge_exits_3_while_slices_are_missing_then_merges(text_encoder, tmp_path) -> None:
    """What each pod of the Indexed Job does after its slice (deploy/k8s/base/build-job.yaml):
    `build --merge`; exit code 3 means another slice is still running and its pod merges."""
    from typer.testing import CliRunner

    from contentembed.cli.main import EXIT_SLICES_MISSING, app

    out = tmp_path / "job"
    options = text_options(text_encoder, out, chunk_size=64)
    merge = ["build", str(DEMO_CATALOG), "-c", "products", "--out", str(out), "--merge",
             "--offline", "--no-progress"]
    runner = CliRunner()
    run_build(replace(options, slice=(0, 2)), quiet)
    early = runner.invoke(app, merge)
    assert early.exit_code == EXIT_SLICES_MISSING == 3, early.output
    assert not out.exists()
    run_build(replace(options, slice=(1, 2)), quiet)
    last = runner.invoke(app, [*merge, "--json"])
    assert last.exit_code == 0, last.output
    again = runner.invoke(app, [*merge, "--json"])  # a second pod merging: harmless
    assert again.exit_code == 0, again.output
    first, second = (json.loads(r.stdout.strip().splitlines()[-1]) for r in (last, again))
    assert not first["already_built"] and second["already_built"]
    assert first["digest"] == second["digest"]


def test_concurrent_merges_agree_on_one_bundle(text_encoder, tmp_path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    options = text_options(text_encoder, tmp_path / "raced", chunk_size=64)
    for index in range(2):
        run_build(replace(options, slice=(index, 2)), quiet)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: merge_only(replace(options, merge_only=True), quiet).result,
                                range(4)))
    assert len({r.digest for r in results}) == 1
    assert sum(not r.already_built for r in results) >= 1
    verify_bundle(tmp_path / "raced")
    assert not list(tmp_path.glob("raced.staging*"))


def test_a_killed_build_resumes_to_the_same_digest(demo_bundle, text_encoder, tmp_path) -> None:
    out = tmp_path / "killed"
    command = [*CLI, "build", str(DEMO_CATALOG), "-c", "products", "--out", str(out),
               "--offline", "--shards", str(SHARDS), "--encoder", text_encoder.address,
               "--chunk-size", str(CHUNK), "--json", "--no-progress"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    slice_dir = out.with_name("killed.work") / "slice-0-of-1"
    deadline = time.monotonic() + 120
    try:
        while len(list(slice_dir.glob("chunk-*"))) < 3:
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "no chunk was written"
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
    done = len(list(slice_dir.glob("chunk-*")))
    assert 3 <= done < 300 // CHUNK + 1 and not out.exists()
    rerun = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert summary["digest"] == demo_bundle.digest
    assert summary["resumed_chunks"] >= 3 and summary["embedded"] <= 300 - 3 * CHUNK
    assert (summary["items"], summary["rejects"]) == (300, 0)


def test_from_reuses_unchanged_rows(demo_bundle, text_encoder, image_encoder, image_catalog,
                                    tmp_path) -> None:
    rows = [json.loads(line) for line in DEMO_CATALOG.read_text().splitlines() if line.strip()]
    changed = {rows[i]["id"] for i in (0, 50, 100)}
    for i in (0, 50, 100):
        rows[i]["text"] += " Now in a new colour."
    rows = rows[:-2] + [{"id": f"new-{i}", "text": f"brand new product number {i}"} for i in range(4)]
    catalog = tmp_path / "catalog-v2.jsonl"
    catalog.write_text("".join(json.dumps(r) + "\n" for r in rows))
    outcome = run_build(text_options(text_encoder, tmp_path / "v2", catalog=catalog,
                                     previous=demo_bundle.bundle), quiet)
    assert (outcome.reused, outcome.embedded) == (295, 7)
    assert outcome.result is not None and outcome.result.items == 302
    old, new = load_parts(demo_bundle.bundle), load_parts(tmp_path / "v2")
    for shard in range(SHARDS):
        kept = [i for i in part_ids(old[shard]) if i in set(part_ids(new[shard])) - changed]
        a = np.stack([i.vector for i in old[shard].get(kept)])
        b = np.stack([i.vector for i in new[shard].get(kept)])
        assert np.abs(a - b).max() < 1e-6  # the stored vector, re-normalized at most
    # Another model: nothing is reused, and the build says so.
    other = run_build(replace(text_options(text_encoder, tmp_path / "pics"), catalog=image_catalog,
                              encoders=[image_encoder.address], previous=demo_bundle.bundle), quiet)
    assert other.reused == 0 and other.embedded == 37
    assert any("another model" in note for note in other.notes)


def test_a_version_already_loaded_is_its_own_error() -> None:
    """The scheduled build Job treats it (CLI exit code 4) as "nothing new", not a failure."""
    from types import SimpleNamespace

    from contentembed.cli.main import EXIT_VERSION_EXISTS
    from contentembed.pipeline.build import VersionExists, capture_online_writes

    client = SimpleNamespace(get_collection=lambda name: SimpleNamespace(versions=["b-1"]))
    with pytest.raises(VersionExists, match="already has version b-1"):
        capture_online_writes(client, "products", "b-1", "space")
    assert EXIT_VERSION_EXISTS == 4


# -- build --hybrid ----------------------------------------------------------------------
def hybrid_catalog(path: Path, extra: list[dict] | None = None) -> Path:
    """40 demo rows, two rows findable by a code only, and ``extra``."""
    rows = [json.loads(line) for line in DEMO_CATALOG.read_text().splitlines()[:40]]
    rows += [{"id": "code-grinder", "text": "Conical burr grinder ZX-4471, forty settings."},
             {"id": "code-kettle", "text": "Gooseneck kettle KT-9902 for pour-over coffee."}]
    path.write_text("".join(json.dumps(r) + "\n" for r in [*rows, *(extra or [])]))
    return path


def test_a_hybrid_bundle_carries_the_texts_and_builds_reproducibly(text_encoder, tmp_path) -> None:
    catalog = hybrid_catalog(tmp_path / "catalog.jsonl")
    texts = {r["id"]: r["text"] for r in map(json.loads, catalog.read_text().splitlines())}
    out = tmp_path / "hybrid"
    options = text_options(text_encoder, out, catalog=catalog, lexical="")
    first = run_build(options, quiet).result
    assert first is not None and first.items == 42
    manifest = verify_bundle(out)
    assert manifest["lexical"] == {"enabled": True, "language": "english"}
    dense = run_build(text_options(text_encoder, tmp_path / "dense", catalog=catalog), quiet).result
    assert dense is not None and dense.version != first.version  # another version name
    assert "lexical" not in verify_bundle(tmp_path / "dense")

    parts = load_parts(out)
    for part in parts.values():
        assert part.lexical_params is not None and part.lexical_params.language == "english"
        ids = part_ids(part)
        assert {item.id: item.text for item in part.get(ids)} == {i: texts[i] for i in ids}
    owner = parts[shard_for_id("code-grinder", SHARDS)]
    assert [h.id for h in owner.search_lexical_batch(["ZX-4471"], 3)[0]] == ["code-grinder"]

    # Resumed after losing a chunk (and the bundle): the same digest, texts included.
    shutil.rmtree(out)
    shutil.rmtree(out.with_name("hybrid.work") / "slice-0-of-1" / "chunk-000001")
    resumed = run_build(options, quiet)
    assert resumed.result is not None and resumed.result.digest == first.digest
    assert resumed.embedded == CHUNK and resumed.resumed_chunks == 2  # of 3 chunks

    # Slices and a merge keep the texts and the lexical config.
    sliced = tmp_path / "sliced"
    for index in range(2):
        run_build(replace(options, out=sliced, slice=(index, 2)), quiet)
    merged = merge_only(replace(options, out=sliced, merge_only=True, lexical=None), quiet).result
    assert merged is not None and merged.version == first.version
    assert verify_bundle(sliced)["lexical"] == manifest["lexical"]
    for shard, part in load_parts(sliced).items():
        ids = part_ids(part)
        assert ids == part_ids(parts[shard])
        assert [item.text for item in part.get(ids)] == [texts[i] for i in ids]
    with pytest.raises(BuildError, match="built dense, not --hybrid"):
        merge_only(replace(text_options(text_encoder, tmp_path / "dense"), catalog=catalog,
                           merge_only=True, lexical=""), quiet)


def test_hybrid_bundles_publish_and_serve_lexical_search(text_encoder, tmp_path) -> None:
    from typer.testing import CliRunner

    from contentembed.cli.main import app
    from contentembed.client import Client
    from tests.support.stacks import gateway_stack

    runner = CliRunner()
    catalog = hybrid_catalog(tmp_path / "catalog.jsonl")
    with gateway_stack(text_encoder, shard_count=SHARDS) as gateway:
        target = ["-t", gateway.address]

        def cli(*args: str):
            return runner.invoke(app, [*args, *target])

        def build(out: str, *args: str):
            return cli("build", str(catalog), "--out", str(tmp_path / out), "--no-progress",
                       "--chunk-size", str(CHUNK), "--json", *args)

        done = build("v1", "-c", "shop", "--hybrid")
        assert done.exit_code == 0, done.output
        version = json.loads(done.stdout.strip().splitlines()[-1])["version"]
        published = cli("publish", str(tmp_path / "v1"), "-c", "shop", "--json")
        assert published.exit_code == 0, published.output
        assert json.loads(published.stdout.strip().splitlines()[-1])["serving"]
        with Client(gateway.address, timeout=60.0) as client:
            info = client.get_collection("shop")
            assert (info.lexical, info.lexical_language, info.version) == (True, "english", version)
        found = cli("search", "KT-9902", "-c", "shop", "--mode", "lexical", "--json")
        assert found.exit_code == 0, found.output
        assert [h["id"] for h in json.loads(found.stdout)["hits"]] == ["code-kettle"]

        # A dense build of the hybrid collection, or one in another language, is refused
        # before anything is embedded; so is a hybrid build of a dense collection.
        for args, words in [
            (["-c", "shop"], "build with --hybrid --language english"),
            (["-c", "shop", "--hybrid", "--language", "german"], "hybrid in english, not german"),
        ]:
            refused = build("refused", *args)
            assert refused.exit_code == 1 and words in refused.output, refused.output
        with Client(gateway.address, timeout=60.0) as client:
            client.create_collection("plain")
            assert client.get_collection("shop").pending_versions == []
        refused = build("refused", "-c", "plain", "--hybrid")
        assert refused.exit_code == 1 and "without a lexical index" in refused.output
        assert not (tmp_path / "refused").exists()

        # The next hybrid release: loaded beside the serving one, then activated.
        hybrid_catalog(catalog, [{"id": "code-lamp", "text": "Headlamp HL-5150, 400 lumens."}])
        done = build("v2", "-c", "shop", "--hybrid")
        assert done.exit_code == 0, done.output
        v2 = json.loads(done.stdout.strip().splitlines()[-1])["version"]
        assert cli("publish", str(tmp_path / "v2"), "-c", "shop").exit_code == 0
        assert cli("activate", "shop", v2).exit_code == 0
        found = cli("search", "HL-5150", "-c", "shop", "--mode", "hybrid", "--json")
        assert found.exit_code == 0, found.output
        hit = json.loads(found.stdout)["hits"][0]
        assert (hit["id"], hit["lexical_rank"]) == ("code-lamp", 1)
