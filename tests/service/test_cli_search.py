"""`contentembed search` (text, --image, --exact, --version, --html), `spaces` and `embed`
against a real gateway with a text encoder and a pixels image encoder.

The --html page is rendered by headless Chromium: the screenshot must show one rank marker
per hit, in rank order, each with a score bar as wide as its score, and a thumbnail of
the hit's image; the DOM must hold the hit ids, with metadata markup escaped."""

from __future__ import annotations

import json
import os
import shutil
import subprocess  # nosec B404 - runs the browser the test renders with
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from contentembed.cli import main
from contentembed.cli.html_report import RANK_MARKER_COLOUR, SCORE_BAR_COLOUR, SCORE_TRACK_PX
from contentembed.cli.main import app
from contentembed.client import Client, ImageDocument, TextDocument
from tests.support.images import encoded, photo_like
from tests.support.stacks import gateway_stack

TEXTS = {
    "kettle": ("Gooseneck kettle", "A stovetop kettle with a thin spout for pour-over coffee."),
    "mug": ("Travel mug", "Insulated steel mug that keeps coffee hot on the commute."),
    "boots": ("Hiking boots", "Waterproof leather boots for muddy mountain trails."),
    "tea": ("<b>Tea</b> & <script>alert(1)</script>", "Loose leaf green tea, 100 g tin."),
}
PHOTOS = 6


@pytest.fixture(scope="module")
def gateway(text_encoder):
    with gateway_stack(text_encoder) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def media(gateway, tmp_path_factory) -> Path:
    """Collections `docs` (texts with title/text metadata) and `pics` (images whose
    metadata names their file below the returned directory)."""
    root = tmp_path_factory.mktemp("media")
    (root / "img").mkdir()
    photos = []
    for n in range(PHOTOS):
        data = encoded(photo_like(n))
        (root / "img" / f"{n}.png").write_bytes(data)
        photos.append(ImageDocument(f"photo-{n}", data, {"image": f"img/{n}.png", "n": n}))
    with Client(gateway.address, timeout=60.0) as client:
        client.create_collection("docs", modality="text")
        client.upsert_documents("docs", [
            TextDocument(key, f"{title}. {text}", {"title": title, "text": text})
            for key, (title, text) in TEXTS.items()
        ])
        client.create_collection("pics", modality="image")
        client.upsert_documents("pics", photos)
    return root


def cli(gateway, *args: str):
    return CliRunner().invoke(app, [*args, "-t", gateway.address])


def assert_one_line_error(done, *words: str) -> None:
    assert done.exit_code != 0, done.output
    lines = done.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), done.output
    for word in words:
        assert word in lines[0], done.output


def test_search_by_image_exact_and_at_a_version(gateway, media) -> None:
    with Client(gateway.address) as client:
        version = client.get_collection("pics").version
    args = ["search", "--image", str(media / "img" / "3.png"), "-c", "pics", "-k", "3", "--json"]
    for extra in ([], ["--exact"], ["--version", version] if version else []):
        done = cli(gateway, *args, *extra)
        assert done.exit_code == 0, done.output
        result = json.loads(done.stdout)
        assert result["hits"][0]["id"] == "photo-3"
        assert result["hits"][0]["score"] == pytest.approx(1.0, abs=1e-3)
    done = cli(gateway, "search", "coffee to go", "-c", "docs", "-k", "2", "--exact")
    assert done.exit_code == 0 and "mug" in done.output, done.output


def test_search_errors_are_one_line(gateway, media, tmp_path) -> None:
    assert_one_line_error(cli(gateway, "search", "-c", "docs"), "--image")
    assert_one_line_error(
        cli(gateway, "search", "tea", "--image", str(media / "img" / "1.png"), "-c", "pics"),
        "not both",
    )
    assert_one_line_error(
        cli(gateway, "search", "--image", str(tmp_path / "missing.png"), "-c", "pics"),
        "missing.png",
    )
    assert_one_line_error(cli(gateway, "search", "tea", "-c", "no-such-collection"),
                          "no-such-collection")
    assert_one_line_error(cli(gateway, "search", "tea", "-c", "docs", "--version", "v-nope"))


def test_spaces_lists_both_encoders(gateway, monkeypatch) -> None:
    done = cli(gateway, "spaces", "--json")
    assert done.exit_code == 0, done.output
    spaces = json.loads(done.stdout)
    assert sorted(s["modality"] for s in spaces) == ["image", "text"]
    text = next(s for s in spaces if s["modality"] == "text")
    assert text["dim"] == 384 and text["address"]
    monkeypatch.setattr(main.console, "_width", 200)  # no folded cells to search across
    table = cli(gateway, "spaces")
    assert table.exit_code == 0, table.output
    for space in spaces:
        assert space["space_id"] in table.output and space["backend"] in table.output


