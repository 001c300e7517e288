"""JSONL catalogs as typed rows and rejects; shared by ``ingest`` and ``build``. No grpc.

A row is ``{"id", "text"?, "image"?, "metadata"?}``; ``image`` is a path relative to the
catalog file. Every line becomes a :class:`CatalogRow` or a :class:`Reject` (line, id if
any, reason); the first occurrence of an id wins. Images are only read here (existence,
readability, their bytes for the content digest): whether they decode is up to whoever
embeds them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

# Pure modules of the services (no grpc, no third-party packages): the same id rules and
# digests as the shards, with the SDK's base install.
from contentembed.services.common.digests import sha256_file
from contentembed.services.common.validation import MAX_ID_BYTES, shown

DEMO_DIR = Path(__file__).resolve().parent.parent / "demo"
DEMO_CATALOG = DEMO_DIR / "catalog.jsonl"
DEMO_QUERIES = DEMO_DIR / "queries.jsonl"
DEFAULT_MAX_REJECTS = 1000
# The services take messages of up to 16 MiB (their default --max-message-bytes): a row
# whose content alone comes that close cannot go out in any request, so it is rejected
# as the catalog is read, with its size, instead of failing a batch (or the whole run).
MAX_ROW_BYTES = 15 << 20
T = TypeVar("T")


class CatalogError(ValueError):
    pass


class TooManyRejects(CatalogError):
    """More rejects than allowed; the run stops after writing the rejects file."""

    def __init__(self, count: int, limit: int, rejects: list[Reject]) -> None:
        super().__init__(f"{count} rows rejected, more than --max-rejects {limit}")
        self.count = count
        self.limit = limit
        self.rejects = rejects


@dataclass(frozen=True)
class LabelledQuery:
    query: str
    expected_id: str


@dataclass(frozen=True)
class CatalogRow:
    line: int
    id: str
    text: str | None
    image: Path | None  # resolved against the catalog's directory
    metadata: dict[str, Any]
    digest: str  # sha256 over the content (text or image bytes) and the metadata

    @property
    def modality(self) -> str:
        return "text" if self.text is not None else "image"

    def content(self) -> str | bytes:
        """What an encoder embeds: the text, or the image file's bytes."""
        if self.text is not None:
            return self.text
        assert self.image is not None
        return self.image.read_bytes()

    def content_bytes(self) -> int:
        """The size of ``content()`` on the wire (an image that became unreadable: 0)."""
        if self.text is not None:
            return len(self.text.encode("utf-8"))
        assert self.image is not None
        try:
            return self.image.stat().st_size
        except OSError:
            return 0

    def request_bytes(self) -> int:
        """About what the row adds to an upsert request: content, id and metadata."""
        metadata = json.dumps(self.metadata, separators=(",", ":")) if self.metadata else ""
        return self.content_bytes() + len(self.id.encode("utf-8")) + len(metadata.encode("utf-8"))


def sized_batches(
    items: Sequence[T], cost: Callable[[T], int], max_count: int, max_bytes: int
) -> list[list[T]]:
    """``items`` in order, cut into batches of at most ``max_count`` items and, unless an
    item alone is larger, ``max_bytes``: a batch counted in rows alone went over the
    message limit (64 images of 480 KB make 30 MB)."""
    batches: list[list[T]] = []
    current: list[T] = []
    size = 0
    for item in items:
        item_cost = cost(item)
        if current and (len(current) >= max_count or size + item_cost > max_bytes):
            batches.append(current)
            current, size = [], 0
        current.append(item)
        size += item_cost
    if current:
        batches.append(current)
    return batches


@dataclass(frozen=True)
class Reject:
    line: int
    id: str | None
    reason: str

    def to_json(self) -> str:
        return json.dumps({"line": self.line, "id": self.id, "reason": self.reason})


