"""An evaluation set made offline from the docstrings of installed Python code.

    python -m contentembed.demo.docstrings OUT_DIR [--package numpy ...]

Every documented public function, class, method and property of the standard library and
of a fixed list of installed packages becomes one catalog row and, where its summary is
unambiguous, one labelled query:

- query: the docstring's summary (its first sentence; a leading C signature line such as
  ``dumps(obj, ...) -> str`` is not a summary and is skipped);
- document: the object's qualified name, then the rest of the docstring (the summary is
  removed, so the query never appears verbatim in its document). The name stays because
  every place API text is searched (a reference page, an IDE) shows it next to the
  description; without it the document would be harder for lexical retrieval than any
  real one. It does not give the answer away: summaries seldom repeat their own name.

Rules, all deterministic for given installed versions:

- modules are imported, never run: private modules (any ``_`` component), tests and a
  short list of modules with effects beyond defining names (``antigravity`` opens a web
  browser, ``this`` prints) or of no use here (GUI toolkits, codec tables) are skipped;
  an import that fails is recorded in the manifest and skipped;
- an object counts once, in the module it says it belongs to (``__module__``), or, when
  that module is private, in the first public module (by name) that exports it;
- a document needs :data:`MIN_DOCUMENT_WORDS` words beside the name; documents with the
  same text keep only the first id (by name); summaries shared by several documents
  (copied docstrings, ``numpy.ma`` mirrors of ``numpy``) label nothing, since the one
  relevant id would be arbitrary — the documents stay in the catalog as distractors;
- whitespace is collapsed to single spaces in queries and documents;
- the split is by a stable hash of the id (blake2b, not ``hash()``): :data:`DEV_SHARE` of
  the queries are ``dev`` (for choosing parameters), the rest ``test``.

Writes ``catalog.jsonl`` (``{"id", "text", "metadata"}``: what ``contentembed ingest``
reads), ``queries-dev.jsonl`` and ``queries-test.jsonl`` (``{"id", "text", "relevant"}``:
what ``contentembed eval`` reads) and ``manifest.json`` (Python and package versions,
counts, skipped modules, file digests).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import importlib.metadata
import inspect
import io
import json
import pkgutil
import platform
import re
import sys
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

FORMAT = "contentembed-docstrings/v1"
STDLIB = "stdlib"
DEFAULT_PACKAGES = ("numpy", "torch", "google.protobuf", "grpc")

# 30% dev: enough queries (over a thousand) for 5-fold cross-validation of a handful of
# fusion parameters, and 70% test, so the reported numbers have the smaller error bars
# (±0.013 at 95% on a recall near 0.8 with ~3,900 test queries; ±0.015 at 50/50).
DEV_SHARE = 0.3

MIN_DOCUMENT_WORDS = 15  # beside the name: fewer is a one-liner's leftover, not a document
MIN_QUERY_WORDS = 3  # "Return self." says nothing
MAX_QUERY_WORDS = 40  # a longer "first sentence" is a paragraph the splitter could not cut

# Top-level standard modules never imported, and why.
SKIPPED_STDLIB = {
    "antigravity": "opens a web browser on import",
    "this": "prints on import",
    "idlelib": "the IDLE application",
    "turtledemo": "demo programs",
    "tkinter": "GUI toolkit",
    "turtle": "GUI toolkit",
    "test": "CPython's test suite",
    "lib2to3": "deprecated tool with grammar tables",
    "pydoc_data": "pydoc's topic texts, not code",
    "encodings": "hundreds of codec tables with one docstring",
    "ensurepip": "installer bootstrap",
    "readline": "changes the terminal's line editing on import",
    "xxlimited": "C API test module",
    "xxlimited_35": "C API test module",
    "xxsubtype": "C API test module",
    "distutils": "deprecated, warns on import",
}
TEST_PARTS = {"test", "tests", "testing", "conftest", "setup", "benchmarks"}

# A signature where C docstrings (and some old Python ones) start: "name(args)",
# "name(args) -> result", "name(args) --> result", "x = name(args)", or a bare argument list
# continued from the def line ("m=None, name=None, ...").
SIGNATURE = re.compile(r"^([\w.]+\s*=\s*)?[\w.]+\(.*\)(\s*-+>.*|\s*--)?$|^\**\w+=", re.DOTALL)
# A first "sentence" that is a doctest, a reST directive or a section heading (numpy's
# "Attributes\n----------") rather than prose.
NOT_PROSE = re.compile(r"^(>>>|\.\.|\w+:$)|---")
SENTENCE_END = re.compile(r"[.!?](?=\s+[A-Z0-9`'\"(\[]|\s*$)")
ABBREVIATIONS = {"e.g", "i.e", "etc", "vs", "cf", "approx", "resp", "viz"}
WHITESPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class Entry:
    id: str  # qualified name, e.g. "json.dumps" or "zipfile.ZipFile.open"
    summary: str
    body: str
    kind: str  # function, class, method, property
    module: str
    package: str  # "stdlib" or the walked package's name

    @property
    def text(self) -> str:
        return f"{self.id}: {self.body}"


@dataclass
class Walk:
    modules: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # module -> exception type


@dataclass
class EvalSet:
    documents: list[Entry]
    queries: dict[str, list[Entry]]  # split -> entries whose summary labels them
    walk: Walk
    dropped: dict[str, int]


def normalize(text: str) -> str:
    return WHITESPACE.sub(" ", text).strip()


def is_public_module(name: str) -> bool:
    parts = name.split(".")
    return not any(
        part.startswith("_") or part in TEST_PARTS or part.startswith("test_")
        or part.endswith(("_test", "_tests"))
        for part in parts
    )


def split_of(item_id: str, dev_share: float = DEV_SHARE) -> str:
    digest = hashlib.blake2b(item_id.encode("utf-8"), digest_size=8).digest()
    return "dev" if int.from_bytes(digest, "big") / 2**64 < dev_share else "test"


def first_sentence(paragraph: str) -> tuple[str, str]:
    """(first sentence, the rest of the paragraph); the whole paragraph when no sentence
    end is found. A period after a common abbreviation does not end a sentence."""
    for match in SENTENCE_END.finditer(paragraph):
        before = paragraph[: match.start()].rsplit(None, 1)
        word = before[-1].lower() if before else ""
        if word in ABBREVIATIONS:
            continue
        return paragraph[: match.end()].strip(), paragraph[match.end():].strip()
    return paragraph.strip(), ""


def split_docstring(doc: str) -> tuple[str, str] | None:
    """(summary, body) of a docstring, whitespace collapsed; None without a usable summary."""
    lines = inspect.cleandoc(doc).splitlines()
    while True:
        # C functions document their signature first, then "--" or a blank line; a long
        # signature wraps over several lines, so the whole paragraph is tested too.
        while lines and (SIGNATURE.match(lines[0].strip()) or lines[0].strip() in ("", "--")):
            lines.pop(0)
        paragraph: list[str] = []
        while lines and lines[0].strip():
            paragraph.append(lines.pop(0).strip())
        if not paragraph:
            return None
        if not SIGNATURE.match(" ".join(paragraph)):
            break
    summary, rest = first_sentence(" ".join(paragraph))
    words = len(summary.split())
    if (
        not MIN_QUERY_WORDS <= words <= MAX_QUERY_WORDS
        or not re.search("[A-Za-z]", summary)
        or NOT_PROSE.search(summary)
    ):
        return None
    return normalize(summary), normalize(rest + "\n" + "\n".join(lines))


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Imports that warn or print say nothing to our output."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sink = io.StringIO()
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            yield


def try_import(name: str, walk: Walk) -> ModuleType | None:
    try:
        with quiet():
            return importlib.import_module(name)
    except (Exception, SystemExit) as error:  # noqa: BLE001 - any import failure skips it
        walk.failed[name] = type(error).__name__
        return None


def walk_package(root: str, walk: Walk) -> list[ModuleType]:
    """``root`` and its public submodules, depth first, sorted by name."""
    module = try_import(root, walk)
    if module is None:
        return []
    found = [module]
    walk.modules.append(root)
    path = getattr(module, "__path__", None)
    if path is None:
        return found
    children = sorted(
        info.name for info in pkgutil.iter_modules(path, prefix=root + ".")
        if is_public_module(info.name)
    )
    for child in children:
        found.extend(walk_package(child, walk))
    return found


def stdlib_roots() -> list[str]:
    return sorted(
        name for name in sys.stdlib_module_names
        if is_public_module(name) and name not in SKIPPED_STDLIB
    )


def own_doc(obj: Any) -> str | None:
    """The object's own docstring: never one inherited from a base class or the type."""
    doc = getattr(obj, "__doc__", None)
    if not isinstance(doc, str):
        return None
    if inspect.isclass(obj):
        return obj.__dict__.get("__doc__") if isinstance(obj.__dict__.get("__doc__"), str) else None
    if not inspect.isroutine(obj) and not isinstance(obj, property):
        return None
    # A builtin method of a C type carries its type's docstring when it has none.
    if doc == getattr(type(obj), "__doc__", None):
        return None
    return doc