def test_embed_prints_or_saves_the_vector(gateway, media, tmp_path) -> None:
    done = cli(gateway, "embed", "pour-over coffee")
    assert done.exit_code == 0, done.output
    text = json.loads(done.stdout)
    assert text["dim"] == len(text["vector"]) == 384
    assert np.linalg.norm(text["vector"]) == pytest.approx(1.0, abs=1e-3)

    image = str(media / "img" / "2.png")
    out = tmp_path / "v.npy"
    done = cli(gateway, "embed", "--image", image, "--out", str(out), "--json")
    assert done.exit_code == 0, done.output
    summary = json.loads(done.stdout)
    vector = np.load(out)
    assert vector.dtype == np.float32 and vector.shape == (summary["dim"],)
    again = json.loads(cli(gateway, "embed", "--image", image, "--space",
                           summary["space_id"]).stdout)
    assert np.allclose(again["vector"], vector, atol=1e-6)

    assert_one_line_error(cli(gateway, "embed", "tea", "--space", summary["space_id"]),
                          summary["space_id"])
    assert_one_line_error(cli(gateway, "embed", "tea", "--space", "nope"), "nope")
    assert_one_line_error(cli(gateway, "embed", "--image", str(tmp_path / "gone.png")), "gone.png")


# -- the HTML page in a real browser ---------------------------------------------------
def chromium_binary() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("chromium is not installed; `make test` installs it (the `chromium` target)")
    pytest.skip("chromium is not installed (`make chromium` installs Debian's): "
                "the --html page is not rendered")


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    command = [
        chromium_binary(), "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
        "--force-device-scale-factor=1", "--force-color-profile=srgb",
        f"--user-data-dir={tmp_path / 'chromium-profile'}", *args,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)  # nosec B603
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def colour_mask(pixels: np.ndarray, colour: tuple[int, int, int], tolerance: int = 12) -> np.ndarray:
    return np.all(np.abs(pixels.astype(int) - np.array(colour)) <= tolerance, axis=-1)


