"""The docstring evaluation set: what becomes a query and a document, what is skipped, and
that the files are the ones ``contentembed ingest`` and ``contentembed eval`` read."""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from contentembed.demo.docstrings import (
    DEV_SHARE,
    build,
    first_sentence,
    split_docstring,
    split_of,
    write,
)
from contentembed.pipeline.catalog import read_catalog_rows
from contentembed.pipeline.evaluation import read_queries

PACKAGE = "ce_docstring_fixture"
LONG = (
    "The quick brown fox jumps over the lazy dog while the careful reader counts "
    "every single word of this deliberately long sentence."
)

SOURCES = {
    "__init__.py": f'''
        from ._impl import exported

        def compute_frequency(signal):
            """Compute the widget frequency of a signal.

            Looks at every sample, e.g. the first one, and {LONG}
            """

        def tiny():
            """Return the tiny thing.

            Too short.
            """

        def _private():
            """Hidden helper that is never listed here.

            {LONG}
            """

        def first_copy():
            """Mirror one of the shared summary.

            First body: {LONG}
            """

        def second_copy():
            """Mirror one of the shared summary.

            Second body: {LONG}
            """

        def same_body_long_name():
            """Summary of the long-named twin.

            Twin body: {LONG}
            """

        def same_body():
            """Summary of the short-named twin.

            Twin body: {LONG}
            """

        class Gadget:
            """A gadget that holds widgets.

            Gadgets are built once and {LONG}
            """

            def spin(self, turns):
                """Spin the gadget a number of turns.

                Each turn moves every widget by one slot, and {LONG}
                """

            @property
            def size(self):
                """How many widgets the gadget holds.

                Counted on each access, so {LONG}
                """

            def _hidden(self):
                """Private method that is skipped.

                {LONG}
                """
    ''',
    "_impl.py": f'''
        def exported():
            """Exported from a private module under the package name.

            {LONG}
            """
    ''',
    "signatures.py": f'''
        def frob(x):
            """frob(x, y=None,
                    z=0) -> int

            Frobnicate the operands into one number.

            Operands are frobnicated left to right, and {LONG}
            """
    ''',
    "broken.py": "raise ImportError('missing optional dependency')\n",
    "tests/__init__.py": "raise RuntimeError('test packages must never be imported')\n",
    "test_things.py": "raise RuntimeError('test modules must never be imported')\n",
}


@pytest.fixture
def fixture_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    root = tmp_path / "src" / PACKAGE
    for name, source in SOURCES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    yield PACKAGE
    for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
        del sys.modules[name]


def test_documented_objects_become_documents_and_queries(fixture_package: str) -> None:
    evalset = build([fixture_package], stdlib=False)
    documents = {entry.id: entry for entry in evalset.documents}
    p = fixture_package
    assert sorted(documents) == sorted(
        f"{p}.{name}"
        for name in [
            "compute_frequency", "first_copy", "second_copy", "same_body", "exported",
            "Gadget", "Gadget.spin", "Gadget.size", "signatures.frob",
        ]
    )
    frequency = documents[f"{p}.compute_frequency"]
    assert frequency.summary == "Compute the widget frequency of a signal."
    # The summary is not in the document; the name is; whitespace is collapsed.
    assert frequency.text == f"{p}.compute_frequency: Looks at every sample, e.g. the first one, and {LONG}"
    assert "\n" not in frequency.text and "  " not in frequency.text
    assert documents[f"{p}.Gadget.size"].kind == "property"
    assert documents[f"{p}.signatures.frob"].summary == "Frobnicate the operands into one number."
    # Of two identical bodies the shorter name stays.
    assert f"{p}.same_body_long_name" not in documents
    assert evalset.dropped == {"short": 1, "duplicate_document": 1, "ambiguous_query": 2}
    assert evalset.walk.failed == {f"{p}.broken": "ImportError"}

    labelled = {e.id for entries in evalset.queries.values() for e in entries}
    # A summary two documents share labels neither: the one relevant id would be arbitrary.
    assert labelled == set(documents) - {f"{p}.first_copy", f"{p}.second_copy"}
    for split, entries in evalset.queries.items():
        assert all(split_of(entry.id) == split for entry in entries)


def test_files_are_what_ingest_and_eval_read(fixture_package: str, tmp_path: Path) -> None:
    out = tmp_path / "set"
    manifest = write(build([fixture_package], stdlib=False), out, [fixture_package], stdlib=False)
    catalog = read_catalog_rows(out / "catalog.jsonl")
    assert catalog.rejects == []
    ids = {row.id for row in catalog.rows}
    assert len(ids) == manifest["documents"] == 9
    assert catalog.rows[0].metadata.keys() == {"package", "module", "kind"}
    total = 0
    for split in ("dev", "test"):
        path = out / f"queries-{split}.jsonl"
        if not path.read_text():
            continue  # a handful of ids may all fall in one split
        queries = read_queries(path)
        total += len(queries)
        assert all(len(q.relevant) == 1 and q.relevant <= ids for q in queries)
    assert total == sum(manifest["queries"].values()) == 7
    assert manifest["failed_imports"] == {f"{fixture_package}.broken": "ImportError"}

    again = tmp_path / "again"
    write(build([fixture_package], stdlib=False), again, [fixture_package], stdlib=False)
    assert json.loads((again / "manifest.json").read_text())["sha256"] == manifest["sha256"]


def test_a_stdlib_package() -> None:
    evalset = build(["json"], stdlib=False)
    documents = {entry.id: entry for entry in evalset.documents}
    assert "json.dumps" in documents
    assert documents["json.dumps"].summary.startswith("Serialize ``obj``")
    # JSONDecoder is defined in json.decoder: counted there, not again under json.
    assert "json.decoder.JSONDecoder" in documents and "json.JSONDecoder" not in documents


def test_first_sentence_and_signatures() -> None:
    assert first_sentence("Do it, e.g. now. Then more.") == ("Do it, e.g. now.", "Then more.")
    assert first_sentence("No sentence end here") == ("No sentence end here", "")
    assert split_docstring("dumps(obj) -> str\n--\n\nReturn a string of obj.\n\nMore.") == (
        "Return a string of obj.", "More."
    )
    assert split_docstring(">>> import io\n>>> x = 1\n\nMore text.") is None
    assert split_docstring("Hi.\n\nToo few words in the summary.") is None


def test_split_is_a_stable_hash_near_the_dev_share() -> None:
    ids = [f"module.function_{i}" for i in range(4000)]
    dev = sum(split_of(i) == "dev" for i in ids) / len(ids)
    assert abs(dev - DEV_SHARE) < 0.03
    # blake2b of the id, not hash(): the same in every process, so splits never move.
    assert [split_of(i) for i in ids[:12]] == [
        "dev", "dev", "test", "test", "test", "test", "dev", "test", "dev", "dev", "dev", "test"
    ]