@dataclass
class Catalog:
    path: Path
    sha256: str
    rows_total: int  # non-blank lines
    rows: list[CatalogRow]
    rejects: list[Reject]
    first_line: dict[str, int] = field(default_factory=dict)  # modality -> first line

    @property
    def modalities(self) -> list[str]:
        return sorted(self.first_line)

    def info(self) -> dict[str, Any]:
        return {"name": self.path.name, "sha256": self.sha256, "rows": self.rows_total}


def content_digest(kind: str, content: bytes, metadata: dict[str, Any]) -> str:
    sha = hashlib.sha256(kind.encode() + b"\0")
    sha.update(hashlib.sha256(content).digest())
    sha.update(json.dumps(metadata, sort_keys=True, separators=(",", ":")).encode())
    return sha.hexdigest()


def _metadata_checker() -> Any:
    """check_metadata with the services' default bounds where the server extra is
    installed; None otherwise (then only the object type is checked)."""
    try:
        from contentembed.services.common.metadata import MetadataLimits, check_metadata
    except ImportError:  # pragma: no cover - the SDK without the server extra
        return None
    limits = MetadataLimits()

    def check(values: dict[str, Any]) -> str | None:
        try:
            check_metadata(values, limits, what="metadata")
        except Exception as error:  # noqa: BLE001 - InvalidArgument, with its message
            return getattr(error, "message", str(error))
        return None

    return check


def id_problem(item_id: Any) -> str | None:
    """The services' validate_ids rules: a non-empty string of at most 256 UTF-8 bytes."""
    if item_id is None:
        return "missing 'id'"
    if not isinstance(item_id, str):
        return f"'id' must be a string, got {type(item_id).__name__}"
    if not item_id:
        return "'id' is empty"
    if len(item_id.encode("utf-8")) > MAX_ID_BYTES:
        return f"id {shown(item_id)} is longer than {MAX_ID_BYTES} bytes"
    return None


