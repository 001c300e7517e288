"""Reading JSONL catalogs and the built-in demo data."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEMO_DIR = Path(__file__).resolve().parent.parent / "demo"
DEMO_CATALOG = DEMO_DIR / "catalog.jsonl"
DEMO_QUERIES = DEMO_DIR / "queries.jsonl"


class CatalogError(ValueError):
    pass


@dataclass(frozen=True)
class LabelledQuery:
    query: str
    expected_id: str


def read_catalog(path: Path) -> Iterator[dict[str, Any]]:
    """Yields {"id", "text", "metadata"} per non-blank line, or fails naming the line."""
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise CatalogError(f"{path}:{line_number}: not JSON ({error.msg})") from None
            if not isinstance(record, dict):
                raise CatalogError(f"{path}:{line_number}: expected a JSON object")
            if not isinstance(record.get("id"), str) or not record["id"]:
                raise CatalogError(f"{path}:{line_number}: missing string field 'id'")
            if not isinstance(record.get("text"), str) or not record["text"].strip():
                raise CatalogError(f"{path}:{line_number}: missing string field 'text'")
            metadata = record.get("metadata") or {}
            if not isinstance(metadata, dict):
                raise CatalogError(f"{path}:{line_number}: 'metadata' must be an object")
            yield {"id": record["id"], "text": record["text"], "metadata": metadata}


def read_labelled_queries(path: Path = DEMO_QUERIES) -> list[LabelledQuery]:
    with path.open(encoding="utf-8") as handle:
        return [
            LabelledQuery(record["query"], record["expected_id"])
            for record in map(json.loads, filter(str.strip, handle))
        ]