def members(cls: type) -> Iterator[tuple[str, str, Any]]:
    """(name, kind, object) of a class's own public methods and properties."""
    for name in sorted(cls.__dict__):
        if name.startswith("_"):
            continue
        raw = cls.__dict__[name]
        if isinstance(raw, (staticmethod, classmethod)):
            raw = raw.__func__
        if isinstance(raw, property):
            yield name, "property", raw
        elif inspect.isroutine(raw):
            yield name, "method", raw


def collect(modules: Sequence[tuple[str, ModuleType]]) -> list[Entry]:
    """Entries of (package, module) pairs, each object counted once (see the module doc)."""
    with quiet():  # reading some attributes warns (typing.io, deprecated aliases)
        return _collect(modules)


def _collect(modules: Sequence[tuple[str, ModuleType]]) -> list[Entry]:
    walked = {module.__name__ for _, module in modules}
    claimed: set[int] = set()
    entries: list[Entry] = []

    def add(item_id: str, doc: str | None, kind: str, module: str, package: str) -> None:
        if doc is None:
            return
        parts = split_docstring(doc)
        if parts is not None:
            entries.append(Entry(item_id, parts[0], parts[1], kind, module, package))

    for package, module in modules:
        name = module.__name__
        try:
            namespace = dict(vars(module))
        except TypeError:
            continue
        for attr in sorted(namespace):
            obj = namespace[attr]
            if attr.startswith("_") or not (inspect.isclass(obj) or inspect.isroutine(obj)):
                continue
            home = getattr(obj, "__module__", None)
            if not isinstance(home, str):
                continue
            # Defined elsewhere: counted in its own module when that one is walked; else
            # (a private or unwalked home) by the first walked module that exports it.
            if (home != name and home in walked) or id(obj) in claimed:
                continue
            claimed.add(id(obj))
            item_id = f"{name}.{attr}"
            if inspect.isclass(obj):
                add(item_id, own_doc(obj), "class", name, package)
                for member, kind, value in members(obj):
                    add(f"{item_id}.{member}", own_doc(value), kind, name, package)
            else:
                add(item_id, own_doc(obj), "function", name, package)
    return entries