class TypedRowReader:
    """Turns lines into rows or rejects, remembering ids seen (first wins)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.first_line_of: dict[str, int] = {}
        self.check_metadata = _metadata_checker()

    def read(self, line_number: int, line: str) -> CatalogRow | Reject:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            return Reject(line_number, None, f"not JSON ({error.msg})")
        except RecursionError:
            return Reject(line_number, None, "nested too deep to read (JSON objects or lists "
                          "inside each other thousands of levels deep)")
        if not isinstance(record, dict):
            return Reject(line_number, None, f"expected a JSON object, got {type(record).__name__}")
        raw_id = record.get("id")
        problem = id_problem(raw_id)
        shown_id = raw_id if isinstance(raw_id, str) and raw_id else None
        if problem:
            return Reject(line_number, shown_id, problem)
        item_id: str = raw_id
        if item_id in self.first_line_of:
            return Reject(
                line_number, item_id,
                f"duplicate id {shown(item_id)} (first at line {self.first_line_of[item_id]})",
            )
        text, image = record.get("text"), record.get("image")
        if text is None and image is None:
            return self._reject(line_number, item_id, "neither 'text' nor 'image'")
        if text is not None and image is not None:
            return self._reject(line_number, item_id, "both 'text' and 'image'; give one")
        metadata = record.get("metadata")
        if metadata is None:
            metadata = {}
        if not isinstance(metadata, dict):
            return self._reject(
                line_number, item_id, f"'metadata' must be an object, got {type(metadata).__name__}"
            )
        if metadata and self.check_metadata is not None:
            problem = self.check_metadata(metadata)
            if problem:
                return self._reject(line_number, item_id, problem)
        if text is not None:
            if not isinstance(text, str):
                return self._reject(line_number, item_id, "'text' must be a string")
            if not text.strip():
                return self._reject(line_number, item_id, "'text' is empty")
            size = len(text.encode("utf-8", errors="replace"))
            if size > MAX_ROW_BYTES:
                return self._reject(line_number, item_id, f"'text' is {size} bytes, more than a "
                                    f"request may carry ({MAX_ROW_BYTES})")
            digest = content_digest("text", text.encode("utf-8"), metadata)
            row = CatalogRow(line_number, item_id, text, None, metadata, digest)
        else:
            if not isinstance(image, str) or not image:
                return self._reject(line_number, item_id, "'image' must be a non-empty path")
            path = (self.base / image).resolve()
            try:
                size = path.stat().st_size
                if size > MAX_ROW_BYTES:
                    return self._reject(line_number, item_id, f"image file {shown(image)} is "
                                        f"{size} bytes, more than a request may carry "
                                        f"({MAX_ROW_BYTES})")
                data = path.read_bytes()
            except OSError as error:
                reason = "missing" if isinstance(error, FileNotFoundError) else "unreadable"
                return self._reject(
                    line_number, item_id,
                    f"image file {shown(image)} is {reason} ({error.strerror or error})",
                )
            digest = content_digest("image", data, metadata)
            row = CatalogRow(line_number, item_id, None, path, metadata, digest)
        self.first_line_of[item_id] = line_number
        return row

    def _reject(self, line_number: int, item_id: str, reason: str) -> Reject:
        # A row refused for its content still claims its id: a later row with that id
        # is a duplicate, not a replacement.
        self.first_line_of.setdefault(item_id, line_number)
        return Reject(line_number, item_id, reason)


def read_catalog_rows(
    path: Path, max_rejects: int | None = DEFAULT_MAX_REJECTS
) -> Catalog:
    """Every line of ``path``; raises TooManyRejects beyond ``max_rejects`` (None: no limit)."""
    if not path.is_file():
        raise CatalogError(f"{path} is not a file")
    reader = TypedRowReader(path.resolve().parent)
    catalog = Catalog(path, sha256_file(path), 0, [], [])
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            catalog.rows_total += 1
            result = reader.read(line_number, line)
            if isinstance(result, Reject):
                catalog.rejects.append(result)
                if max_rejects is not None and len(catalog.rejects) > max_rejects:
                    raise TooManyRejects(len(catalog.rejects), max_rejects, catalog.rejects)
            else:
                catalog.rows.append(result)
                catalog.first_line.setdefault(result.modality, line_number)
    return catalog


def check_single_modality(catalog: Catalog) -> None:
    """Fails for a catalog that mixes text and image rows (the caller checked that no
    joint space is available), naming the first line of the other modality."""
    if len(catalog.first_line) < 2:
        return
    (first, first_line), (other, other_line) = sorted(catalog.first_line.items(), key=lambda kv: kv[1])
    raise CatalogError(
        f"{catalog.path}:{other_line}: a {other} row in a catalog that starts with {first} rows "
        f"(line {first_line}); a catalog mixing text and image needs one joint space (a text "
        "and an image encoder of one space, e.g. CLIP) - give --space or split the catalog"
    )


def write_rejects(path: Path, rejects: Iterable[Reject]) -> int:
    ordered = sorted(rejects, key=lambda r: r.line)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(r.to_json() + "\n" for r in ordered), encoding="utf-8")
    return len(ordered)


def read_catalog(path: Path) -> Any:
    """The old reader's shape ({"id", "text", "metadata"} per row) for text catalogs,
    failing at the first bad line: kept for callers of cli.catalog."""
    try:
        catalog = read_catalog_rows(path, max_rejects=0)
    except TooManyRejects as error:
        first = error.rejects[0]
        raise CatalogError(f"{path}:{first.line}: {first.reason}") from None
    for row in catalog.rows:
        if row.text is None:
            raise CatalogError(f"{path}:{row.line}: an image row; use ingest")
        yield {"id": row.id, "text": row.text, "metadata": row.metadata}


def read_labelled_queries(path: Path = DEMO_QUERIES) -> list[LabelledQuery]:
    with path.open(encoding="utf-8") as handle:
        return [
            LabelledQuery(record["query"], record["expected_id"])
            for record in map(json.loads, filter(str.strip, handle))
        ]
