"""`contentembed ingest` against a real gateway: image catalogs, collections created in the
space of the catalog's modality, and rows refused on the way written to a rejects file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from contentembed.cli import main
from contentembed.cli.main import app
from contentembed.client import Client
from tests.support.images import encoded, photo_like
from tests.support.stacks import gateway_stack


@pytest.fixture(scope="module")
def gateway(text_encoder):
    with gateway_stack(text_encoder) as gateway:
        yield gateway


def ingest(gateway, *args: str):
    return CliRunner().invoke(app, ["ingest", *args, "-t", gateway.address])


def write_catalog(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_an_image_catalog_lands_in_the_image_encoders_space_with_bad_rows_rejected(
    gateway, tmp_path
) -> None:
    (tmp_path / "img").mkdir()
    rows = []
    for n in range(12):
        (tmp_path / "img" / f"{n}.png").write_bytes(encoded(photo_like(n)))
        rows.append({"id": f"photo-{n}", "image": f"img/{n}.png", "metadata": {"n": n}})
    (tmp_path / "img" / "broken.png").write_bytes(b"not an image at all")
    rows.insert(5, {"id": "broken", "image": "img/broken.png"})
    rows.append({"id": "gone", "image": "img/missing.png"})
    rows.append({"id": "photo-3", "image": "img/4.png"})  # a duplicate id
    catalog = write_catalog(tmp_path / "photos.jsonl", rows)
    rejects = tmp_path / "photos.rejects.jsonl"

    done = ingest(gateway, str(catalog), "-c", "photos", "--batch-size", "4",
                  "--rejects", str(rejects))
    assert done.exit_code == 0, done.output
    found = {r["line"]: r for r in map(json.loads, rejects.read_text().splitlines())}
    assert set(found) == {6, 14, 15}
    assert found[6]["id"] == "broken" and "refused" in found[6]["reason"]
    assert "missing" in found[14]["reason"] or "not found" in found[14]["reason"].lower()
    assert "duplicate" in found[15]["reason"]
    with Client(gateway.address) as client:
        info = client.get_collection("photos")
        pixels = next(s for s in client.list_spaces() if s.modality == "image")
        assert (info.item_count, info.space_id) == (12, pixels.space_id)
        hit = client.search("photos", image=encoded(photo_like(7)), top_k=1).hits[0]
    assert (hit.id, hit.metadata) == ("photo-7", {"n": 7})


def test_too_many_rejects_stop_the_run_with_exit_code_one(gateway, tmp_path) -> None:
    rows = [{"id": f"t{n}", "text": "" if n % 2 else f"item {n}"} for n in range(10)]
    catalog = write_catalog(tmp_path / "texts.jsonl", rows)
    done = ingest(gateway, str(catalog), "-c", "texts", "--max-rejects", "2",
                  "--rejects", str(tmp_path / "r.jsonl"))
    assert done.exit_code == 1
    assert "r.jsonl" in done.output
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) >= 3


def test_ingest_hybrid_makes_a_collection_searchable_by_words(gateway, tmp_path, monkeypatch) -> None:
    rows = [
        {"id": "grinder", "text": "Conical burr grinder ZX-4471, forty settings."},
        {"id": "kettle", "text": "Gooseneck kettle KT-9902 for pour-over coffee."},
        {"id": "tent", "text": "Zweipersonenzelt, wasserdicht, für Wanderungen."},
    ]
    catalog = write_catalog(tmp_path / "shop.jsonl", rows)
    done = ingest(gateway, str(catalog), "-c", "words", "--hybrid")
    assert done.exit_code == 0, done.output
    assert "lexical index in english" in done.output
    with Client(gateway.address) as client:
        info = client.get_collection("words")
        assert (info.lexical, info.lexical_language, info.item_count) == (True, "english", 3)
        stored = client.get_documents("words", ["grinder", "tent"]).documents
        assert [d.text for d in stored] == [rows[0]["text"], rows[2]["text"]]
        found = client.search("words", text="KT-9902", mode="lexical")
        assert [h.id for h in found.hits] == ["kettle"] and found.mode == "lexical"

    # Again into the hybrid collection: fine; in another language: refused, nothing written.
    assert ingest(gateway, str(catalog), "-c", "words", "--hybrid").exit_code == 0
    more = write_catalog(tmp_path / "more.jsonl", [{"id": "lamp", "text": "A headlamp."}])
    german = ingest(gateway, str(more), "-c", "words", "--hybrid", "--language", "german")
    assert german.exit_code == 1 and "hybrid in english, not german" in german.output
    with Client(gateway.address) as client:
        assert client.get_collection("words").item_count == 3
    monkeypatch.setattr(main.console, "_width", 200)  # no folded cells
    listed = CliRunner().invoke(app, ["collections", "-t", gateway.address])
    row = next(line for line in listed.output.splitlines() if " words " in line)
    assert row.split("│")[-2].strip() == "english"


def test_ingest_hybrid_into_a_dense_collection_is_refused(gateway, tmp_path) -> None:
    catalog = write_catalog(tmp_path / "dense.jsonl", [{"id": "a", "text": "a kettle"}])
    assert ingest(gateway, str(catalog), "-c", "dense-only").exit_code == 0
    more = write_catalog(tmp_path / "more.jsonl", [{"id": "b", "text": "a grinder"}])
    done = ingest(gateway, str(more), "-c", "dense-only", "--hybrid")
    assert done.exit_code == 1, done.output
    assert "without a lexical index" in done.output
    with Client(gateway.address) as client:
        info = client.get_collection("dense-only")
    assert (info.lexical, info.item_count) == (False, 1)


def test_ingest_hybrid_in_german_stems_german(gateway, tmp_path) -> None:
    catalog = write_catalog(tmp_path / "de.jsonl", [
        {"id": "zelt", "text": "Leichte Zelte für lange Wanderungen"},
        {"id": "lampe", "text": "Eine Stirnlampe mit hellem Licht"},
    ])
    done = ingest(gateway, str(catalog), "-c", "german", "--hybrid", "--language", "German")
    assert done.exit_code == 0, done.output
    with Client(gateway.address) as client:
        assert client.get_collection("german").lexical_language == "german"
        # "Wanderung" (singular) matches "Wanderungen" only through the German stemmer.
        hits = client.search("german", text="Wanderung", mode="lexical").hits
    assert [h.id for h in hits] == ["zelt"]


def noise_png(seed: int, side: int = 400) -> bytes:
    """About 480 KB: noise does not compress."""
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    from io import BytesIO

    buffer = BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_ingest_never_aborts_on_a_row_and_sizes_batches_by_bytes(gateway, tmp_path) -> None:
    """64 images of ~480 KB at the default batch size (64) made one 30 MB request the
    gateway refused, ending the run; a 20 MB text row did the same; metadata nested 2,000
    deep raised a RecursionError. Now the images go out in requests under the limit and
    the other two are rejected with their reasons; exit code 0."""
    (tmp_path / "img").mkdir()
    rows = []
    for n in range(64):
        data = noise_png(n)
        assert len(data) > 400_000
        (tmp_path / "img" / f"{n}.png").write_bytes(data)
        rows.append({"id": f"noise-{n}", "image": f"img/{n}.png"})
    lines = [json.dumps(row) for row in rows]
    lines.insert(10, json.dumps({"id": "huge", "text": "word " * 4_000_000}))  # 20 MB
    deep = '{"id": "deep", "text": "x", "metadata": ' + '{"a": ' * 2000 + "1" + "}" * 2000 + "}"
    lines.insert(20, deep)
    catalog = tmp_path / "mixed.jsonl"
    catalog.write_text("\n".join(lines) + "\n")
    rejects = tmp_path / "mixed.rejects.jsonl"

    done = ingest(gateway, str(catalog), "-c", "noise", "--rejects", str(rejects))
    assert done.exit_code == 0, done.output
    found = {r["line"]: r for r in map(json.loads, rejects.read_text().splitlines())}
    assert sorted(found) == [11, 21], found
    assert found[11]["id"] == "huge" and "more than a request may carry" in found[11]["reason"]
    assert "nested too deep" in found[21]["reason"]  # not JSON this reader can take: no id
    with Client(gateway.address) as client:
        assert client.get_collection("noise").item_count == 64