def row_bands(rows: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) of each run of consecutive True rows."""
    bands, start = [], None
    for y, on in enumerate([*rows, False]):
        if on and start is None:
            start = y
        elif not on and start is not None:
            bands.append((start, y))
            start = None
    return bands


def test_the_html_page_shows_every_hit_in_a_browser(gateway, media, tmp_path) -> None:
    page = tmp_path / "hits.html"
    done = cli(gateway, "search", "--image", str(media / "img" / "4.png"), "-c", "pics",
               "-k", "4", "--exact", "--json", "--html", str(page), "--media-root", str(media))
    assert done.exit_code == 0, done.output
    hits = json.loads(done.stdout)["hits"]
    assert len(hits) == 4 and hits[0]["id"] == "photo-4"
    assert "file:" not in page.read_text() and "img/4.png" not in page.read_text()

    shot = tmp_path / "out.png"
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1000,800", page.as_uri())
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (800, 1000)
    assert pixels.std() > 10 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100, "blank"

    markers = colour_mask(pixels, RANK_MARKER_COLOUR)
    bands = [b for b in row_bands(markers.sum(axis=1) >= 8) if b[1] - b[0] >= 10]
    assert len(bands) == len(hits), f"rank markers at rows {bands}"
    marker_right = int(np.nonzero(markers.any(axis=0))[0].max())
    bars = colour_mask(pixels, SCORE_BAR_COLOUR)
    bars[:, : marker_right + 80] = False  # the thumbnails' colours are the images'
    for (top, bottom), hit in zip(bands, hits, strict=True):
        width = int(bars[top:bottom].sum(axis=1).max())
        expected = max(0.0, min(1.0, hit["score"])) * SCORE_TRACK_PX
        assert abs(width - expected) <= 3, (hit, width, expected)
        thumb = pixels[top:bottom, marker_right + 8 : marker_right + 72]
        assert thumb.std() > 10, f"no thumbnail beside {hit['id']}"
    outside = bars.copy()
    for top, bottom in bands:
        outside[top:bottom] = False
    assert not outside.any(), "a score bar outside a hit row"

    dom = chromium(tmp_path, "--dump-dom", page.as_uri()).stdout
    assert all(f'data-id="{hit["id"]}"' in dom for hit in hits)


def test_a_text_pages_snippets_are_escaped(gateway, media, tmp_path) -> None:
    page = tmp_path / "text.html"
    done = cli(gateway, "search", "green tea <3", "-c", "docs", "-k", "4", "--html", str(page))
    assert done.exit_code == 0, done.output
    dom = chromium(tmp_path, "--dump-dom", page.as_uri()).stdout
    for key in TEXTS:
        assert f'data-id="{key}"' in dom
    assert "<script>" not in dom and "&lt;script&gt;alert(1)&lt;/script&gt;" in dom
    assert "green tea &lt;3" in dom and "Travel mug" in dom


def test_search_filters_pages_and_thresholds(gateway, media) -> None:
    image = str(media / "img" / "3.png")

    def hits(*extra: str) -> list[dict]:
        done = cli(gateway, "search", "--image", image, "-c", "pics", "--json", "--exact", *extra)
        assert done.exit_code == 0, done.output
        return json.loads(done.stdout)["hits"]

    ranged = hits("-k", "10", "--filter", "n>=2", "--filter", "n<5")
    assert sorted(int(h["metadata"]["n"]) for h in ranged) == [2, 3, 4]
    either = hits("-k", "10", "-f", "n=1", "-f", "n=5")
    assert sorted(h["id"] for h in either) == ["photo-1", "photo-5"]
    everything = hits("-k", "6")
    pages = hits("-k", "3") + hits("-k", "3", "--offset", "3")
    assert [h["id"] for h in pages] == [h["id"] for h in everything]
    cut = everything[2]["score"]
    kept = hits("-k", "6", "--score-threshold", str(cut))
    assert [h["id"] for h in kept] == [h["id"] for h in everything if h["score"] >= cut]
    assert_one_line_error(cli(gateway, "search", "--image", image, "-c", "pics", "-f", "n>=x"),
                          "needs a number")


# -- hybrid retrieval: lexical and fused answers, and eval per mode ----------------------
CODES = {  # items whose one distinctive word is a model code or a rare name
    "grinder": "Conical burr coffee grinder ZX-4471 with 40 grind settings.",
    "scale": "Drip scale with timer for pour-over brewing, model QB-1180.",
    "kettle": "Gooseneck electric kettle, model KT-9902, holds temperature for an hour.",
    "press": "French press of borosilicate glass, eight cups, the Halvorsen edition.",
    "filter": "Paper filters for cone drippers, pack of one hundred, unbleached.",
    "mug": "Insulated travel mug that keeps coffee hot on the commute.",
    "tent": "Two-person tent, waterproof, packs small for hiking trips.",
    "boots": "Leather hiking boots with a waterproof membrane, model TR-7734.",
    "lamp": "Headlamp for night hikes, 400 lumens, rechargeable over USB-C.",
    "stove": "Camping stove that folds into its own pot, burns gas canisters.",
}
CODE_QUERIES = [  # (query, relevant): codes and names, then paraphrases
    ("ZX-4471", ["grinder"]), ("QB-1180", ["scale"]), ("KT-9902", ["kettle"]),
    ("Halvorsen", ["press"]), ("TR-7734", ["boots"]),
    ("something to keep my drink warm while travelling", ["mug"]),
    ("sleeping outdoors in the mountains", ["tent"]),
    ("light for walking in the dark", ["lamp"]),
]


@pytest.fixture(scope="module")
def hybrid(gateway) -> str:
    """The hybrid collection `shop` (a lexical index in english beside the vectors)."""
    with Client(gateway.address, timeout=60.0) as client:
        info, created = client.create_collection("shop", lexical=True)
        assert created and (info.lexical, info.lexical_language) == (True, "english")
        client.upsert_documents("shop", [
            TextDocument(key, text, {"title": key}) for key, text in CODES.items()
        ])
    return "shop"


def search_json(gateway, *args: str) -> dict:
    done = cli(gateway, "search", *args, "--json")
    assert done.exit_code == 0, done.output
    return json.loads(done.stdout)


def test_lexical_search_finds_words_and_says_so(gateway, hybrid) -> None:
    result = search_json(gateway, "ZX-4471", "-c", hybrid, "--mode", "lexical", "-k", "5")
    assert (result["mode"], result["fusion"]) == ("lexical", "")
    hits = result["hits"]
    assert [h["id"] for h in hits] == ["grinder"]  # no other item has either term
    assert hits[0]["lexical_rank"] == 1 and hits[0]["dense_rank"] is None
    assert hits[0]["score"] == pytest.approx(hits[0]["lexical_score"]) and hits[0]["score"] > 0


def test_hybrid_search_fuses_with_the_options_given(gateway, hybrid) -> None:
    query = ["model KT-9902 kettle", "-c", hybrid, "-k", "10"]
    default = search_json(gateway, *query)
    assert default["mode"] == "hybrid"  # the gateway's default on a hybrid collection
    assert default["hits"][0]["id"] == "kettle"

    rrf = search_json(gateway, *query, "--mode", "hybrid", "--fusion", "rrf", "--rrf-k", "10")
    assert (rrf["mode"], rrf["fusion"]) == ("hybrid", "rrf")
    for hit in rrf["hits"]:
        ranks = [r for r in (hit["dense_rank"], hit["lexical_rank"]) if r is not None]
        assert ranks, hit
        assert hit["score"] == pytest.approx(sum(1 / (10 + r) for r in ranks), rel=1e-5)
    assert any(h["dense_rank"] and h["lexical_rank"] for h in rrf["hits"])

    # alpha 1: only the dense scores count, so the fused order is the dense order.
    dense = search_json(gateway, *query, "--mode", "dense")
    assert dense["mode"] == "dense"
    dense_only = search_json(gateway, *query, "--mode", "hybrid", "--fusion", "minmax",
                             "--alpha", "1")
    assert dense_only["fusion"] == "minmax"
    assert [h["id"] for h in dense_only["hits"]][:5] == [h["id"] for h in dense["hits"]][:5]

    table = cli(gateway, "search", *query, "--mode", "hybrid", "--fusion", "rrf")
    assert table.exit_code == 0, table.output
    assert "dense/lexical" in table.output and "hybrid (rrf)" in table.output
    assert "1/1" in table.output  # the kettle: first for both retrievers


def test_lexical_search_needs_a_hybrid_collection_and_a_text(gateway, media, hybrid) -> None:
    assert_one_line_error(cli(gateway, "search", "tea", "-c", "docs", "--mode", "lexical"),
                          "FAILED_PRECONDITION")
    assert_one_line_error(cli(gateway, "search", "--image", str(media / "img" / "1.png"),
                              "-c", hybrid, "--mode", "hybrid"), "INVALID_ARGUMENT")


def test_eval_reports_each_mode_as_search_answers_it(gateway, hybrid, tmp_path) -> None:
    from contentembed.pipeline.evaluation import hit_at, ndcg, reciprocal_rank

    queries = tmp_path / "queries.jsonl"
    queries.write_text("".join(
        json.dumps({"id": str(n), "text": text, "relevant": relevant}) + "\n"
        for n, (text, relevant) in enumerate(CODE_QUERIES)
    ))
    done = cli(gateway, "eval", str(queries), "-c", hybrid, "--mode", "all", "--rrf-k", "30",
               "--json")
    assert done.exit_code == 0, done.output
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert list(figures["modes"]) == ["dense", "lexical", "hybrid"]
    assert figures["queries"] == len(CODE_QUERIES)

    rankings = {}
    with Client(gateway.address, timeout=60.0) as client:
        for mode in ("dense", "lexical", "hybrid"):
            options = {"rrf_k": 30} if mode == "hybrid" else {}
            rankings[mode] = [
                [h.id for h in client.search(hybrid, text=text, top_k=10, mode=mode,
                                             **options).hits]
                for text, _ in CODE_QUERIES
            ]
    relevant = [frozenset(r) for _, r in CODE_QUERIES]
    for mode, ranked in rankings.items():
        measured = figures["modes"][mode]
        for k in (1, 5, 10):
            assert measured[f"recall@{k}"] == pytest.approx(
                np.mean([hit_at(r, rel, k) for r, rel in zip(ranked, relevant)])), (mode, k)
        assert measured["mrr@10"] == pytest.approx(
            np.mean([reciprocal_rank(r, rel) for r, rel in zip(ranked, relevant)]))
        assert measured["ndcg@10"] == pytest.approx(
            np.mean([ndcg(r, rel) for r, rel in zip(ranked, relevant)]))
    assert figures["modes"]["dense"]["ann_recall@10"] == 1.0  # ten items: HNSW is exact
    assert figures["modes"]["lexical"]["ann_recall@10"] is None
    assert figures["modes"]["hybrid"]["ann_recall@10"] is None
    assert figures["modes"]["hybrid"]["fusion"] == "rrf"
    # Every code query has its item first by BM25; the union ceiling counts both lists.
    codes = [n for n, (text, _) in enumerate(CODE_QUERIES) if text[0].isupper()]
    assert all(rankings["lexical"][n][:1] == CODE_QUERIES[n][1] for n in codes)
    assert figures["union_recall@10"] == pytest.approx(np.mean([
        hit_at(d + x, rel, 20)
        for d, x, rel in zip(rankings["dense"], rankings["lexical"], relevant)
    ]))

    table = cli(gateway, "eval", str(queries), "-c", hybrid, "--mode", "dense",
                "--mode", "lexical")
    assert table.exit_code == 0, table.output
    assert "n/a" in table.output and "union ceiling" in table.output