def build(packages: Iterable[str] = DEFAULT_PACKAGES, stdlib: bool = True,
          dev_share: float = DEV_SHARE) -> EvalSet:
    walk = Walk()
    modules: list[tuple[str, ModuleType]] = []
    roots = [(STDLIB, root) for root in stdlib_roots()] if stdlib else []
    roots += [(package, package) for package in packages]
    for package, root in roots:
        modules.extend((package, module) for module in walk_package(root, walk))
    # Of documents with the same text the shortest name stays: usually the public one
    # (numpy.linalg.norm, not numpy.linalg.linalg.norm).
    entries = sorted(
        collect(modules), key=lambda entry: (entry.id.count("."), len(entry.id), entry.id)
    )

    dropped = {"short": 0, "duplicate_document": 0, "ambiguous_query": 0}
    documents: list[Entry] = []
    seen_bodies: set[str] = set()
    for entry in entries:
        if len(entry.body.split()) < MIN_DOCUMENT_WORDS:
            dropped["short"] += 1
        elif entry.body in seen_bodies:
            dropped["duplicate_document"] += 1
        else:
            seen_bodies.add(entry.body)
            documents.append(entry)

    summary_count: dict[str, int] = {}
    for entry in documents:
        key = entry.summary.casefold()
        summary_count[key] = summary_count.get(key, 0) + 1
    documents.sort(key=lambda entry: entry.id)
    queries: dict[str, list[Entry]] = {"dev": [], "test": []}
    for entry in documents:
        if summary_count[entry.summary.casefold()] > 1:
            dropped["ambiguous_query"] += 1
            continue
        queries[split_of(entry.id, dev_share)].append(entry)
    return EvalSet(documents, queries, walk, dropped)


