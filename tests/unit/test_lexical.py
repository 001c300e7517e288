"""The lexical (BM25) side of a collection: analysis, queries that are never syntax, writes
reaching both indexes, filters, and the text surviving the WAL, snapshots and versions."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from contentembed.services.common.errors import FailedPrecondition, InvalidArgument
from contentembed.services.index.collection import HnswCollection
from contentembed.services.index.dense import HnswParams
from contentembed.services.index.lexical import (
    LANGUAGES,
    MAX_TEXT_BYTES,
    LexicalIndex,
    LexicalParams,
    analyze,
    check_language,
)
from contentembed.services.index.persistence import (
    CorruptData,
    WalRecord,
    WriteAheadLog,
    encode_record,
    read_wal,
    verify_manifest,
    write_manifest,
)
from contentembed.services.index.store import CollectionStore
from contentembed.services.index.version_log import Durability

DIM = 4


def lexical_collection(language: str = "english", name: str = "c") -> HnswCollection:
    return HnswCollection(name, "s@1", DIM, HnswParams(), lexical=LexicalParams(language))


def vectors(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)


def write(collection: HnswCollection, texts: dict[str, str], metadata: dict | None = None) -> None:
    ids = list(texts)
    collection.upsert(ids, vectors(len(ids)), [dict(metadata or {}) for _ in ids], list(texts.values()))


def found(collection: HnswCollection, text: str, top_k: int = 100, **kwargs) -> list[str]:
    return [hit.id for hit in collection.search_lexical_batch([text], top_k, **kwargs)[0]]


def scored(collection: HnswCollection, text: str, top_k: int = 100) -> list[tuple[str, float]]:
    return [(hit.id, hit.score) for hit in collection.search_lexical_batch([text], top_k)[0]]


# -- analysis ----------------------------------------------------------------------------
def test_english_stems_and_drops_stop_words() -> None:
    assert analyze("english", "The dog is Running; dogs run.") == ["dog", "run", "dog", "run"]
    assert analyze("english", "the and of to") == []
    # A token of 40 bytes or more is dropped, not truncated into a false match.
    assert analyze("english", "a" * 40 + " kept " + "b" * 39) == ["kept", "b" * 39]
    collection = lexical_collection()
    write(collection, {"runs": "she runs every morning", "other": "a quiet evening"})
    assert found(collection, "running") == ["runs"]


def test_each_language_analyses_its_own_words() -> None:
    assert analyze("german", "Die Häuser, das Haus") == ["haus", "haus"]
    assert analyze("french", "les chats") == ["chat"]
    assert analyze("english", "les chats") == ["les", "chat"]  # not french stop words
    assert analyze("none", "The Running DOGS") == ["the", "running", "dogs"]
    assert analyze("", "Running") == analyze("english", "Running") == ["run"]
    for language in LANGUAGES:  # every advertised language builds, with stop words
        assert analyze(language, "x") == ["x"]

    spanish = lexical_collection("spanish")
    write(spanish, {"gatos": "los gatos corren", "perro": "el perro duerme"})
    assert found(spanish, "gato corriendo") == ["gatos"]
    plain = lexical_collection("none")
    write(plain, {"the": "the running man", "run": "run"})
    assert found(plain, "the") == ["the"]  # no stop words
    assert found(plain, "running") == ["the"]  # no stemming


def test_languages_are_normalized_and_unknown_ones_refused() -> None:
    assert LexicalParams("") == LexicalParams(" English ") == LexicalParams()
    assert LexicalParams("").language == "english"
    assert check_language("NONE") == "none"
    for bad in ("klingon", "romanian", "en"):  # romanian: a stemmer but no stop words
        with pytest.raises(InvalidArgument) as caught:
            LexicalParams(bad)
        assert caught.value.reason == "BAD_LEXICAL_LANGUAGE"
        assert "swedish" in caught.value.message and "'none'" in caught.value.message


# -- queries -----------------------------------------------------------------------------
def test_query_syntax_characters_are_plain_text() -> None:
    collection = lexical_collection()
    write(collection, {
        "foo": "foo fighters",
        "bar": "bar none",
        "xy": "x marks y",
        "quoted": "quoted speech",
        "cpp": "c compilers",
        "field": "text field",
    })
    # Each would be syntax to a query parser: a must-not, a must, a field, a phrase left
    # open, a wildcard. Here nothing errors and nothing is excluded or required.
    assert found(collection, "-foo") == ["foo"]
    assert set(found(collection, "+bar -foo")) == {"foo", "bar"}
    assert found(collection, "(x:y)") == ["xy"]
    assert found(collection, '"quoted') == ["quoted"]
    assert found(collection, "C++") == ["cpp"]
    assert found(collection, "text:field") == ["field"]
    assert set(found(collection, 'C++ -foo +bar (x:y) "quoted')) == {"cpp", "foo", "bar", "xy", "quoted"}
    assert set(found(collection, "foo AND NOT bar")) == {"foo", "bar"}
    # No terms left after analysis: no hits, not an error.
    for empty in ("*", "", "the of and", '"" () : - + / *', "   "):
        assert found(collection, empty) == []


def test_bm25_ranks_rare_terms_and_repeats_above_common_ones() -> None:
    collection = lexical_collection()
    filler = {f"f{i}": f"common words number {i}" for i in range(20)}
    write(collection, {**filler, "rare": "common zebra", "twice": "zebra zebra stripes",
                       "long": "zebra " + " ".join(f"padding{i}" for i in range(30))})
    ranked = found(collection, "common zebra")
    # zebra (in 3 documents) outweighs common (in 21): every zebra document ranks above
    # every document with only the common word, and the one with both leads the others
    # of its length.
    assert set(ranked[:3]) == {"rare", "twice", "long"} and len(ranked) == 23
    assert ranked.index("rare") < ranked.index("long")
    # Same term frequency, shorter document first (length normalization).
    zebra = found(collection, "zebra")
    assert zebra[0] == "twice" and zebra.index("rare") < zebra.index("long")
    # A repeated query term counts as often as it is written (query-term frequency).
    once, thrice = dict(scored(collection, "zebra")), dict(scored(collection, "zebra zebra zebra"))
    assert thrice["rare"] == pytest.approx(3 * once["rare"], rel=1e-5)
    mixed = dict(scored(collection, "common common zebra"))
    assert mixed["rare"] == pytest.approx(
        2 * dict(scored(collection, "common"))["rare"] + once["rare"], rel=1e-5
    )


def test_filter_is_exact_and_does_not_change_scores() -> None:
    collection = lexical_collection()
    # 100 documents match the text; the three the filter allows (3%: the label-set query)
    # score lowest of all.
    texts = {f"d{i}": "widget " * (3 if i >= 3 else 1) + f"extra words here {i}" for i in range(100)}
    metadata = [{"color": "red" if i < 3 else "blue"} for i in range(100)]
    collection.upsert(list(texts), vectors(100), metadata, list(texts.values()))
    unfiltered = dict(scored(collection, "widget"))
    hits = collection.search_lexical_batch(["widget"], 3, {"color": "red"})[0]
    assert sorted(h.id for h in hits) == ["d0", "d1", "d2"]
    assert all(h.metadata == {"color": "red"} for h in hits)
    assert all(h.score == pytest.approx(unfiltered[h.id]) for h in hits)
    assert found(collection, "widget", metadata_filter={"color": "green"}) == []
    assert len(found(collection, "widget", 5, metadata_filter={"color": {"$in": ["red", "blue"]}})) == 5


def test_both_retrievers_in_one_call_scan_the_filter_once_and_answer_as_each_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import contentembed.services.index.payload as payload_module

    collection = lexical_collection()
    texts = {f"d{i}": f"widget number {i}" for i in range(40)}
    metadata = [{"color": "red" if i % 2 else "blue", "n": i} for i in range(40)]
    collection.upsert(list(texts), vectors(40), metadata, list(texts.values()))
    # The color is decided by the payload index, the range checked on its 20 matches.
    query, red = vectors(1, seed=7), {"color": "red", "n": {"$gte": 0}}
    dense_alone = collection.search_batch(query, 5, metadata_filter=red)
    lexical_alone = collection.search_lexical_batch(["widget"], 5, red)
    checked = []
    real_matches = payload_module.matches
    monkeypatch.setattr(payload_module, "matches",
                        lambda m, f: checked.append(1) or real_matches(m, f))
    dense, lexical = collection.search_both(query, ["widget"], 5, metadata_filter=red)
    assert len(checked) == 20  # each candidate's metadata once, not once per retriever
    assert [[h.id for h in row] for row in dense] == [[h.id for h in row] for row in dense_alone]
    assert [[h.id for h in row] for row in lexical] == [[h.id for h in row] for row in lexical_alone]
    assert all(h.metadata["color"] == "red" for row in dense + lexical for h in row)


@pytest.mark.parametrize("allowed_rank", ["best", "worst", "spread"])
def test_wide_filters_are_exact_whichever_documents_they_allow(allowed_rank: str) -> None:
    """A filter allowing half the documents is first applied to the unfiltered best hits;
    when too few of those pass, the label-set query answers: exact either way."""
    collection = lexical_collection()
    # Scores fall with the document's length: doc 0 best, doc 99 worst.
    texts = {f"d{i:02d}": "widget " + " ".join(f"pad{j}" for j in range(i)) for i in range(100)}
    red = {"best": range(50), "worst": range(50, 100), "spread": range(0, 100, 2)}[allowed_rank]
    metadata = [{"color": "red" if i in red else "blue"} for i in range(100)]
    collection.upsert(list(texts), vectors(100), metadata, list(texts.values()))
    everything = scored(collection, "widget", 1000)
    expected = [score for item_id, score in everything if int(item_id[1:]) in red][:10]
    hits = collection.search_lexical_batch(["widget"], 10, {"color": "red"})[0]
    assert [h.score for h in hits] == expected
    assert all(h.metadata == {"color": "red"} for h in hits) and len({h.id for h in hits}) == 10
    # More allowed documents asked for than match: all of them, none missing.
    assert len(collection.search_lexical_batch(["widget"], 1000, {"color": "red"})[0]) == 50


def test_non_lexical_collections_keep_text_but_refuse_text_search() -> None:
    collection = HnswCollection("dense", "s@1", DIM, HnswParams())
    assert collection.lexical_params is None
    collection.upsert(["a"], vectors(1), [{}], ["kept for re-embedding"])
    assert collection.get(["a"])[0].text == "kept for re-embedding"
    with pytest.raises(FailedPrecondition) as caught:
        collection.search_lexical_batch(["kept"], 5)
    assert caught.value.reason == "LEXICAL_NOT_ENABLED"


# -- writes ------------------------------------------------------------------------------
def test_replacements_and_deletes_reach_the_lexical_index() -> None:
    collection = lexical_collection()
    write(collection, {"a": "alpha apple", "b": "beta banana"})
    assert found(collection, "alpha") == ["a"]

    write(collection, {"a": "gamma grape"})  # replaced text: the old words no longer match
    assert found(collection, "alpha") == [] and found(collection, "gamma") == ["a"]
    assert collection.get(["a"])[0].text == "gamma grape"

    collection.upsert(["a"], vectors(1), [{}])  # no text: the old text goes too
    assert found(collection, "gamma") == [] and collection.get(["a"])[0].text == ""

    write(collection, {"a": "delta date"})
    write(collection, {"a": "delta date"})  # the same text again: still one document
    assert scored(collection, "delta")[0][0] == "a" and len(found(collection, "delta")) == 1
    assert collection.delete(["a", "b"]) == 2
    assert found(collection, "delta") == [] and found(collection, "beta") == []
    assert collection.get(["a"]) == []

    # Deleted documents must leave the index, not just the answers: stale ones would
    # outrank the live ones here and take the top_k places.
    write(collection, {f"old{i}": "epsilon epsilon epsilon" for i in range(5)})
    write(collection, {f"new{i}": "epsilon and other words" for i in range(5)})
    collection.delete([f"old{i}" for i in range(5)])
    assert sorted(found(collection, "epsilon", top_k=5)) == [f"new{i}" for i in range(5)]
    write(collection, {f"new{i}": "zeta" for i in range(5)})  # replaced: the same for them
    write(collection, {f"other{i}": "epsilon words" for i in range(5)})
    assert sorted(found(collection, "epsilon", top_k=5)) == [f"other{i}" for i in range(5)]


def test_a_write_is_visible_to_the_next_search_even_under_concurrent_searches() -> None:
    collection = lexical_collection()
    acknowledged: list[str] = []
    stop = threading.Event()
    failures: list[str] = []

    def writer() -> None:
        for n in range(150):
            write(collection, {f"i{n}": f"common unique{n}"})
            acknowledged.append(f"i{n}")
        stop.set()

    def reader() -> None:
        while not stop.is_set():
            if not acknowledged:
                continue
            last = acknowledged[-1]  # acknowledged before this search starts
            if found(collection, f"unique{last[1:]}") != [last]:
                failures.append(last)

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert failures == []
    assert len(found(collection, "common", 1000)) == 150


def test_text_limits_are_checked_before_anything_is_written() -> None:
    collection = lexical_collection()
    write(collection, {"ok": "é" * (MAX_TEXT_BYTES // 2)})  # exactly the limit in UTF-8
    seq = collection.seq
    for bad, reason in (("é" * (MAX_TEXT_BYTES // 2) + "x", "TEXT_TOO_LONG"),
                        ("lone \ud800 surrogate", "TEXT_NOT_UTF8")):
        with pytest.raises(InvalidArgument) as caught:
            collection.upsert(["new", "ok"], vectors(2), [{}, {}], ["fine", bad])
        assert caught.value.reason == reason
        with pytest.raises(InvalidArgument) as caught:
            collection.search_lexical_batch([bad], 5)
        assert caught.value.reason == reason
    assert collection.seq == seq and collection.item_count == 1
    assert found(collection, "fine") == []


def test_bulk_insert_indexes_texts() -> None:
    collection = lexical_collection()
    collection.bulk_insert(["a", "b", "c"], vectors(3), [{}, {}, {}], ["red fox", "", "blue fox"])
    assert sorted(found(collection, "fox")) == ["a", "c"]
    assert [item.text for item in collection.get(["a", "b", "c"])] == ["red fox", "", "blue fox"]


# -- WAL -----------------------------------------------------------------------------------
def test_wal_records_carry_texts_and_old_records_still_decode(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path / "1.log")
    with_text = WalRecord(1, "upsert", ["a", "b"], vectors(2), [{}, {}], ["zebra ünïcode", ""])
    without = WalRecord(2, "upsert", ["c"], vectors(1), [{"n": 1}])  # as written before texts
    for record in (with_text, without, WalRecord(3, "delete", ["a"])):
        wal.append(record)
    wal.close()
    read = list(read_wal(tmp_path / "1.log", last_segment=True))
    assert read[0].texts == ["zebra ünïcode", ""]
    assert read[1].texts is None and read[1].metadata == [{"n": 1}]
    assert b"texts" not in encode_record(without)  # the old encoding, byte for byte

    bad = WalRecord(1, "upsert", ["a", "b"], vectors(2), [{}, {}], ["only one"])
    (tmp_path / "2.log").write_bytes(encode_record(bad))
    with pytest.raises(CorruptData, match="texts"):
        list(read_wal(tmp_path / "2.log", last_segment=True))


def test_writes_without_text_log_no_texts() -> None:
    collection = lexical_collection()
    logged: list[WalRecord] = []
    collection.journal = lambda record: logged.append(record) or record
    collection.upsert(["a"], vectors(1), [{}])
    collection.upsert(["b"], vectors(1), [{}], [""])
    collection.upsert(["c", "d"], vectors(2), [{}, {}], ["", "dog"])
    assert [r.texts for r in logged] == [None, None, ["", "dog"]]


# -- snapshots ---------------------------------------------------------------------------
QUERIES = ["fox", "quick brown", "dog runs", "lazy", "jumping foxes over dogs", "the", "zebra"]


def corpus(n: int = 300, seed: int = 1) -> dict[str, str]:
    rng = np.random.default_rng(seed)
    words = ["quick", "brown", "fox", "jumps", "over", "lazy", "dog", "runs", "zebra", "river",
             "stone", "light", "bright", "morning", "evening", "jumping", "sleeps", "north"]
    return {f"doc-{i}": " ".join(rng.choice(words, size=int(rng.integers(3, 15)))) for i in range(n)}


def all_results(collection: HnswCollection, top_k: int = 50) -> list[list[tuple[str, float]]]:
    return [scored(collection, q, top_k) for q in QUERIES]


def test_snapshot_round_trip_preserves_lexical_search_exactly(tmp_path: Path) -> None:
    collection = lexical_collection("english")
    texts = corpus()
    ids = list(texts)
    for start in range(0, len(ids), 50):  # several writes: several tantivy segments
        chunk = ids[start : start + 50]
        collection.upsert(chunk, vectors(len(chunk), start), [{"n": start}] * len(chunk),
                          [texts[i] for i in chunk])
    expected = all_results(collection)
    assert any(expected)

    manifest = collection.write_snapshot(tmp_path / "snap")
    assert manifest["lexical"] == {"language": "english"}
    items = json.loads((tmp_path / "snap" / "items.json").read_bytes())
    assert len(items["texts"]) == len(ids)
    loaded = HnswCollection.from_snapshot(tmp_path / "snap", verify_manifest(tmp_path / "snap"), "c")
    assert loaded.lexical_params == LexicalParams("english")
    assert all_results(loaded) == expected
    assert loaded.get(["doc-7"])[0].text == texts["doc-7"]


def test_loaded_snapshot_equals_an_index_of_the_live_texts_after_churn(tmp_path: Path) -> None:
    """Deleted and replaced documents linger in tantivy's term statistics until a merge; a
    loaded snapshot is the index of exactly the live texts, like a fresh build of them."""
    collection = lexical_collection()
    texts = corpus(200)
    write(collection, texts)
    collection.delete([f"doc-{i}" for i in range(0, 200, 3)])
    replaced = {f"doc-{i}": f"zebra river {i}" for i in range(1, 200, 7)}
    write(collection, replaced)
    live = {i: t for i, t in texts.items() if int(i.split("-")[1]) % 3} | replaced

    collection.write_snapshot(tmp_path / "snap")
    loaded = HnswCollection.from_snapshot(tmp_path / "snap", verify_manifest(tmp_path / "snap"), "c")
    fresh = lexical_collection()  # labels in the same order (a re-created id got a new one)
    write(fresh, dict(sorted(live.items(), key=lambda item: loaded._label_of[item[0]])))
    # Everything that matches: the same hits, scores and order (ties: by label).
    assert all_results(loaded, 1000) == all_results(fresh, 1000)
    # Cut at top_k, documents tied at the cut may differ; their scores may not.
    assert [[s for _, s in r] for r in all_results(loaded)] == [[s for _, s in r] for r in all_results(fresh)]
    for query in QUERIES:  # every live text with a query term, and nothing else
        terms = set(analyze("english", query))
        expected = {i for i, text in live.items() if terms & set(analyze("english", text))}
        assert set(found(loaded, query, 1000)) == expected, query


def rewrite_items(directory: Path, change) -> None:
    """Changes items.json and re-signs the manifest: only the structural checks remain."""
    path = directory / "items.json"
    items = json.loads(path.read_bytes())
    change(items)
    path.write_text(json.dumps(items))
    manifest = json.loads((directory / "manifest.json").read_bytes())
    write_manifest(directory, {k: v for k, v in manifest.items() if k != "files"})


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda items: items["texts"].append([1, "a deleted label"]), "holds no item"),
        (lambda items: items["texts"].append([99, "no such label"]), "holds no item"),
        (lambda items: items["texts"].append(items["texts"][0]), "twice"),
        (lambda items: items["texts"].append([0, 7]), "non-empty string"),
        (lambda items: items["texts"].append([2, ""]), "non-empty string"),
        (lambda items: items.update(texts={"0": "x"}), "must be a list"),
        (lambda items: items["texts"].append([2, "x" * (MAX_TEXT_BYTES + 1)]), "at most"),
    ],
)
def test_tampered_texts_are_refused(tmp_path: Path, change, match: str) -> None:
    collection = lexical_collection()
    write(collection, {"a": "first", "b": "second", "c": ""})
    collection.delete(["b"])
    collection.write_snapshot(tmp_path / "snap")
    rewrite_items(tmp_path / "snap", change)
    with pytest.raises(CorruptData, match=match):
        HnswCollection.from_snapshot(tmp_path / "snap", verify_manifest(tmp_path / "snap"), "c")


def test_changed_texts_fail_the_digest(tmp_path: Path) -> None:
    collection = lexical_collection()
    write(collection, {"a": "original words"})
    collection.write_snapshot(tmp_path / "snap")
    path = tmp_path / "snap" / "items.json"
    path.write_bytes(path.read_bytes().replace(b"original", b"injected"))
    with pytest.raises(CorruptData, match="sha256"):
        verify_manifest(tmp_path / "snap")


def test_a_bad_lexical_config_in_the_manifest_is_corrupt(tmp_path: Path) -> None:
    collection = lexical_collection()
    write(collection, {"a": "words"})
    collection.write_snapshot(tmp_path / "snap")
    manifest = verify_manifest(tmp_path / "snap")
    with pytest.raises(CorruptData, match="klingon"):
        HnswCollection.from_snapshot(tmp_path / "snap", {**manifest, "lexical": {"language": "klingon"}}, "c")


# -- the store: durability, versions, bundles ----------------------------------------------
def durable_store(path: Path, bundles: Path | None = None) -> CollectionStore:
    store = CollectionStore(HnswParams(), 8, Durability(path / "data", snapshot_every_ops=10**9),
                            bundle_root=bundles)
    store.load()
    return store


def test_store_recovers_texts_from_wal_and_snapshot_plus_wal(tmp_path: Path) -> None:
    store = durable_store(tmp_path)
    store.create("c", "s@1", DIM, lexical=LexicalParams("german"))
    store.create("dense", "s@1", DIM)
    store.upsert("c", ["a", "b"], vectors(2), [{}, {}], texts=["Die Häuser", "Katzen"])
    store.upsert("dense", ["a"], vectors(1), [{}], texts=["kept"])
    store.close()  # WAL only: close's snapshot is the only one...

    store = durable_store(tmp_path)
    assert found(store.get("c"), "Haus") == ["a"]
    store.upsert("c", ["b"], vectors(1), [{}], texts=["Hunde"])  # ...then more WAL records
    store.delete_items("c", ["a"])
    store.upsert("c", ["n"], vectors(1), [{}], texts=["neues Haus"])
    # killed: no close, no snapshot of the last three writes
    restarted = durable_store(tmp_path)
    c = restarted.get("c")
    assert c.lexical_params == LexicalParams("german")
    assert found(c, "Häuser") == ["n"] and found(c, "Katzen") == [] and found(c, "Hund") == ["b"]
    assert restarted.get("dense").lexical_params is None
    assert restarted.get("dense").get(["a"])[0].text == "kept"
    spec = json.loads((tmp_path / "data/collections/c/versions/live/collection.json").read_bytes())
    assert spec["lexical"] == {"language": "german"}
    restarted.close()


def test_create_exist_ok_with_another_lexical_config_is_refused(tmp_path: Path) -> None:
    store = durable_store(tmp_path)
    store.create("c", "s@1", DIM, lexical=LexicalParams("english"))
    assert store.create("c", "s@1", DIM, exist_ok=True, lexical=LexicalParams(""))[1] is False
    for other in (None, LexicalParams("none")):
        with pytest.raises(FailedPrecondition) as caught:
            store.create("c", "s@1", DIM, exist_ok=True, lexical=other)
        assert caught.value.reason == "LEXICAL_MISMATCH"
    store.close()


def test_store_checks_every_text_before_writing_any_version(tmp_path: Path) -> None:
    store = durable_store(tmp_path)
    store.create("c", "s@1", DIM, lexical=LexicalParams())
    store.begin_version("c", "v2", "s@1", DIM)
    with pytest.raises(InvalidArgument) as caught:
        store.upsert("c", ["a", "b"], vectors(2), [{}, {}], texts=["ok", "x" * (MAX_TEXT_BYTES + 1)])
    assert caught.value.reason == "TEXT_TOO_LONG"
    assert all(c.seq == 0 for c in store.alias("c").every_version().values())
    store.close()


def write_part(directory: Path, texts: dict[str, str], lexical: LexicalParams | None) -> None:
    part = HnswCollection("c", "s@1", DIM, HnswParams(), lexical=lexical)
    part.bulk_insert(list(texts), vectors(len(texts), 5), [{}] * len(texts), list(texts.values()))
    part.write_snapshot(directory)


def test_pending_version_install_carries_texts_into_the_bundle(tmp_path: Path) -> None:
    bundles = tmp_path / "bundles"
    write_part(bundles / "v2", {"a": "catalog apple", "b": "catalog banana", "c": "catalog cherry"},
               LexicalParams())
    store = durable_store(tmp_path, bundles)
    store.create("c", "s@1", DIM, lexical=LexicalParams())
    pending, _ = store.begin_version("c", "v2", "s@1", DIM)
    assert pending.lexical_params == LexicalParams()  # lexical like the serving version
    # Written while the bundle was being built: newer than its catalog.
    store.upsert("c", ["a", "online"], vectors(2), [{}, {}], texts=["fresh avocado", "online olive"])
    store.delete_items("c", ["b"])

    installed, _ = store.load_bundle("c", "v2", path="v2")
    assert installed.lexical_params == LexicalParams()
    assert found(installed, "avocado") == ["a"] and found(installed, "apple") == []
    assert found(installed, "olive") == ["online"] and found(installed, "banana") == []
    assert sorted(found(installed, "catalog")) == ["c"]
    assert installed.get(["online"])[0].text == "online olive"
    store.close()

    restarted = durable_store(tmp_path, bundles)
    again = restarted.alias("c").versions["v2"]
    assert found(again, "avocado") == ["a"] and found(again, "olive") == ["online"]
    assert sorted(found(again, "catalog")) == ["c"]
    restarted.close()


def test_bundles_of_another_lexical_config_are_refused(tmp_path: Path) -> None:
    bundles = tmp_path / "bundles"
    write_part(bundles / "dense", {"a": "apple"}, None)
    write_part(bundles / "french", {"a": "pomme"}, LexicalParams("french"))
    write_part(bundles / "english", {"a": "apple"}, LexicalParams("english"))
    store = durable_store(tmp_path, bundles)
    store.create("c", "s@1", DIM, lexical=LexicalParams("english"))
    store.begin_version("c", "p", "s@1", DIM)
    for version, path in (("v-dense", "dense"), ("v-french", "french"), ("p", "dense")):
        with pytest.raises(FailedPrecondition) as caught:
            store.load_bundle("c", version, path=path)
        assert caught.value.reason == "LEXICAL_MISMATCH", version
    assert sorted(store.alias("c").versions) == ["live"] and "p" in store.alias("c").pending
    assert found(store.load_bundle("c", "v-en", path="english")[0], "apple") == ["a"]
    # A new collection takes its config from its first bundle.
    assert store.load_bundle("fr", "v1", path="french")[0].lexical_params == LexicalParams("french")
    store.close()


def test_lexical_index_commits_writes_in_groups() -> None:
    index = LexicalIndex(LexicalParams())
    index.write((), [(0, "alpha"), (1, "beta")])
    index.write([0], [(0, "gamma")])  # deleted and re-added within one uncommitted group
    index.write((), [(2, "delta")])
    index.write([2], ())  # added then deleted within the group
    assert index.search("alpha gamma delta beta", 10) != []
    assert sorted(label for label, _ in index.search("alpha gamma delta beta", 10)) == [0, 1]
    assert index.doc_count == 2
    assert index.search("gamma", 10, allowed=frozenset()) == [] and index.search("gamma", 0) == []
