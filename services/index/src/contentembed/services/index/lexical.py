"""BM25 over the items' text with tantivy, beside a collection's HNSW. Pure index code: no
grpc.

The durable form of the lexical index is the text itself (in the WAL and in snapshots'
items.json): the tantivy index lives in RAM and is rebuilt when a snapshot is loaded, so
there is one format on disk, covered by the snapshot's sha256 digests, and nothing of
tantivy's to verify, migrate or keep in step with the WAL. Rebuilding measured ~42k
documents/s (65-word documents, one writer thread, commit included; 2 cores): about 25 s
per million items at start-up. The index takes ~11 MiB of RAM at 1k documents and ~23 MiB
at 20k (9 MiB of text), beside the texts the collection keeps.

Quirks of the tantivy bindings (0.27) this module works around:

- ``tantivy.Document(label=5)`` makes an i64 value, which a u64 field refuses and which
  kills the writer: documents are built with ``add_unsigned``.
- ``IndexWriter.delete_documents_by_term`` deletes nothing on a u64 field, silently;
  ``delete_documents_by_query`` with a term query does.
- ``Searcher.search`` with limit 0 panics (a Rust assertion): never called with it.
- A term-set query on its own scores 1.0 per hit: as a filter it is wrapped in a constant
  score of 0, so filtered and unfiltered searches give the same BM25 scores.
- The writer is not safe for concurrent use, and a commit costs milliseconds (3.5 ms
  measured for one small document): writes are grouped, never committed one by one. They mark the index dirty; the first search that finds it dirty commits once
  and reloads (concurrent searches wait for that one commit), so a write acknowledged
  before a search is visible to it.
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from collections.abc import Iterable, Sequence, Set
from dataclasses import dataclass
from typing import Any

import tantivy

from contentembed.services.common.errors import InvalidArgument

DEFAULT_LANGUAGE = "english"
NO_LANGUAGE = "none"  # lower-casing only: no stop words, no stemming
# Languages with both a Snowball stemmer and a stop-word list in tantivy: a stemmer
# without stop words would rank "the" and "and" like content words.
LANGUAGES = (
    "danish", "dutch", "english", "finnish", "french", "german", "hungarian", "italian",
    "norwegian", "portuguese", "russian", "spanish", "swedish",
)
# Tokens of this many bytes or more (hashes, base64, words run together) are dropped
# (tantivy's remove_long keeps those shorter): they match nothing useful and each would be
# a term of its own in the dictionary.
MAX_TOKEN_BYTES = 40
# Per item and per query. Text is kept with every item (WAL, snapshot, memory) and a
# query's terms are one clause each: the bound keeps both in proportion to a vector.
MAX_TEXT_BYTES = 64 << 10
# The indexing buffer before tantivy flushes a segment; allocated as it fills, so an
# idle or small collection does not hold it.
WRITER_HEAP_BYTES = 50_000_000
# A filter allowing at least this share of the documents is applied to the unfiltered best
# hits first (falling back to the label-set query when too few of them pass); a narrower
# one goes to the label-set query directly, which walks one posting list per allowed
# label. Measured at 20k documents (top 10 and 100): 1% allowed, 0.9 ms a query by label
# set against 5.4 ms by post-filter; 5%, 2.0 against 1.6; 20%, 4.2 against 0.65.
POST_FILTER_MIN_SHARE = 0.05
LABEL, TEXT = "label", "text"
TOKENIZER = "contentembed"  # the analyzer's name inside each tantivy index


def check_language(language: str) -> str:
    """The language a lexical config names, normalized ("" is english, case ignored);
    INVALID_ARGUMENT BAD_LEXICAL_LANGUAGE for one without stemmer and stop words."""
    normalized = language.strip().lower() or DEFAULT_LANGUAGE
    if normalized != NO_LANGUAGE and normalized not in LANGUAGES:
        raise InvalidArgument(
            f"lexical language {language[:64]!r} is not supported; choose one of "
            f"{', '.join(LANGUAGES)}, or {NO_LANGUAGE!r} (lower-casing only)",
            reason="BAD_LEXICAL_LANGUAGE",
        )
    return normalized


@dataclass(frozen=True)
class LexicalParams:
    """How a collection's text is analysed; the language is normalized on construction, so
    two configs are equal exactly when they index text the same way."""

    language: str = DEFAULT_LANGUAGE
    # The collection has only this index: no vectors, no space (dim 0, space_id "").
    # Part of the config, so exist_ok and bundle checks compare it like the language.
    lexical_only: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "language", check_language(self.language))

    def to_json(self) -> dict[str, Any]:
        # lexical_only only when set: configs of hybrid collections stay as they were.
        return {"language": self.language, **({"lexical_only": True} if self.lexical_only else {})}

    @classmethod
    def from_json(cls, value: Any) -> LexicalParams | None:
        """From collection.json or a snapshot manifest (None or absent: not lexical).
        Raises ValueError for anything else, which the loaders report as corrupt."""
        if value is None:
            return None
        if (not isinstance(value, dict) or not isinstance(value.get("language"), str)
                or not isinstance(value.get("lexical_only", False), bool)):
            raise ValueError(
                f"lexical config must be {{'language': str, 'lexical_only'?: bool}}, got {value!r}"
            )
        try:
            return cls(value["language"], value.get("lexical_only", False))
        except InvalidArgument as error:
            raise ValueError(error.message) from None


def build_analyzer(language: str) -> tantivy.TextAnalyzer:
    """Split on non-alphanumerics, drop over-long tokens, lower-case; then the language's
    stop words and stemmer. Documents and queries go through the same one."""
    language = check_language(language)
    builder = (
        tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
        .filter(tantivy.Filter.remove_long(MAX_TOKEN_BYTES))
        .filter(tantivy.Filter.lowercase())
    )
    if language != NO_LANGUAGE:
        builder = builder.filter(tantivy.Filter.stopword(language)).filter(
            tantivy.Filter.stemmer(language)
        )
    return builder.build()


def analyze(language: str, text: str) -> list[str]:
    """The terms a text is reduced to, in order, repeats kept (building the analyzer
    takes microseconds: none is cached)."""
    return build_analyzer(language).analyze(text)


def check_text(text: str, *, what: str) -> None:
    """At most MAX_TEXT_BYTES of UTF-8. A str from a protobuf is valid UTF-8; one from a
    direct caller may hold lone surrogates, which would fail later, in the WAL encoder or
    in tantivy, after parts of the write were made: refused here, before anything is."""
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidArgument(f"{what}: text is not valid UTF-8", reason="TEXT_NOT_UTF8") from None
    if size > MAX_TEXT_BYTES:
        raise InvalidArgument(
            f"{what}: text is {size} bytes of UTF-8, at most {MAX_TEXT_BYTES}",
            reason="TEXT_TOO_LONG",
        )


def check_texts(texts: Sequence[str] | None, count: int, *, what: str = "items") -> None:
    if texts is None:
        return
    if len(texts) != count:
        raise ValueError(f"{what}: {len(texts)} texts for {count} items")
    for position, text in enumerate(texts):
        check_text(text, what=f"{what}[{position}]")


class LexicalIndex:
    """One tantivy index in RAM: a document per item that has text, keyed by the
    collection's label (u64, indexed and fast), its text analysed into term frequencies
    (no positions: there are no phrase queries).

    The owning collection serializes writes against searches (its RW lock); this class
    only has to serialize use of the writer, between writes and the commit a search makes.
    """

    def __init__(self, params: LexicalParams) -> None:
        self.params = params
        self._analyzer = build_analyzer(params.language)
        builder = tantivy.SchemaBuilder()
        builder.add_unsigned_field(LABEL, indexed=True, fast=True)
        builder.add_text_field(TEXT, tokenizer_name=TOKENIZER, index_option="freq")
        self._schema = builder.build()
        self._index = tantivy.Index(self._schema)  # no path: in RAM
        self._index.register_tokenizer(TOKENIZER, self._analyzer)
        # One indexing thread: a shard has few cores, and they belong to HNSW searches.
        self._writer = self._index.writer(heap_size=WRITER_HEAP_BYTES, num_threads=1)
        self._searcher = self._index.searcher()
        self._dirty = False
        self._lock = threading.Lock()  # the writer, and the commit that swaps _searcher

    @classmethod
    def build(cls, params: LexicalParams, texts: Iterable[tuple[int, str]]) -> LexicalIndex:
        """A new index of (label, text) pairs, committed once."""
        index = cls(params)
        index.write((), texts)
        index.searcher()
        return index

    def write(self, removed: Iterable[int], added: Iterable[tuple[int, str]]) -> None:
        """Deletes the documents of ``removed`` labels, then adds ``added`` (a label may be
        in both: a replaced text). tantivy applies deletes to the documents added before
        them only, so the order within one uncommitted group is kept."""
        with self._lock:
            for label in removed:
                self._writer.delete_documents_by_query(
                    tantivy.Query.term_query(self._schema, LABEL, label)
                )
                self._dirty = True
            for label, text in added:
                document = tantivy.Document()
                document.add_unsigned(LABEL, label)
                document.add_text(TEXT, text)
                self._writer.add_document(document)
                self._dirty = True

    def searcher(self) -> tantivy.Searcher:
        """A searcher that sees every write made so far: the first search after writes
        commits them (once, for all searches waiting on the lock meanwhile)."""
        if self._dirty:
            with self._lock:
                if self._dirty:
                    self._writer.commit()
                    self._index.reload()
                    self._searcher = self._index.searcher()
                    self._dirty = False
        return self._searcher

    @property
    def doc_count(self) -> int:
        return self.searcher().num_docs

    def query(self, text: str) -> tantivy.Query | None:
        """The text as a disjunction of its analysed terms, built term by term (never
        through tantivy's query parser, so no character of user text is syntax); None
        when no term is left. A repeated term is one clause boosted by its count: the
        same score as repeating the clause (what a query parser makes of a repeated word:
        BM25's query-term frequency), with one posting list read instead of several. Repeats are kept
        because a long query (a product description used as a query) repeats what it is
        about."""
        counts = Counter(self._analyzer.analyze(text))
        if not counts:
            return None
        clauses = []
        for term, count in counts.items():
            clause = tantivy.Query.term_query(self._schema, TEXT, term, "freq")
            if count > 1:
                clause = tantivy.Query.boost_query(clause, float(count))
            clauses.append((tantivy.Occur.Should, clause))
        return tantivy.Query.boolean_query(clauses)

    def search(
        self, text: str, top_k: int, allowed: Set[int] | None = None
    ) -> list[tuple[int, float]]:
        """(label, BM25 score) of the best ``top_k`` documents, best first (equal scores by
        label); only labels in ``allowed`` when it is given, exactly: the best top_k
        allowed documents, never fewer because others outranked them."""
        query = self.query(text)
        if query is None or top_k < 1 or (allowed is not None and not allowed):
            return []
        searcher = self.searcher()
        if allowed is None:
            return self._hits(searcher, query, top_k)
        if len(allowed) >= POST_FILTER_MIN_SHARE * searcher.num_docs:
            # The unfiltered best `fetch`, filtered: exact when top_k of them pass (any
            # allowed document not fetched scores below every fetched one) or when the
            # query has no more matches than were fetched.
            fetch = math.ceil(2 * top_k * searcher.num_docs / len(allowed))
            hits = self._hits(searcher, query, fetch)
            kept = [hit for hit in hits if hit[0] in allowed]
            if len(kept) >= top_k or len(hits) < fetch:
                return kept[:top_k]
        only = tantivy.Query.const_score_query(
            tantivy.Query.term_set_query(self._schema, LABEL, list(allowed)), 0.0
        )
        filtered = tantivy.Query.boolean_query(
            [(tantivy.Occur.Must, query), (tantivy.Occur.Must, only)]
        )
        return self._hits(searcher, filtered, top_k)

    @staticmethod
    def _hits(searcher: tantivy.Searcher, query: tantivy.Query, limit: int) -> list[tuple[int, float]]:
        hits = searcher.search(query, limit, count=False).hits
        if not hits:
            return []
        labels = searcher.fast_field_values(LABEL, [address for _, address in hits])
        # tantivy breaks ties by document address, which depends on how segments were
        # written and merged; by label, equal scores come out in one order everywhere
        # (before and after a restart). Which of several documents tied at the cut make
        # it in is still tantivy's choice.
        return sorted(
            ((int(label), float(score)) for (score, _), label in zip(hits, labels)),
            key=lambda hit: (-hit[1], hit[0]),
        )