def versions(packages: Iterable[str]) -> dict[str, str]:
    """Installed distributions that provide each walked package's top-level name."""
    provided = importlib.metadata.packages_distributions()
    found: dict[str, str] = {}
    for package in packages:
        for dist in provided.get(package.split(".")[0], []):
            with contextlib.suppress(importlib.metadata.PackageNotFoundError):
                found[dist] = importlib.metadata.version(dist)
    return dict(sorted(found.items()))


def _write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> str:
    data = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def write(evalset: EvalSet, out: Path, packages: Sequence[str], stdlib: bool,
          dev_share: float = DEV_SHARE) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    digests = {
        "catalog.jsonl": _write_jsonl(
            out / "catalog.jsonl",
            (
                {"id": e.id, "text": e.text,
                 "metadata": {"package": e.package, "module": e.module, "kind": e.kind}}
                for e in evalset.documents
            ),
        )
    }
    for split, entries in evalset.queries.items():
        name = f"queries-{split}.jsonl"
        digests[name] = _write_jsonl(
            out / name, ({"id": e.id, "text": e.summary, "relevant": [e.id]} for e in entries)
        )
    manifest = {
        "format": FORMAT,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "stdlib": stdlib,
        "packages": list(packages),
        "versions": versions(packages),
        "rules": {
            "dev_share": dev_share,
            "min_document_words": MIN_DOCUMENT_WORDS,
            "query_words": [MIN_QUERY_WORDS, MAX_QUERY_WORDS],
            "document": "qualified name, ': ', docstring without its summary",
        },
        "modules": len(evalset.walk.modules),
        "failed_imports": dict(sorted(evalset.walk.failed.items())),
        "skipped_stdlib": SKIPPED_STDLIB if stdlib else {},
        "documents": len(evalset.documents),
        "queries": {split: len(entries) for split, entries in evalset.queries.items()},
        "dropped": evalset.dropped,
        "sha256": digests,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Build a labelled retrieval set from installed docstrings."
    )
    parser.add_argument("out", type=Path, help="directory for the catalog, queries, manifest")
    parser.add_argument(
        "--package", action="append", dest="packages",
        help=f"walk this installed package too (repeatable; default {', '.join(DEFAULT_PACKAGES)})",
    )
    parser.add_argument("--no-stdlib", action="store_true", help="leave out the standard library")
    args = parser.parse_args(argv)
    packages = args.packages if args.packages is not None else list(DEFAULT_PACKAGES)
    evalset = build(packages, stdlib=not args.no_stdlib)
    manifest = write(evalset, args.out, packages, stdlib=not args.no_stdlib)
    print(
        f"{args.out}: {manifest['documents']} documents, queries {manifest['queries']}, "
        f"{manifest['modules']} modules ({len(manifest['failed_imports'])} failed imports)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
